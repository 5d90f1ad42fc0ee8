"""``python -m bench`` (``make bench``): the benchmark suite, host side.

Boots the lab guest (``lab/uml.py``) once per phase and runs the guest side
(``bench/guest.py``) in it, which writes the raw results to
``bench/results/results.json``. If the guest kernel dies during a phase
(docs/benchmarks.md, "TEQL over veth", explains how it could), the phase is
booted again and resumes where it stopped. Then, on the host, ``bench/report.py`` turns the
JSON into ``bench/results/loss.png`` and the tables of docs/benchmarks.md.

    python -m bench                 # a full run (about a quarter of an hour)
    python -m bench --phase loss    # one phase only (repeatable)
    python -m bench --resume        # continue the run in results.json
    python -m bench --report-only   # tables and plot from results.json

Every WB_BENCH_* variable of the environment is passed to the guest (trial
counts, sizes, contenders: see ``bench.guest.Settings`` and the docs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lab.uml import NO_RC, REPO, lab_available, run_in_guest

from .guest import PHASES

RESULTS = REPO / "bench" / "results" / "results.json"
MAX_BOOTS = 4  #: boots per phase (the first and up to three resumes)


def _progress(path: Path) -> tuple[int, str | None]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0, None
    progress = data.get("progress", {})
    return len(progress.get("done", [])), progress.get("in_progress")


def _record_crash(path: Path, unit: str | None, phase: str) -> None:
    data = json.loads(path.read_text())
    progress = data.setdefault("progress", {})
    if unit is not None:
        crashes = progress.setdefault("crashes", {})
        crashes[unit] = int(crashes.get(unit, 0)) + 1
        progress["in_progress"] = None
    data.setdefault("guest_crashes", []).append({"phase": phase, "unit": unit,
                                                  "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def run_phase(phase: str, out: Path, timeout: float) -> bool:
    env = {k: v for k, v in os.environ.items() if k.startswith("WB_BENCH_")}
    command = f"{sys.executable} -m bench.guest --out {out.relative_to(REPO)} --phase {phase}"
    for boot in range(1, MAX_BOOTS + 1):
        print(f"== bench: phase {phase}, boot {boot}", flush=True)
        rc = run_in_guest(command, cwd=str(REPO), env=env, timeout=timeout)
        if rc == 0:
            return True
        done, unit = _progress(out)
        if rc != NO_RC or not out.exists():
            print(f"bench: phase {phase} failed (exit status {rc})", file=sys.stderr)
            return False
        print(f"bench: the guest died during {unit or 'start-up'} ({done} units done); booting again",
              file=sys.stderr, flush=True)
        _record_crash(out, unit, phase)
    print(f"bench: phase {phase} gave up after {MAX_BOOTS} boots", file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", action="append", choices=PHASES, help="run only this phase (repeatable)")
    parser.add_argument("--resume", action="store_true", help="keep the results file and continue it")
    parser.add_argument("--report-only", action="store_true", help="only make the tables and the plot")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"raw results (default {RESULTS})")
    parser.add_argument("--timeout", type=float, default=2400.0, help="seconds per boot of the guest")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    ok = True
    if not args.report_only:
        reason = lab_available()
        if reason is not None:
            print(f"lab not available: {reason}", file=sys.stderr)
            return NO_RC
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and not args.resume:
            out.replace(out.with_suffix(".previous.json"))
        started = time.monotonic()
        for phase in args.phase or PHASES:
            ok = run_phase(phase, out, args.timeout) and ok
        print(f"== bench: {time.monotonic() - started:.0f} s in the guest", flush=True)
    from .report import report  # matplotlib: host only, imported late

    report(out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
