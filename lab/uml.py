"""Host side of the lab: run a shell command inside a User-Mode Linux guest.

The guest is Debian's ``user-mode-linux`` kernel (``/usr/bin/linux.uml``),
booted with the host's own filesystem as its root (hostfs) and
``lab/init.sh`` as PID 1.  Unlike the host kernel, it can load ``sch_teql``,
``veth`` and ``sch_netem`` from ``/usr/lib/uml/modules/<version>/kernel``.

Inside the guest ``/tmp``, ``/run`` and ``/dev/shm`` are fresh tmpfs mounts;
everything else is the host's filesystem, shared read-write.  The checkout
itself stays visible wherever it is (init.sh binds it back over the tmpfs),
so the working directory must be inside the repo or outside those mounts
(the job directory is ``<repo>/.lab/job-*``).

Usage from the shell::

    python -m lab.uml [--max-equalizers N] [--timeout S] [--mem M] \\
        [--cwd DIR] [--env KEY=VALUE]... -- COMMAND...

exits with the job's exit code (125 if the guest did not report one).

Only the standard library is used here, so this module runs with any Python.
"""

from __future__ import annotations

import argparse
import glob
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import IO

__all__ = [
    "NO_RC",
    "REPO",
    "lab_available",
    "main",
    "modules_dir",
    "run_in_guest",
    "uml_binary",
]

REPO = Path(__file__).resolve().parent.parent
INIT = REPO / "lab" / "init.sh"
JOBS_DIR = REPO / ".lab"

#: Exit code reported when the guest produced no rc (crash, timeout, ...).
NO_RC = 125

UML_CANDIDATES = ("linux.uml", "/usr/bin/linux.uml")
MODULES_GLOB = "/usr/lib/uml/modules/*/"
REQUIRED_MODULES = (
    "kernel/net/sched/sch_teql.ko",
    "kernel/drivers/net/veth.ko",
    "kernel/net/sched/sch_netem.ko",
)
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"

# Printed by the job script around the user's command; console lines outside
# them (UML's own start-up chatter, kernel messages) are not streamed.
BEGIN_MARK = "@@wanbalanced-lab: job begin@@"
END_MARK = "@@wanbalanced-lab: job end@@"

# Directories that are tmpfs (or virtual) inside the guest: not shared.
_GUEST_PRIVATE = ("/tmp", "/run", "/proc", "/sys", "/dev")


def uml_binary() -> str | None:
    """Path of the UML kernel binary, or None."""
    for cand in UML_CANDIDATES:
        found = shutil.which(cand)
        if found:
            return found
    return None


def _uml_version(binary: str) -> str | None:
    try:
        out = subprocess.run(
            [binary, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.stdout.split()
    return words[0] if out.returncode == 0 and words else None


def modules_dir() -> Path | None:
    """The UML kernel's modules directory (``.../modules/<version>``).

    Found by globbing ``/usr/lib/uml/modules/*/``; if there are several, the
    one matching ``linux.uml --version`` wins.
    """
    dirs = sorted(Path(d) for d in glob.glob(MODULES_GLOB))
    dirs = [d for d in dirs if (d / REQUIRED_MODULES[0]).is_file()]
    if not dirs:
        return None
    if len(dirs) > 1:
        binary = uml_binary()
        version = _uml_version(binary) if binary else None
        for d in dirs:
            if d.name == version:
                return d
    return dirs[-1]


def lab_available() -> str | None:
    """None if the lab can run here, else a human-readable reason why not."""
    binary = uml_binary()
    if binary is None:
        return "linux.uml not found (install Debian package user-mode-linux)"
    mdir = modules_dir()
    if mdir is None:
        return (
            f"no UML modules directory with sch_teql.ko matches {MODULES_GLOB}"
            " (install Debian package user-mode-linux)"
        )
    missing = [m for m in REQUIRED_MODULES if not (mdir / m).is_file()]
    if missing:
        return f"UML modules missing in {mdir}: {', '.join(missing)}"
    if shutil.which("insmod", path=SBIN_PATH) is None:
        return "insmod not found (install Debian package kmod)"
    if not INIT.is_file():
        return f"{INIT} is missing"
    return None


def _check_shared(path: str, what: str) -> None:
    real = os.path.realpath(path)
    repo = os.path.realpath(REPO)
    if real == repo or real.startswith(repo + "/"):
        private_dirs: tuple[str, ...] = ("/proc", "/sys", "/dev")
    else:
        private_dirs = _GUEST_PRIVATE
    for private in private_dirs:
        if real == private or real.startswith(private + "/"):
            raise ValueError(
                f"{what} {path!r} is under {private}, which the guest does not"
                " share with the host; use a directory such as the repo"
            )
    if any(c.isspace() for c in real):
        raise ValueError(f"{what} {path!r} contains whitespace")


def _job_script(cwd: str, env: dict[str, str]) -> str:
    lines = [
        "# generated by lab/uml.py",
        "export WB_IN_LAB=1",
    ]
    if not sys.stdout.isatty():
        # The guest console is a tty; do not colour output for a pipe/file.
        lines += ["export NO_COLOR=1 PY_COLORS=0 TERM=dumb"]
    for key, value in env.items():
        if not key.isidentifier():
            raise ValueError(f"bad environment variable name {key!r}")
        lines.append(f"export {key}={shlex.quote(value)}")
    lines += [
        f"cd {shlex.quote(cwd)} || exit 125",
        f"echo {shlex.quote(BEGIN_MARK)}",
        # The command runs in its own shell so that `exit` in it still lets
        # us print the end marker.
        'sh "$(dirname "$0")/command.sh"',
        "rc=$?",
        f'echo "{END_MARK} rc=$rc"',
        "exit $rc",
        "",
    ]
    return "\n".join(lines)


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill the UML kernel and its host helper processes (its own process
    group; the helpers are ptraced by the kernel process and may linger)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        proc.poll()  # reap linux.uml itself: a zombie still counts in the group
        time.sleep(0.05)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _pump(stream: IO[bytes], out: queue.Queue[str | None]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r")
        # The guest console is a tty (\n becomes \r\n); a bare \r means
        # "overwrite the line" (progress output): keep what is left visible.
        out.put(line.rsplit("\r", 1)[-1])
    out.put(None)


def follow(proc: subprocess.Popen[bytes], timeout: float, on_line: Callable[[str], None]) -> bool:
    """Hand each console line of `proc` to `on_line` until it closes its
    output or `timeout` runs out; True on timeout. The reading happens in a
    thread so that a silent guest cannot block the deadline."""
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        try:
            line = lines.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if line is None:
            return False
        on_line(line)


def command_line(parser: argparse.ArgumentParser, words: list[str],
                 env_items: list[str]) -> tuple[str, dict[str, str]]:
    """The shell command and the environment of a `-- COMMAND...` CLI: one
    word is a command line, several are quoted into one."""
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        parser.error("no command given")
    env: dict[str, str] = {}
    for item in env_items:
        key, sep, value = str(item).partition("=")
        if not sep:
            parser.error(f"--env needs KEY=VALUE, got {item!r}")
        env[key] = value
    return (words[0] if len(words) == 1 else shlex.join(words)), env


def run_in_guest(
    command: str,
    *,
    cwd: str,
    env: dict[str, str] | None = None,
    mem: str = "1G",
    max_equalizers: int = 2,
    timeout: float = 600.0,
    stream: bool = True,
) -> int:
    """Boot the lab guest once, run ``command`` (a shell command line) in
    ``cwd`` with ``env`` exported, and return its exit code.

    The guest console is streamed to our stdout (only what the job prints,
    plus ``lab-init:`` diagnostics).  Returns ``NO_RC`` (125) if the guest
    did not report an exit code, e.g. on timeout, after which the UML
    process tree is killed.  ``WB_IN_LAB=1`` is always exported.
    """
    reason = lab_available()
    if reason is not None:
        raise RuntimeError(f"lab not available: {reason}")
    binary = uml_binary()
    assert binary is not None
    cwd = os.path.abspath(cwd)
    _check_shared(cwd, "cwd")
    _check_shared(str(JOBS_DIR), "job directory")
    if max_equalizers < 1:
        raise ValueError("max_equalizers must be >= 1")

    JOBS_DIR.mkdir(exist_ok=True)
    jobdir = Path(tempfile.mkdtemp(prefix="job-", dir=JOBS_DIR))
    try:
        job = jobdir / "job.sh"
        (jobdir / "command.sh").write_text(command + "\n")
        job.write_text(_job_script(cwd, dict(env or {})))
        rcfile = jobdir / "rc"
        argv = [
            binary,
            f"mem={mem}",
            "root=/dev/root",
            "rootfstype=hostfs",
            "rootflags=/",
            "rw",
            "quiet",
            f"init={INIT}",
            "con=null",
            "con0=fd:0,fd:1",
            f"WB_JOB={job}",
            f"WB_MAX_EQUALIZERS={max_equalizers}",
            f"WB_KEEP={os.path.realpath(REPO)}",
        ]
        tail: list[str] = []
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(jobdir),
            start_new_session=True,
        )
        in_job = False

        def show(line: str) -> None:
            nonlocal tail, in_job
            tail = (tail + [line])[-40:]
            if line == BEGIN_MARK:
                in_job = True
            elif line.startswith(END_MARK):
                in_job = False
            elif stream and (in_job or line.startswith("lab-init:")):
                print(line, flush=True)

        timed_out = follow(proc, timeout, show)
        if timed_out:
            kill_tree(proc)
            print(
                f"lab: guest timed out after {timeout:g}s, killed",
                file=sys.stderr,
                flush=True,
            )
        else:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_tree(proc)
            # UML leaves helper processes behind only if it crashed.
            kill_tree(proc)
        try:
            rc = int(rcfile.read_text().strip())
        except (OSError, ValueError):
            rc = NO_RC
            if not timed_out:
                print(
                    "lab: guest reported no exit code; last console lines:",
                    *tail,
                    sep="\n  ",
                    file=sys.stderr,
                    flush=True,
                )
        return rc
    finally:
        shutil.rmtree(jobdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.uml",
        description=(
            "Run a command inside the UML lab guest (real sch_teql) and exit"
            " with its exit code. Several words after -- are quoted and run"
            " as one command; a single word is taken as a shell command line."
        ),
    )
    parser.add_argument("--max-equalizers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--mem", default="1G")
    parser.add_argument("--cwd", default=os.getcwd())
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="export in the guest (repeatable)",
    )
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command, env = command_line(parser, list(args.command), list(args.env))
    reason = lab_available()
    if reason is not None:
        print(f"lab not available: {reason}", file=sys.stderr)
        return NO_RC
    try:
        return run_in_guest(
            command,
            cwd=str(args.cwd),
            env=env,
            mem=str(args.mem),
            max_equalizers=int(args.max_equalizers),
            timeout=float(args.timeout),
            stream=not args.quiet,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return NO_RC


if __name__ == "__main__":
    sys.exit(main())
