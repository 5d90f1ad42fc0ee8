"""Host side: boot the Debian root with real systemd in User-Mode Linux and run
one job in it.

The guest is a private root made from the cached one (``rootfs.new_run_root``:
an overlay mount, or a copy) booted as::

    linux.uml mem=1G root=/dev/root rootfstype=hostfs rootflags=<root> rw quiet
              init=/lib/systemd/systemd con=null con0=fd:0,fd:1

Before the boot, that root gets:

* ``/etc/fstab`` lines mounting host directories with hostfs
  (``none /mnt/x hostfs ro,/host/dir 0 0``): the results directory (read-write,
  at ``/mnt/wb-results``) and whatever ``mounts`` asks for (the checkout, a
  wheelhouse).  The guest has no network device at all; this is how it reaches
  the host's files.
* ``wb-lab-driver.service``, wanted by multi-user.target: ``Type=simple``,
  ordered after multi-user.target, powering the guest off when it ends.  It
  runs ``lab/systemd/driver.py`` with the guest's Debian Python, which waits
  for the boot to finish, runs the job and writes its output and exit status
  to the results directory.
* getty.target masked (nobody logs in on the console), and the units in
  ``disable`` not started at boot.

What the job prints is streamed to our stdout as it comes (the driver prefixes
its lines; everything else on the console, kernel and systemd messages, goes
only to ``<results>/console.log``).  A host timeout kills the UML process
group.  Only the standard library is used here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.systemd import driver
from lab.systemd.rootfs import new_run_root, remove_run_root
from lab import kernel as lab_kernel
from lab.uml import NO_RC, follow, kill_tree

__all__ = ["GuestRun", "Mount", "run_job"]

GUEST_RESULTS = str(driver.RESULTS)
DRIVER_UNIT = "wb-lab-driver.service"
DRIVER_PATH = "/usr/local/lib/wanbalanced-lab/driver.py"

_UNIT = f"""\
# Written by lab/systemd/boot.py for one boot of the lab guest.
[Unit]
Description=wanbalanced lab: job driver
After=multi-user.target
RequiresMountsFor={GUEST_RESULTS}
SuccessAction=poweroff
FailureAction=poweroff

[Service]
# Not oneshot: a oneshot start job ordered after multi-user.target would keep
# `systemctl is-system-running --wait` waiting for itself.
Type=simple
ExecStart=/usr/bin/python3 {DRIVER_PATH}
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Mount:
    """A host directory mounted into the guest with hostfs."""

    host: Path
    guest: str
    writable: bool = False


@dataclass
class GuestRun:
    """What one boot produced."""

    rc: int  #: the job's exit status; NO_RC (125) if the guest reported none
    timed_out: bool
    results: Path  #: the host's results directory
    seconds: float  #: from starting linux.uml to its exit (host clock)
    prepare_seconds: float  #: making the private root (overlay or copy)
    driver_seconds: float | None  #: from starting linux.uml to the driver's start
    boot: dict[str, Any] = field(default_factory=dict)  #: the driver's boot.json
    run_root: Path | None = None  #: the guest's root, if kept (keep_root)

    @property
    def console_log(self) -> Path:
        return self.results / "console.log"

    @property
    def output(self) -> str:
        try:
            return (self.results / "output.log").read_text(errors="replace")
        except OSError:
            return ""


def _fstab_path(path: str, what: str) -> str:
    if any(c.isspace() or c in ",\\#" for c in path):
        raise ValueError(f"{what} {path!r}: no whitespace, ',', '\\' or '#' allowed")
    if not path.startswith("/"):
        raise ValueError(f"{what} {path!r} must be absolute")
    return path


def _inside(root: Path, guest_path: str) -> Path:
    return root / guest_path.lstrip("/")


def _prepare(
    run_root: Path,
    *,
    results: Path,
    mounts: Sequence[Mount],
    disable: Sequence[str],
    hostname: str,
) -> None:
    etc = run_root / "etc"
    fstab = [
        "# Written by lab/systemd/boot.py: host directories (hostfs).",
        f"none {GUEST_RESULTS} hostfs rw,{_fstab_path(str(results), 'results')} 0 0",
    ]
    for m in mounts:
        host = _fstab_path(os.path.realpath(m.host), "mount")
        guest = _fstab_path(m.guest, "guest mount point")
        fstab.append(f"none {guest} hostfs {'rw' if m.writable else 'ro'},{host} 0 0")
    for line in fstab[1:]:
        _inside(run_root, line.split()[1]).mkdir(parents=True, exist_ok=True)
    (etc / "fstab").write_text("\n".join(fstab) + "\n")
    (etc / "hostname").write_text(hostname + "\n")

    system = etc / "systemd" / "system"
    getty = system / "getty.target"
    getty.unlink(missing_ok=True)
    getty.symlink_to("/dev/null")
    for unit in disable:
        for wants in system.glob("*.wants"):
            (wants / unit).unlink(missing_ok=True)

    target = _inside(run_root, DRIVER_PATH)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(driver.__file__, target)
    (system / DRIVER_UNIT).write_text(_UNIT)
    wants = system / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    (wants / DRIVER_UNIT).symlink_to(f"/etc/systemd/system/{DRIVER_UNIT}")


def run_job(
    root: Path,
    command: str,
    *,
    results: Path,
    mounts: Sequence[Mount] = (),
    cwd: str = "/",
    env: Mapping[str, str] | None = None,
    mem: str = "1G",
    timeout: float = 300.0,
    disable: Sequence[str] = (),
    hostname: str = "router",
    stream: bool = True,
    echo: Callable[[str], None] | None = None,
    keep_root: bool = False,
) -> GuestRun:
    """Boot a private root made from ``root`` with systemd and run ``command`` (a
    shell command line, in ``cwd``, with ``env``) from the driver unit.

    ``results`` (created if needed) receives ``job.json``, ``console.log``,
    ``boot.json``, ``output.log``, ``rc`` and ``journal.txt``, plus what the
    job writes to ``$WB_RESULTS``.  The job's lines are passed to ``echo``
    (default: print) as they come if ``stream``.
    """
    try:
        chosen = lab_kernel.select().kernel
    except lab_kernel.NoKernel as exc:
        raise RuntimeError(str(exc)) from exc
    say = echo or (lambda line: print(line, flush=True))
    results.mkdir(parents=True, exist_ok=True)
    for name in ("rc", "boot.json", "output.log", "journal.txt", "console.log"):
        (results / name).unlink(missing_ok=True)
    (results / "job.json").write_text(
        json.dumps({"command": command, "cwd": cwd, "env": dict(env or {})}, indent=2) + "\n"
    )

    prepare_start = time.monotonic()
    run_root = new_run_root(root)
    prepare_seconds = time.monotonic() - prepare_start
    try:
        _prepare(run_root, results=results, mounts=mounts, disable=disable, hostname=hostname)
        argv = chosen.argv(mem=mem, init="/lib/systemd/systemd", root=_fstab_path(str(run_root), "root"))
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(results),
            start_new_session=True,
            preexec_fn=lab_kernel.on_guest_cpu(),
        )
        timed_out = False
        driver_seconds: float | None = None
        try:
            with open(results / "console.log", "w", encoding="utf-8") as console:
                def show(line: str) -> None:
                    nonlocal driver_seconds
                    console.write(line + "\n")
                    console.flush()
                    if line == driver.BEGIN and driver_seconds is None:
                        driver_seconds = time.monotonic() - start
                    elif stream and line.startswith(driver.PREFIX):
                        say(line[len(driver.PREFIX):])

                timed_out = follow(proc, timeout, show)
            if timed_out:
                say(f"lab-systemd: guest timed out after {timeout:g}s, killed")
            else:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            kill_tree(proc)
        seconds = time.monotonic() - start
    finally:
        if not keep_root:
            remove_run_root(run_root)
    try:
        rc = int((results / "rc").read_text().strip())
    except (OSError, ValueError):
        rc = NO_RC
    try:
        boot: dict[str, Any] = json.loads((results / "boot.json").read_text())
    except (OSError, ValueError):
        boot = {}
    return GuestRun(
        rc=rc,
        timed_out=timed_out,
        results=results,
        seconds=seconds,
        prepare_seconds=prepare_seconds,
        driver_seconds=driver_seconds,
        boot=boot,
        run_root=run_root if keep_root else None,
    )


def console_tail(run: GuestRun, n: int = 40) -> str:
    try:
        lines = run.console_log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no console log)"
    return "\n".join(lines[-n:])


if __name__ == "__main__":  # pragma: no cover - use python -m lab.systemd
    sys.exit("use: python -m lab.systemd")
