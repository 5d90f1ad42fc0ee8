"""The benchmark suite inside the lab guest: every contender in this one
guest, one after another, on the same emulated lines.

``python -m bench`` (host side) boots the guest once per *phase* and runs
``python -m bench.guest --out FILE --phase NAME`` in it. A phase is a list of
*units* (one contender at one size, one loss trial, ...); the raw result of
each unit is written to FILE as soon as it is measured, and a unit already in
FILE is not measured again. So if the guest kernel dies (see "TEQL over veth"
in docs/benchmarks.md), the host boots it again and the phase resumes where
it stopped; a unit that crashed the guest twice is recorded as failed.

Settings come from WB_BENCH_* environment variables (see ``Settings``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import contenders as contenders_mod
from . import cost, kmod, latency, loss
from .contenders import Contender
from .events import Observer
from .lines import Lines

MAX_CRASHES = 2  #: a unit that took the guest down this often is skipped


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


@dataclass(frozen=True)
class Settings:
    """Every knob, from WB_BENCH_* environment variables. The defaults make a
    full run of 15 to 20 minutes on a 2-core machine."""

    contenders: list[str]
    sizes: list[int]  #: latency: slaves per bundle
    latency_trials: int
    loss_trials: int
    scenarios: list[str]
    rate: float  #: datagrams per second of the loss stream
    idle_seconds: float
    cost_sizes: list[int]  #: idle and startup: slaves per bundle
    startup_runs: int
    storm_rates: list[float]  #: carrier changes per second asked of the generator
    storm_slaves: int
    storm_seconds: float
    seed: int

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        def get(key: str, default: str) -> str:
            return env.get(f"WB_BENCH_{key}", default)

        return cls(
            contenders=_names(get("CONTENDERS", ",".join(contenders_mod.DEFAULT))),
            sizes=_ints(get("SIZES", "2,16,64")),
            latency_trials=int(get("LATENCY_TRIALS", "10")),
            loss_trials=int(get("LOSS_TRIALS", "3")),
            scenarios=_names(get("SCENARIOS", ",".join(loss.DEFAULT_SCENARIOS))),
            rate=float(get("RATE", "1000")),
            idle_seconds=float(get("IDLE_SECONDS", "10")),
            cost_sizes=_ints(get("COST_SIZES", "2,64")),
            startup_runs=int(get("STARTUP_RUNS", "3")),
            storm_rates=_floats(get("STORM_RATES", "0,50,100,200,400")),
            storm_slaves=int(get("STORM_SLAVES", "64")),
            storm_seconds=float(get("STORM_SECONDS", "4")),
            seed=int(get("SEED", "20240606")),
        )


#: Phases, each run in its own boot of the guest.
PHASES = ("latency", "loss", "cost")


@dataclass(frozen=True)
class Unit:
    key: str  #: unique within a run, e.g. "loss/dead/wb-probes/2"
    observer: bool  #: needs the netlink observer
    run: Callable[[Observer | None], Any]
    store: Callable[[dict[str, Any], Any], None]


def _put(results: dict[str, Any], path: list[str], value: Any) -> None:
    node = results
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _store(path: list[str], results: dict[str, Any], value: Any) -> None:
    _put(results, path, value)


def _constant(value: Any, _obs: Observer | None) -> Any:
    return value


def _loss_trial(c: Contender, lines: Lines, scenario: loss.Scenario, rate: float, k: int,
                _obs: Observer | None) -> Any:
    return loss.trial(c, lines, scenario, rate, k)


def _idle(c: Contender, lines: Lines, n: int, seconds: float, _obs: Observer | None) -> Any:
    return cost.idle_one(c, lines, n, seconds)


def _startup(variant: str, lines: Lines, n: int, runs: int, _obs: Observer | None) -> Any:
    return cost.startup_one(variant, lines, n, runs)


def plan(phase: str, s: Settings, chosen: list[Contender], rng: random.Random) -> list[Unit]:
    lines = Lines()
    units: list[Unit] = []

    def add(path: list[str], fn: Callable[[Observer | None], Any], observer: bool = False) -> None:
        units.append(Unit("/".join(path), observer, fn, partial(_store, list(path))))

    def static(value: Any) -> Callable[[Observer | None], Any]:
        return partial(_constant, value)

    if phase == "latency":
        for c in chosen:
            reason = c.available()
            for n in s.sizes:
                path = ["latency", c.name, str(n)]
                if not c.reacts:
                    add(path, static({"na": "nothing takes a line out: TEQL only skips a slave without carrier"}))
                elif reason is not None:
                    add(path, static({"unavailable": reason}))
                else:
                    def measure(obs: Observer | None, c: Contender = c, n: int = n) -> Any:
                        assert obs is not None
                        return latency.one_size(obs, c, lines, n, s.latency_trials, rng)
                    add(path, measure, observer=True)
    elif phase == "loss":
        for name in s.scenarios:
            scenario = loss.SCENARIOS[name]
            for c in chosen:
                reason = c.available()
                for k in range(s.loss_trials):
                    path = ["loss", "by", name, c.name, str(k)]
                    if reason is not None:
                        add(path, static({"unavailable": reason}))
                    else:
                        add(path, partial(_loss_trial, c, lines, scenario, s.rate, k))
    elif phase == "cost":
        for c in chosen:
            reason = c.available()
            for n in s.cost_sizes:
                path = ["idle", c.name, str(n)]
                if reason is not None:
                    add(path, static({"unavailable": reason}))
                elif not c.userspace:
                    add(path, static({"kernel_only": True}))
                else:
                    add(path, partial(_idle, c, lines, n, s.idle_seconds))
        for variant in ("wb-carrier", "wb-probes"):
            if variant in s.contenders:
                for n in s.cost_sizes:
                    add(["startup", variant, str(n)], partial(_startup, variant, lines, n, s.startup_runs))
        if "wb-carrier" in s.contenders and s.storm_rates:
            def storm(obs: Observer | None) -> Any:
                assert obs is not None
                return cost.storm(obs, lines, s.storm_rates, s.storm_slaves, s.storm_seconds, rng)
            add(["storm"], storm, observer=True)
    else:
        raise SystemExit(f"unknown phase {phase!r}; known: {', '.join(PHASES)}")
    return units


def _version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "absent"
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def meta(settings: Settings) -> dict[str, Any]:
    from wanbalanced import __version__

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "guest_kernel": platform.release(),
        "guest_kernel_origin": os.environ.get("WB_LAB_KERNEL_ORIGIN", ""),
        "python": platform.python_version(),
        "wanbalanced": __version__,
        "commit": commit or "unknown",
        "ifplugd": _version(["ifplugd", "--version"]),
        "teamd": _version(["teamd", "--version"]),
        "settings": asdict(settings),
        "loss": {"rate_pps": settings.rate, "lines": 2, "faulted_line": loss.LINE,
                 "scenarios": {name: {"title": sc.title, "duration_s": sc.duration, "faults": sc.faults}
                               for name, sc in loss.SCENARIOS.items() if name in settings.scenarios}},
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def summarize(key: str, value: Any) -> str:
    if not isinstance(value, dict):
        return ""
    for k in ("na", "unavailable", "kernel_only", "error"):
        if k in value:
            return f"{k}: {value[k]}"
    if "out" in value and "back" in value:
        return (f"out p50 {value['out']['p50']:.1f} p90 {value['out']['p90']:.1f} ms, "
                f"back p50 {value['back']['p50']:.1f} p90 {value['back']['p90']:.1f} ms")
    if "lost" in value:
        return f"lost {value['lost']} of {value['sent']} (pacing late by up to {value['late_max_ms']:.0f} ms)"
    if "cpu_pct" in value:
        return f"CPU median {value['cpu_pct']['p50']:.2f}%, RSS {value['rss_kib']} KiB"
    if "cold" in value:
        return f"READY=1 after {value['cold']['p50']:.2f} s cold, {value['warm']['p50']:.2f} s warm (medians)"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guest")
    parser.add_argument("--out", required=True, help="the raw results (JSON), read and extended")
    parser.add_argument("--phase", required=True, choices=PHASES)
    args = parser.parse_args(argv)
    settings = Settings.from_env(dict(os.environ))
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if results and results.get("meta", {}).get("settings") != asdict(settings):
        raise SystemExit(f"{out} was made with other settings: remove it or run with the same WB_BENCH_*")
    chosen = contenders_mod.by_name(settings.contenders)
    results.setdefault("meta", meta(settings))
    progress = results.setdefault("progress", {"done": [], "crashes": {}, "failed": {}})

    def save() -> None:
        results["meta"]["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(out)  # atomic: a crash never leaves half a file

    modules = kmod.load_all()
    results["meta"]["modules"] = modules
    results["contenders"] = {c.name: {"label": c.label, "family": c.family, "reacts": c.reacts,
                                      "in_kernel": c.in_kernel, "detects_dead": c.detects_dead,
                                      "unavailable": c.available()}
                             for c in chosen}
    rng = random.Random(f"{settings.seed}/{args.phase}/{len(progress['done'])}")
    units = [u for u in plan(args.phase, settings, chosen, rng) if u.key not in progress["done"]]
    obs: Observer | None = None
    if any(u.observer for u in units):
        obs = Observer(team=modules.get("team") is None and modules.get("team_mode_roundrobin") is None)
    started = time.monotonic()
    try:
        for unit in units:
            crashes = int(progress["crashes"].get(unit.key, 0))
            if crashes >= MAX_CRASHES:
                value: Any = {"error": f"the guest kernel crashed {crashes} times during this unit"}
            else:
                progress["in_progress"] = unit.key
                save()
                began = time.monotonic()
                try:
                    value = unit.run(obs)
                except Exception as e:  # noqa: BLE001 - recorded, the suite goes on
                    value = {"error": f"{type(e).__name__}: {e}"}
                progress.setdefault("seconds", {})[unit.key] = round(time.monotonic() - began, 2)
            if isinstance(value, dict) and "error" in value:
                progress["failed"][unit.key] = value["error"]
            unit.store(results, value)
            progress["done"].append(unit.key)
            progress["in_progress"] = None
            save()
            log(f"{unit.key}: {summarize(unit.key, value)}")
    finally:
        if obs is not None:
            results.setdefault("observer_overruns", 0)
            results["observer_overruns"] += obs.overruns
            obs.close()
        phase_times = results["meta"].setdefault("phase_seconds", {})
        phase_times[args.phase] = phase_times.get(args.phase, 0.0) + time.monotonic() - started
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
