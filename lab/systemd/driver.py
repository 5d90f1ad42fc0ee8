"""Guest side: the job driver of the systemd guest (see ``lab/systemd/boot.py``).

Copied into the guest root as ``/usr/local/lib/wanbalanced-lab/driver.py`` and
run by ``wb-lab-driver.service`` (``Type=simple``, ordered after
multi-user.target, ``SuccessAction=``/``FailureAction=poweroff``) with the
guest's own Debian Python.  It:

1. waits for the boot to finish (``systemctl is-system-running --wait``; that
   is why the unit must not be ``Type=oneshot``: its start job would keep the
   system "starting" forever), and records the boot in ``boot.json``;
2. runs the job (``job.json``: a shell command, its directory and
   environment), copying its output to the console with a prefix that the host
   streams, and to ``output.log``;
3. writes the job's exit status to ``rc``, the journal of the boot to
   ``journal.txt``, and exits; systemd then powers the guest off.

Everything is in the results directory, a hostfs mount of a host directory.
Only the standard library is used: this runs before anything is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path("/mnt/wb-results")
#: Lines the host streams start with this (the console also carries systemd's
#: and the kernel's messages).
PREFIX = "@@wb| "
BEGIN = "@@wb-driver: begin"
END = "@@wb-driver: end"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def capture(*argv: str, timeout: float = 60.0) -> str:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<{' '.join(argv)}: {exc}>"
    return (proc.stdout + proc.stderr).strip()


def record_boot() -> None:
    started = time.monotonic()
    state = capture("systemctl", "is-system-running", "--wait", timeout=180)
    analyze = capture("systemd-analyze", "time")
    failed = capture(
        "systemctl", "list-units", "--failed", "--plain", "--no-legend", "--no-pager"
    ).splitlines()
    boot = {
        "system_state": state,
        "waited_s": round(time.monotonic() - started, 3),
        "uptime_s": float(Path("/proc/uptime").read_text().split()[0]),
        "analyze_time": analyze,
        "failed_units": failed,
    }
    (RESULTS / "boot.json").write_text(json.dumps(boot, indent=2) + "\n")
    say(f"{PREFIX}guest: system {state}; {(analyze.splitlines() or [''])[0]}")
    for unit in failed:
        say(f"{PREFIX}guest: failed unit: {unit}")


def run_job() -> int:
    job = json.loads((RESULTS / "job.json").read_text())
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "WB_RESULTS": str(RESULTS),
        **{str(k): str(v) for k, v in job.get("env", {}).items()},
    }
    with open(RESULTS / "output.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            ["sh", "-c", str(job["command"])],
            cwd=str(job.get("cwd") or "/"),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            log.write(line + "\n")
            log.flush()
            say(PREFIX + line)
        return proc.wait()


def main() -> int:
    say(BEGIN)
    rc = 125
    try:
        record_boot()
        rc = run_job()
    except Exception as exc:  # noqa: BLE001 - reported, then we power off
        say(f"{PREFIX}driver: {type(exc).__name__}: {exc}")
    finally:
        (RESULTS / "rc").write_text(f"{rc}\n")
        journal = capture("journalctl", "-b", "--no-pager", "-o", "short-monotonic")
        (RESULTS / "journal.txt").write_text(journal + "\n")
        os.sync()
        say(f"{END} rc={rc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
