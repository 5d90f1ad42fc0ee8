"""From the raw results to docs/benchmarks.md and the plot (host side).

``report(path)`` reads the JSON that ``bench/guest.py`` wrote, renders the
tables into the blocks of docs/benchmarks.md that are delimited by
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` (the prose around them is
written by hand and left alone) and draws ``bench/results/loss.png``.
matplotlib is only needed here, on the host (the ``bench`` extra).

    python -m bench.report [RESULTS.json]
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .stats import summary

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
PNG = REPO / "bench" / "results" / "loss.png"
RESULTS = REPO / "bench" / "results" / "results.json"
SKIPS = ("na", "unavailable", "kernel_only", "error")

J = dict[str, Any]


def _num(x: float, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 100:
        text = f"{x:.0f}"
    elif abs(x) >= 10:
        text = f"{x:.1f}"
    else:
        text = f"{x:.2f}" if abs(x) < 1 else f"{x:.1f}"
    return text + unit


def _skip(value: Any) -> str | None:
    """The reason a cell has no numbers, or None."""
    if not isinstance(value, dict):
        return "not run"
    for key in SKIPS:
        if key in value:
            reason = value[key]
            if key == "na":
                return "n/a"
            if key == "kernel_only":
                return "kernel only"
            return f"{key}: {reason}"
    return None


def _ours(name: str) -> bool:
    return name.startswith("wb-")


def _labels(data: J) -> dict[str, str]:
    return {name: str(c.get("label", name)) for name, c in data.get("contenders", {}).items()}


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# -- blocks --------------------------------------------------------------------------


def meta_block(data: J) -> str:
    m = data.get("meta", {})
    s = m.get("settings", {})
    crashes = data.get("guest_crashes", [])
    failed = data.get("progress", {}).get("failed", {})
    lines = [
        f"Run of {m.get('started', '?')} (last result {m.get('updated', '?')}), commit `{m.get('commit', '?')}`, "
        f"wanbalanced {m.get('wanbalanced', '?')}, guest kernel {m.get('guest_kernel', '?')} (UML, one CPU"
        + (f"; {m['guest_kernel_origin']}" if m.get("guest_kernel_origin") else "") + "), "
        f"Python {m.get('python', '?')}, {m.get('ifplugd', '?')}, {m.get('teamd', '?')}.",
        "",
        f"Settings: {s.get('latency_trials')} latency trials per size at {s.get('sizes')} slaves; "
        f"{s.get('loss_trials')} loss trials per scenario at {s.get('rate'):g} datagrams/s; idle CPU over "
        f"{s.get('idle_seconds'):g} s; {s.get('startup_runs')} start-ups; storm of "
        f"{s.get('storm_rates')} carrier changes/s on {s.get('storm_slaves')} slaves. "
        f"Time in the guest per phase (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in m.get("phase_seconds", {}).items()) + ".",
    ]
    if crashes:
        lines += ["", f"The guest kernel died {len(crashes)} time(s) and the run resumed: "
                  + "; ".join(f"during `{c.get('unit')}`" for c in crashes) + " (see *TEQL over veth* below)."]
    if failed:
        lines += ["", "Units without a result: " + "; ".join(f"`{k}`: {v}" for k, v in failed.items()) + "."]
    return "\n".join(lines)


def _size_table(results: J, labels: dict[str, str], text: Callable[[J], str]) -> str:
    """A table of `results` (contender -> slaves -> result): one row per
    contender, one column per size, each cell `text(result)` or why there is
    no result."""
    sizes = sorted({int(n) for per in results.values() for n in per})
    rows: list[list[str]] = []
    for name, per in results.items():
        row = [f"`{name}` {labels.get(name, '')}"]
        for n in sizes:
            cell = per.get(str(n))
            reason = _skip(cell)
            if reason is None:
                assert isinstance(cell, dict)
            row.append(reason if reason is not None else text(cell))
        rows.append(row)
    return _table(["contender"] + [f"{n} slaves" for n in sizes], rows)


def _latency_cell(cell: J, direction: str) -> str:
    st = cell[direction]
    if st["n"] and st["max"] <= 0:
        # Read with (or before) the carrier event itself: the change is made
        # in the kernel's own notifier.
        text = "0: with the carrier event"
    else:
        text = f"{_num(st['p50'])} / {_num(st['p90'])} / {_num(st['p99'])}"
    missed = cell.get(f"missed_{direction}", 0)
    if missed:
        text += f" ({missed} of {cell['trials']} missed)"
    return text


def latency_block(data: J) -> str:
    lat = data.get("latency", {})
    if not lat:
        return "_No latency results in this run._"
    labels = _labels(data)
    return "\n\n".join(
        f"**{title}**, p50 / p90 / p99:\n\n"
        + _size_table(lat, labels, functools.partial(_latency_cell, direction=direction))
        for direction, title in (("out", "Carrier lost → line taken out (ms)"),
                                 ("back", "Carrier back → line put back (ms)")))


def _scenarios(data: J) -> list[str]:
    """The scenarios measured, in the order the suite defines them."""
    by = data.get("loss", {}).get("by", {})
    order = list(data.get("meta", {}).get("loss", {}).get("scenarios", {}))
    return [s for s in order if s in by] + [s for s in by if s not in order]


def loss_values(data: J) -> dict[str, dict[str, list[float]]]:
    """scenario -> contender -> lost packets per trial."""
    out: dict[str, dict[str, list[float]]] = {}
    by = data.get("loss", {}).get("by", {})
    for scenario in _scenarios(data):
        per = by[scenario]
        for name, trials in per.items():
            values = [float(t["lost"]) for t in trials.values() if isinstance(t, dict) and "lost" in t]
            out.setdefault(scenario, {})[name] = values
    return out


def loss_block(data: J) -> str:
    by = data.get("loss", {}).get("by", {})
    if not by:
        return "_No loss results in this run._"
    meta = data.get("meta", {}).get("loss", {})
    rate = float(meta.get("rate_pps", 1000))
    labels = _labels(data)
    values = loss_values(data)
    scenarios = _scenarios(data)
    names = list(data.get("contenders", {}))
    rows: list[list[str]] = []
    for name in names:
        row = [f"`{name}` {labels.get(name, '')}"]
        for scenario in scenarios:
            trials = by[scenario].get(name, {})
            vals = values.get(scenario, {}).get(name, [])
            if not vals:
                first = next(iter(trials.values()), None) if isinstance(trials, dict) else None
                row.append(_skip(first) or "not run")
                continue
            st = summary(vals)
            # Half the stream goes over the failing line: lost / (rate/2) is
            # how long that line swallowed traffic.
            blackhole_ms = st["p50"] / (rate / 2) * 1e3
            row.append(f"**{st['p50']:.0f}** [{st['min']:.0f}–{st['max']:.0f}] ≈ {blackhole_ms:.0f} ms")
        rows.append(row)
    head = ["contender"] + [f"{s}: {meta.get('scenarios', {}).get(s, {}).get('title', '')}" for s in scenarios]
    return ("Lost datagrams: **median** [min–max] over the trials, and the time the failing line swallowed "
            f"its half of the stream (median ÷ {rate / 2:g}/s).\n\n" + _table(head, rows))


def _idle_cell(cell: J) -> str:
    cpu = cell["cpu_pct"]
    return (f"{_num(cpu['p50'])} % [{_num(cpu['min'])}–{_num(cpu['max'])}], "
            f"{cell['rss_kib'] / 1024:.1f} MiB in {cell['processes']} process(es)")


def _span(cell: J) -> str:
    return f"{_num(cell['p50'])} s [{_num(cell['min'])}–{_num(cell['max'])}]"


def cost_block(data: J) -> str:
    parts: list[str] = []
    labels = _labels(data)
    idle = data.get("idle", {})
    if idle:
        parts.append("**Idle** (lines up, nothing happening): the share of the guest's one CPU the contender "
                     "takes (median [min–max] over pairs of 1 s windows, contender stopped / running, measured "
                     "with a lowest-priority spinner), and its resident memory:\n\n"
                     + _size_table(idle, labels, _idle_cell))
    startup = data.get("startup", {})
    if startup:
        rows, cli_rows = [], []
        for name, per in startup.items():
            for n, cell in sorted(per.items(), key=lambda kv: int(kv[0])):
                reason = _skip(cell)
                if reason is not None:
                    rows.append([f"`{name}`", n, reason, "", "", ""])
                    continue
                rows.append([f"`{name}`", n, *(_span(cell[k]) if k in cell else "–"
                                                for k in ("cold", "warm", "warm_operated", "bare_loop"))])
                for command, times in cell.get("cli", {}).items():
                    cli_rows.append([f"`{name}`", n, f"`{command}`", _span(times)])
        parts.append("**Start-up**, launch to `READY=1`, median [min–max]; *cold*: nothing set up, the daemon "
                     "attaches every slave first; *warm*: a restart on a converged kernel; *operated*: warm, "
                     "with the metrics endpoint and the control socket on, as installed; *bare loop*: the "
                     "reference of the same run, the bare asyncio + pyroute2 loop from launch to subscribed:\n\n"
                     + _table(["daemon", "slaves", "cold", "warm", "warm, operated", "bare loop"], rows))
        if cli_rows:
            parts.append("**Commands** beside the running daemon, wall time, median [min–max]; `python` is a bare "
                         "`python -c pass`, the reference measured in the same run:\n\n"
                         + _table(["daemon", "slaves", "command", "seconds"], cli_rows))
    storm = data.get("storm")
    if isinstance(storm, dict) and "steps" in storm:
        rows = []
        for step in storm["steps"]:
            rows.append([f"{step['rate']:g}", f"{step['achieved']:.0f}",
                         f"{_num(step['out']['p50'])} / {_num(step['out']['p90'])} / {_num(step['out']['max'])}",
                         f"{_num(step['back']['p50'])} / {_num(step['back']['p90'])}",
                         f"{step['daemon_cpu_pct']:.0f} %", str(step["missed"]),
                         "–" if step["settle_s"] is None else f"{step['settle_s']:.2f} s"])
        knee = storm_knee(storm)
        parts.append(
            f"**Event storm** on {storm['slaves']} slaves (wanbalanced, carrier only, damping off so that every "
            "change is a kernel write): lines 2 and up flap at the given rate while lines 0 and 1 are cut and "
            "restored; reaction of lines 0 and 1 in ms, p50 / p90 / max:\n\n"
            + _table(["asked (changes/s)", "achieved", "taken out", "put back", "daemon CPU (ticks)", "missed",
                      "all attached again after"], rows)
            + "\n\n" + knee)
    elif isinstance(storm, dict):
        parts.append(f"**Event storm**: {_skip(storm)}")
    return "\n\n".join(parts) if parts else "_No cost results in this run._"


def storm_knee(storm: J) -> str:
    steps = [s for s in storm.get("steps", []) if s["out"]["n"]]
    if not steps:
        return ""
    base = steps[0]
    limit = max(2 * base["out"]["p50"], base["out"]["p50"] + 5.0)
    ok = [s for s in steps if s["out"]["p50"] <= limit and s["missed"] == 0]
    bad = [s for s in steps if s not in ok]
    best = max((s["achieved"] for s in ok), default=0.0)
    text = (f"Quiet median: {_num(base['out']['p50'])} ms. The median stays within {_num(limit)} ms "
            f"(twice the quiet one, or +5 ms) up to **{best:.0f} carrier changes/s** measured")
    if bad:
        worst = min(bad, key=lambda s: s["achieved"])
        text += (f"; at {worst['achieved']:.0f}/s it is {_num(worst['out']['p50'])} ms"
                 + (f" with {worst['missed']} reactions missed" if worst["missed"] else "") + ".")
    else:
        text += ", the fastest the generator reached in this guest: the daemon was not the limit."
    resyncs = storm.get("resyncs")
    if resyncs:
        text += f" The daemon lost netlink events and resynchronised {resyncs} time(s)."
    return text


def findings_block(data: J) -> str:
    """Where each wanbalanced variant is beaten, computed from this run."""
    out: list[str] = []
    values = loss_values(data)
    for scenario, per in values.items():
        medians = {name: summary(v)["p50"] for name, v in per.items() if v}
        for ours in sorted(n for n in medians if _ours(n)):
            # A difference within the noise (2 datagrams or 5 %) is no loss.
            margin = max(2.0, 0.05 * medians[ours])
            better = sorted((n for n in medians if not _ours(n) and medians[n] < medians[ours] - margin),
                            key=lambda n: medians[n])
            if better:
                out.append(f"- loss, `{scenario}`: `{ours}` loses {medians[ours]:.0f} (median), fewer: "
                           + ", ".join(f"`{n}` {medians[n]:.0f}" for n in better) + ".")
    lat = data.get("latency", {})
    kernel = {k for k, c in data.get("contenders", {}).items() if c.get("in_kernel")}
    sizes = sorted({int(k) for per in lat.values() for k in per})
    for direction in ("out", "back"):
        p50: dict[str, dict[int, float]] = {}
        for name, per in lat.items():
            for n in sizes:
                cell = per.get(str(n))
                if isinstance(cell, dict) and _skip(cell) is None and cell[direction]["n"]:
                    p50.setdefault(name, {})[n] = cell[direction]["p50"]
        for ours in sorted(k for k in p50 if _ours(k)):
            faster: dict[str, list[int]] = {}
            for other in p50:
                if _ours(other):
                    continue
                for n, value in p50[other].items():
                    # Faster by more than 1 ms and 10 %: not within the noise.
                    if n in p50[ours] and value < p50[ours][n] - max(1.0, 0.1 * p50[ours][n]):
                        faster.setdefault(other, []).append(n)
            if faster:
                mine = ", ".join(f"{_num(p50[ours][n])} ms" for n in sizes if n in p50[ours])
                out.append(f"- reaction `{direction}`, `{ours}` ({mine} at {sizes} slaves, p50) is slower than "
                           + ", ".join(f"`{k}`" + (" (in the kernel)" if k in kernel else "")
                                       + (f" at {v} slaves" if len(v) < len(sizes) else "")
                                       for k, v in sorted(faster.items())) + ".")
    idle = data.get("idle", {})
    for size in sorted({k for per in idle.values() for k in per}, key=int):
        cpu = {name: per[size]["cpu_pct"]["p50"] for name, per in idle.items()
               if isinstance(per.get(size), dict) and "cpu_pct" in per[size]}
        our_cpu = {k: v for k, v in cpu.items() if _ours(k)}
        theirs = {k: v for k, v in cpu.items() if not _ours(k)}
        if our_cpu and theirs and max(our_cpu.values()) > max(theirs.values()):
            top = max(theirs.values())
            out.append(f"- idle CPU at {size} slaves: " + ", ".join(f"`{k}` {_num(v)} %" for k, v in our_cpu.items())
                       + "; the most of the others: " + ", ".join(f"`{k}` {_num(v)} %" for k, v in theirs.items()
                                                                  if v == top) + ".")
    rss = {name: cell["rss_kib"] / max(cell["processes"], 1)
           for name, per in idle.items() for n, cell in per.items()
           if n == "2" and isinstance(cell, dict) and "rss_kib" in cell}
    if rss and any(_ours(k) for k in rss):
        ours_rss = max(v for k, v in rss.items() if _ours(k))
        out.append(f"- memory: one wanbalanced process holds about {ours_rss / 1024:.0f} MiB; one process of "
                   + ", ".join(f"`{k}` {v / 1024:.1f} MiB" for k, v in rss.items() if not _ours(k)) + ".")
    storm = data.get("storm")
    if isinstance(storm, dict) and "steps" in storm:
        out.append("- event storm: " + storm_knee(storm))
    return "\n".join(out) if out else "_Nothing where wanbalanced is beaten in this run._"


# -- the plot -------------------------------------------------------------------------


def plot_loss(data: J, path: Path) -> bool:
    values = loss_values(data)
    if not values:
        return False
    # Imported by name: the guest and `make typecheck` need not have it.
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    rate = float(data.get("meta", {}).get("loss", {}).get("rate_pps", 1000))
    names = [n for n in data.get("contenders", {}) if any(values[s].get(n) for s in values)]
    scenarios = list(values)
    fig, axes = plt.subplots(1, len(scenarios), figsize=(3.2 * len(scenarios) + 2.2, 0.42 * len(names) + 1.6),
                             sharey=True, squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        for y, name in enumerate(names):
            vals = values[scenario].get(name, [])
            color = "tab:blue" if _ours(name) else "tab:gray"
            if not vals:
                ax.text(0, y, " not run", va="center", fontsize=7, color="tab:red")
                continue
            st = summary(vals)
            ax.barh(y, st["p50"], color=color, alpha=0.75, height=0.6)
            ax.errorbar(st["p50"], y, xerr=[[st["p50"] - st["min"]], [st["max"] - st["p50"]]], fmt="none",
                        ecolor="black", capsize=3, linewidth=1)
            ax.plot(vals, [y] * len(vals), "k.", markersize=3)
            ax.annotate(f"{st['p50']:.0f}", (st["max"], y), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=7)
        ax.set_title(scenario, fontsize=10)
        ax.set_xlabel("lost datagrams")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(left=0)
    axes[0][0].set_yticks(range(len(names)))
    axes[0][0].set_yticklabels(names)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"Datagrams lost through a 2-line bundle at {rate:g}/s: median bar, min–max, each trial a dot",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- the document ---------------------------------------------------------------------


def update_doc(doc: Path, blocks: dict[str, str]) -> None:
    text = doc.read_text()
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- bench:{name} -->\n)(.*?\n)?(<!-- /bench:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"{doc}: no <!-- bench:{name} --> ... <!-- /bench:{name} --> block")
        text = pattern.sub(lambda m: m.group(1) + body.strip() + "\n" + m.group(3), text)
    doc.write_text(text)


def report(results: Path = RESULTS, doc: Path = DOC, png: Path = PNG) -> None:
    data: J = json.loads(results.read_text())
    blocks = {"meta": meta_block(data), "latency": latency_block(data), "loss": loss_block(data),
              "cost": cost_block(data), "findings": findings_block(data)}
    try:
        if plot_loss(data, png):
            print(f"bench: plot in {png}")
    except ModuleNotFoundError as e:
        print(f"bench: no plot ({e}): install the bench extra, .venv/bin/pip install -e '.[bench]'")
    update_doc(doc, blocks)
    print(f"bench: tables in {doc} (from {results})")


if __name__ == "__main__":
    report(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)
