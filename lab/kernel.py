"""Which User-Mode Linux kernel the lab boots on this host, and why.

Debian's packaged ``user-mode-linux`` (6.1 on Debian 12, 6.12 on Debian 13)
panics as soon as it runs init on hosts whose CPU has a large XSAVE area
(AVX-512 with AMX): UML restores a process's FPU state with
``PTRACE_SETREGSET(NT_X86_XSTATE)`` and a buffer of fixed size, which such a
host refuses (``ptrace set fp regs failed, errno = 14``).  Newer UML kernels
size that buffer from the host.  So the lab does not assume; it boots each
candidate once with a one-line init (about a second, the kernel's own boot)
and remembers the answer for this binary on this CPU and host kernel:

1. the packaged kernel (``/usr/bin/linux.uml``, modules in
   ``/usr/lib/uml/modules/<release>``), if it is installed and reaches init;
2. else the newest ``user-mode-linux`` that Debian's package registry
   offers (unstable), fetched with ``apt-get download`` through a private apt
   state under ``.lab/kernels/`` and unpacked there.  If it needs a newer
   glibc than the host's, the same suite's ``libc6`` is unpacked beside it and
   the binary's ELF interpreter and library path are pointed at it
   (``patchelf``, itself unpacked from the host suite's package if the host
   lacks it).  Nothing is installed system-wide.

``WB_LAB_KERNEL`` forces a choice: ``packaged``, ``newest``, or the path of a
``linux.uml`` binary (its modules from ``WB_LAB_MODULES``, or found beside it
as ``../lib/uml/modules/<release>``).  Where nothing boots, the lab stops
with :class:`NoKernel`, whose message says what was tried and what to do.

The lab suite must pass on the newest kernel and, where it boots, on the
packaged one (routers run their distribution's kernel): :func:`proof_specs`
names the kernels ``make lab`` runs it on.

Only the standard library is used, so this runs with any Python 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "AUTO",
    "BootCheck",
    "Kernel",
    "NEWEST",
    "NoKernel",
    "PACKAGED",
    "SPEC_ENV",
    "Selection",
    "boot_check",
    "choose",
    "proof_specs",
    "select",
]

REPO = Path(__file__).resolve().parent.parent
KERNELS_DIR = REPO / ".lab" / "kernels"
PROBE_INIT = REPO / "lab" / "probe-init.sh"

SPEC_ENV = "WB_LAB_KERNEL"
#: ``off`` boots every kernel in ptrace mode, even one that offers seccomp mode.
SECCOMP_ENV = "WB_LAB_SECCOMP"
MODULES_ENV = "WB_LAB_MODULES"
#: ``all`` lets a guest run on every CPU the lab may use; a number pins it there.
CPU_ENV = "WB_LAB_CPU"
AUTO, PACKAGED, NEWEST = "auto", "packaged", "newest"

PACKAGED_BINARY = "/usr/bin/linux.uml"
PACKAGED_MODULES = "/usr/lib/uml/modules"
#: The suite whose user-mode-linux is "the newest Debian offers".
NEWEST_SUITE = "unstable"
REQUIRED_MODULES = (
    "kernel/net/sched/sch_teql.ko",
    "kernel/drivers/net/veth.ko",
    "kernel/net/sched/sch_netem.ko",
)
#: What our probe init prints once it runs: userspace works on this kernel.
INIT_MARK = "@@wanbalanced-lab: init reached@@"
#: UML since 6.16 can run its processes under a seccomp filter instead of
#: ptrace: every guest system call and page fault then costs a signal in the
#: process itself, not two context switches to the tracer, and the guest runs
#: 2-3 times faster here. A kernel without the option passes it to init.
SECCOMP_ARG = "seccomp=on"
SECCOMP_OK = "Checking that seccomp filters can be installed...OK"
#: Console lines that tell why a kernel did not reach init, most telling first.
_FAILURE_LINES = (
    "ptrace set fp regs failed",
    "ptrace get fp regs failed",
    "Kernel panic",
    "not syncing",
)
BOOT_TIMEOUT = 20.0
#: Bump when the probe itself changes, so that old verdicts are not trusted.
_PROBE_VERSION = 2

Log = Callable[[str], None]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class NoKernel(RuntimeError):
    """No UML kernel that boots here could be found or made."""


class ProvisionError(RuntimeError):
    """The newest kernel could not be fetched or unpacked."""


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One bootable UML kernel: its binary and its modules directory."""

    spec: str  #: ``packaged``, ``newest`` or the binary's path
    binary: str
    modules: str  #: ``.../modules/<release>``
    release: str  #: ``uname -r`` in the guest, e.g. ``6.1.176``
    origin: str  #: where it comes from, for people
    #: What its boot check found it boots with beyond the lab's own
    #: arguments: ``("seccomp=on",)`` where seccomp mode works.
    args: tuple[str, ...] = ()

    def missing_modules(self) -> list[str]:
        """Modules the lab needs that this kernel's directory lacks."""
        return [m for m in REQUIRED_MODULES if not os.path.isfile(os.path.join(self.modules, m))]

    def argv(self, *, mem: str, init: str, root: str = "/", extra: Sequence[str] = ()) -> list[str]:
        """The command line that boots it on the host's files at ``root``
        (hostfs, writable) with ``init``, its console on our stdin and stdout,
        quiet, with ``extra`` and what its boot check found (``args``)."""
        return [
            self.binary, f"mem={mem}", "root=/dev/root", "rootfstype=hostfs", f"rootflags={root}", "rw", "quiet",
            f"init={init}", "con=null", "con0=fd:0,fd:1", *extra, *self.args,
        ]


@dataclasses.dataclass(frozen=True)
class BootCheck:
    """Whether a kernel reached its init on this host."""

    ok: bool
    detail: str  #: "reached init in 1.0 s" or why not
    cached: bool = False
    args: tuple[str, ...] = ()  #: the extra boot arguments it reached init with


@dataclasses.dataclass(frozen=True)
class Selection:
    """The kernel the lab uses, and the one line that says why."""

    kernel: Kernel
    why: str

    def line(self) -> str:
        """What the lab prints before it boots."""
        k = self.kernel
        mode = "seccomp mode" if SECCOMP_ARG in k.args else "ptrace mode"
        return f"lab: kernel {k.release} ({mode}): {k.origin}; {self.why}"


# --------------------------------------------------------------------------
# the pure part: which kernel, given what exists and what boots


def choose(
    spec: str,
    *,
    packaged: Callable[[], Kernel | None],
    newest: Callable[[], Kernel],
    from_path: Callable[[str], Kernel],
    check: Callable[[Kernel], BootCheck],
    asked: str = "",
) -> Selection:
    """The kernel for ``spec`` (``auto``, ``packaged``, ``newest`` or a path).

    ``auto`` takes the packaged kernel where it boots, else the newest.  A
    kernel is never chosen without ``check`` saying it reaches init, so a
    kernel that panics is reported, not booted.  Raises :class:`NoKernel`
    with what was tried.  ``asked`` says who named a kernel other than
    ``auto`` (default: ``$WB_LAB_KERNEL``).
    """
    spec = spec.strip() or AUTO
    asked = asked or f"forced by {SPEC_ENV}={spec}"
    tried: list[str] = []

    def boots(kernel: Kernel) -> tuple[Kernel | None, str]:
        """``kernel`` with the arguments it boots with, or None and why not."""
        missing = kernel.missing_modules()
        if missing:
            return None, f"its modules directory {kernel.modules} lacks {', '.join(missing)}"
        verdict = check(kernel)
        if verdict.ok:
            return dataclasses.replace(kernel, args=verdict.args), verdict.detail
        return None, verdict.detail

    def packaged_or_why() -> tuple[Kernel | None, str]:
        kernel = packaged()
        if kernel is None:
            return None, "not installed (Debian package user-mode-linux)"
        booted, detail = boots(kernel)
        return (booted, detail) if booted else (None, f"{kernel.release} does not boot here: {detail}")

    def newest_or_why() -> tuple[Kernel | None, str]:
        try:
            kernel = newest()
        except ProvisionError as exc:
            return None, f"could not be fetched: {exc}"
        booted, detail = boots(kernel)
        return (booted, detail) if booted else (None, f"{kernel.release} does not boot here: {detail}")

    if spec == AUTO:
        kernel, detail = packaged_or_why()
        if kernel is not None:
            return Selection(kernel, f"the packaged kernel {detail}")
        tried.append(f"Debian's packaged user-mode-linux: {detail}")
        packaged_why = detail
        kernel, detail = newest_or_why()
        if kernel is not None:
            return Selection(kernel, f"it {detail}, and the packaged kernel is {packaged_why}")
        tried.append(f"the newest user-mode-linux ({NEWEST_SUITE}): {detail}")
    elif spec == PACKAGED:
        kernel, detail = packaged_or_why()
        if kernel is not None:
            return Selection(kernel, f"{asked}; it {detail}")
        tried.append(f"Debian's packaged user-mode-linux: {detail}")
    elif spec == NEWEST:
        kernel, detail = newest_or_why()
        if kernel is not None:
            return Selection(kernel, f"{asked}; it {detail}")
        tried.append(f"the newest user-mode-linux ({NEWEST_SUITE}): {detail}")
    else:
        try:
            kernel = from_path(spec)
        except (OSError, ValueError) as exc:
            tried.append(f"{spec}: {exc}")
        else:
            booted, detail = boots(kernel)
            if booted is not None:
                return Selection(booted, f"{asked}; it {detail}")
            tried.append(f"{spec}: {kernel.release} does not boot here: {detail}")
    raise NoKernel(_no_kernel_message(spec, tried))


def _no_kernel_message(spec: str, tried: Sequence[str]) -> str:
    lines = [f"no UML kernel boots on this host ({SPEC_ENV}={spec}). Tried:"]
    lines += [f"  - {t}" for t in tried]
    lines += [
        "What to do: install Debian's user-mode-linux (apt-get install user-mode-linux kmod),",
        f"  let the lab fetch the newest one ({SPEC_ENV}=newest; needs Debian's package registry),",
        f"  or point {SPEC_ENV} at a linux.uml that boots here (and {MODULES_ENV} at its modules).",
    ]
    return "\n".join(lines)


def proof_specs(spec: str, packaged_boots: Callable[[], bool]) -> list[str]:
    """The kernels the lab suite must pass on: the forced one alone, or the
    newest and, where it boots, the packaged one (routers run their
    distribution's kernel; newer ones changed sch_teql)."""
    spec = spec.strip() or AUTO
    if spec != AUTO:
        return [spec]
    return [NEWEST, PACKAGED] if packaged_boots() else [NEWEST]


def glibc_older(host: str, needed: str) -> bool:
    """True if glibc ``host`` (e.g. ``2.36``) is older than ``needed``."""
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", v)[:3])
    return key(host) < key(needed)


def libc_floor(depends: str) -> str | None:
    """The ``libc6 (>= X)`` version in a Debian ``Depends:`` field, if any."""
    m = re.search(r"(?:^|,)\s*libc6\s*\(\s*>=\s*([0-9][^)\s]*)\s*\)", depends)
    return m.group(1) if m else None


# --------------------------------------------------------------------------
# apt sources: the host's own Debian mirror, for another suite


@dataclasses.dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None


def parse_sources(text: str, deb822: bool) -> list[AptSource]:
    """The ``deb`` entries of a one-line ``.list`` or a deb822 ``.sources`` file."""
    found: list[AptSource] = []
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            key = ""
            for line in stanza.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0].isspace() and key:
                    fields[key] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                found.append(AptSource(
                    uri, tuple(fields.get("suites", "").split()),
                    tuple(fields.get("components", "").split()), fields.get("signed-by") or None,
                ))
        return found
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        opts = m.group(1) or ""
        signed = re.search(r"signed-by=(\S+?)\s*(?:\]|\s)", opts + " ")
        found.append(AptSource(
            m.group(2), (m.group(3),), tuple(m.group(4).split()), signed.group(1) if signed else None,
        ))
    return found


def debian_mirror(sources: Sequence[AptSource], codename: str) -> AptSource | None:
    """The host's Debian archive: a ``main`` source of the host's own suite
    that is not the security archive (whose layout has no ``unstable``)."""
    for src in sources:
        if codename in src.suites and "main" in src.components and "security" not in src.uri:
            return src
    return None


def _host_sources() -> list[AptSource]:
    found: list[AptSource] = []
    paths = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]
    for path in paths:
        if not (path.endswith(".list") or path.endswith(".sources")):
            continue
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        found += parse_sources(text, deb822=path.endswith(".sources"))
    return found


def _host_codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def host_glibc() -> str:
    """The host's glibc version, e.g. ``2.36``."""
    try:
        found = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (ValueError, OSError):
        found = ""
    return found.split()[-1] if found.split() else "0"


# --------------------------------------------------------------------------
# kernels that exist on disk


def _run_version(binary: str) -> str:
    out = subprocess.run(
        [binary, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=20, check=False,
    )
    words = out.stdout.split()
    if out.returncode != 0 or not words:
        err = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise OSError(f"{binary} --version failed: {err}")
    return words[0]


def _dpkg_version(package: str) -> str:
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package],
            capture_output=True, text=True, check=False,
        ).stdout.strip()
    except OSError:
        return ""


def packaged() -> Kernel | None:
    """Debian's installed user-mode-linux, or None."""
    if not os.access(PACKAGED_BINARY, os.X_OK):
        return None
    try:
        release = _run_version(PACKAGED_BINARY)
    except (OSError, subprocess.SubprocessError):
        return None
    version = _dpkg_version("user-mode-linux")
    codename = _host_codename()
    origin = f"Debian {codename}'s packaged user-mode-linux {version}".replace("  ", " ")
    return Kernel(PACKAGED, PACKAGED_BINARY, f"{PACKAGED_MODULES}/{release}", release,
                  f"{origin} ({PACKAGED_BINARY})")


def from_path(path: str) -> Kernel:
    """A kernel named by the path of its binary (``WB_LAB_KERNEL=/path``)."""
    binary = os.path.abspath(path)
    if not os.access(binary, os.X_OK):
        raise OSError(f"{binary} is not an executable file")
    release = _run_version(binary)
    modules = os.environ.get(MODULES_ENV) or os.path.normpath(
        os.path.join(os.path.dirname(binary), "..", "lib", "uml", "modules", release))
    if not os.path.isdir(modules) and os.path.isdir(f"{PACKAGED_MODULES}/{release}"):
        modules = f"{PACKAGED_MODULES}/{release}"
    return Kernel(binary, binary, modules, release, f"the kernel at {binary}")


# --------------------------------------------------------------------------
# does it boot here?


def _host_fingerprint() -> str:
    """What decides whether a UML binary boots: the CPU's features and the
    host kernel (which sizes XSAVE for ptrace)."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    cpu += line
                elif not line.strip() and cpu:
                    break
    except OSError:
        pass
    return hashlib.sha256((os.uname().release + "\n" + cpu).encode()).hexdigest()[:16]


def _binary_identity(binary: str) -> str:
    st = os.stat(binary)
    return f"{os.path.realpath(binary)}:{st.st_size}:{st.st_mtime_ns}"


def _check_key(kernel: Kernel) -> str:
    blob = f"{_PROBE_VERSION}|{_binary_identity(kernel.binary)}|{_host_fingerprint()}|{_seccomp_wanted()}"
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def verdict_from_console(lines: Sequence[str], reached: bool, timed_out: bool, rc: int | None) -> str:
    """Why a probe boot did not reach init, in one line, from its console."""
    if reached:
        return "reached init"
    for needle in _FAILURE_LINES:
        for line in lines:
            if needle in line:
                return line.strip()
    if timed_out:
        return f"no init after {BOOT_TIMEOUT:g} s"
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output")
    return f"exited with status {rc} before init ({last})"


def guest_cpu(env: Mapping[str, str] | None = None, allowed: set[int] | None = None) -> int | None:
    """The one host CPU a guest runs on, or None for all of them.

    A UML guest is one CPU, run by several host processes (the kernel and a
    stub per guest process) that hand it to each other on every system call
    and page fault. On different host CPUs each handover wakes an idle CPU:
    a guest's system call measured 25-50 µs so, and 3.3 µs on one CPU, and
    timings swung by 2x from boot to boot. Pinned, the guest behaves like the
    one-CPU machine it is. ``$WB_LAB_CPU``: ``all``, or the CPU to use; by
    default the last one this process may use."""
    allowed = os.sched_getaffinity(0) if allowed is None else allowed
    wanted = (os.environ if env is None else env).get(CPU_ENV, "").strip().lower()
    if wanted == "all" or len(allowed) < 2:
        return None
    if wanted:
        try:
            cpu = int(wanted)
        except ValueError:
            raise SystemExit(f"lab: {CPU_ENV}={wanted!r}: expected 'all' or a CPU number") from None
        if cpu not in allowed:
            raise SystemExit(f"lab: {CPU_ENV}={cpu}: this process may use CPUs {sorted(allowed)} only")
        return cpu
    return max(allowed)


def on_guest_cpu() -> Callable[[], None] | None:
    """For ``subprocess.Popen(preexec_fn=...)``: start the guest on `guest_cpu`
    (its host processes inherit it)."""
    cpu = guest_cpu()
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _seccomp_wanted() -> bool:
    return os.environ.get(SECCOMP_ENV, "").strip().lower() not in ("off", "0", "no")


def _probe_boot(kernel: Kernel, extra: Sequence[str] = ()) -> tuple[BootCheck, list[str]]:
    """Boot ``kernel`` with an init that prints a mark and powers off; the
    verdict, and the console's lines about seccomp and its last lines."""
    argv = [
        kernel.binary, "mem=128M", "root=/dev/root", "rootfstype=hostfs", "rootflags=/",
        "ro", f"init={PROBE_INIT}", "con=null", "con0=fd:0,fd:1", *extra,
    ]
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="wb-lab-probe-")
    lines: list[str] = []
    modes: list[str] = []
    reached = timed_out = False
    rc: int | None = None
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=workdir, start_new_session=True, preexec_fn=on_guest_cpu(),
        )
    except OSError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        return BootCheck(False, f"cannot start it: {exc}"), []
    # Imported here: lab.uml imports this module.
    from lab.uml import follow, kill_tree
    elapsed = 0.0

    def on_line(line: str) -> None:
        nonlocal reached, elapsed
        if INIT_MARK in line and not reached:
            reached = True
            elapsed = time.monotonic() - start
        if "seccomp" in line.lower():
            modes.append(line)  # early in the boot: the tail below loses it
        lines.append(line)
        del lines[:-60]

    try:
        timed_out = follow(proc, BOOT_TIMEOUT, on_line)
        if not timed_out:
            try:
                rc = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
    finally:
        kill_tree(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    if reached:
        return BootCheck(True, f"reaches init on this host (checked in {elapsed:.1f} s)"), modes + lines
    return BootCheck(False, verdict_from_console(lines, reached, timed_out, rc)), modes + lines


def _knows_seccomp(console: Sequence[str]) -> bool:
    # Only a kernel with seccomp mode checks for it or complains about it.
    return any("seccomp filters can be installed" in ln or "SECCOMP userspace" in ln
               or "Invalid seccomp option" in ln for ln in console)


def probe(kernel: Kernel) -> BootCheck:
    """Boot ``kernel`` once in seccomp mode where it has one and
    ``$WB_LAB_SECCOMP`` is not ``off``, else (or if that does not reach init)
    in ptrace mode, and say how it reached init or why not."""
    if not _seccomp_wanted():
        return _probe_boot(kernel)[0]
    verdict, console = _probe_boot(kernel, (SECCOMP_ARG,))
    if verdict.ok:
        if any(SECCOMP_OK in ln for ln in console):
            return dataclasses.replace(verdict, detail=f"{verdict.detail} in seccomp mode", args=(SECCOMP_ARG,))
        return verdict  # it has no seccomp mode and passed the argument to init
    if not _knows_seccomp(console):
        return verdict
    plain = _probe_boot(kernel)[0]
    if plain.ok:
        return dataclasses.replace(plain, detail=f"{plain.detail} in ptrace mode (seccomp mode: {verdict.detail})")
    return plain


def boot_check(kernel: Kernel, *, cache: Path = KERNELS_DIR / "boot-checks.json") -> BootCheck:
    """Whether ``kernel`` reaches init here, and with which arguments:
    remembered per binary, CPU, host kernel and ``$WB_LAB_SECCOMP``, else
    found out by booting it (about a second)."""
    key = _check_key(kernel)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("ok"), bool):
        detail = f"{entry.get('detail', '')}, remembered in {_rel(cache)}"
        args = tuple(a for a in entry.get("args", ()) if isinstance(a, str))
        return BootCheck(entry["ok"], detail, cached=True, args=args)
    verdict = probe(kernel)
    known[key] = {"ok": verdict.ok, "detail": verdict.detail, "args": list(verdict.args), "binary": kernel.binary,
                  "release": kernel.release, "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + f".{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, cache)
    return verdict


# --------------------------------------------------------------------------
# provisioning the newest kernel


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold ``directory/lock`` exclusively (other lab processes wait)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "a+") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


class _Apt:
    """apt-get and apt-cache with a private state: one suite of the host's
    Debian mirror, nothing of the host's apt state read or written."""

    def __init__(self, root: Path, source: AptSource, suite: str) -> None:
        self.root = root
        for sub in ("lists/partial", "cache/archives/partial", "preferences.d"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        signed = source.signed_by or "/usr/share/keyrings/debian-archive-keyring.gpg"
        (root / "sources.list").write_text(f"deb [signed-by={signed}] {source.uri} {suite} main\n")
        self.options = [
            f"-oDir::Etc::SourceList={root / 'sources.list'}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::Etc::PreferencesParts={root / 'preferences.d'}",
            "-oDir::Etc::Preferences=/dev/null",
            f"-oDir::State::Lists={root / 'lists'}",
            f"-oDir::State::Status={root / 'status'}",
            f"-oDir::Cache={root / 'cache'}",
            "-oAPT::Sandbox::User=root",
            "-oAcquire::Languages=none",
        ]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        out = subprocess.run(
            [tool, *self.options, *args], capture_output=True, text=True,
            stdin=subprocess.DEVNULL, cwd=cwd, check=False,
        )
        if out.returncode != 0:
            err = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise ProvisionError(f"{tool} {' '.join(args)}: {err}")
        return out.stdout

    def field(self, package: str, name: str) -> str:
        text = self.run("apt-cache", "show", "--no-all-versions", package)
        m = re.search(rf"^{name}:\s*(.*)$", text, re.MULTILINE)
        return m.group(1).strip() if m else ""


def _download(apt_args: Sequence[str], package: str, into: Path) -> Path:
    before = set(into.glob("*.deb"))
    out = subprocess.run(["apt-get", *apt_args, "download", package], cwd=into,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    got = sorted(set(into.glob(f"{package}_*.deb")) - before) or sorted(into.glob(f"{package}_*.deb"))
    if out.returncode != 0 or not got:
        err = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProvisionError(f"apt-get download {package}: {err}")
    return got[-1]


def _unpack(deb: Path, into: Path) -> None:
    out = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ProvisionError(f"dpkg-deb -x {deb.name}: {out.stderr.strip()}")


def _patchelf(tools: Path, downloads: Path, log: Log) -> str:
    """A patchelf binary: the host's, or unpacked from its suite's package."""
    found = shutil.which("patchelf") or (str(tools / "usr/bin/patchelf")
                                         if (tools / "usr/bin/patchelf").is_file() else None)
    if found:
        return found
    log("lab: fetching patchelf (Debian package, unpacked under .lab/kernels/tools)")
    try:
        deb = _download([], "patchelf", downloads)
    except ProvisionError:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        deb = _download([], "patchelf", downloads)
    _unpack(deb, tools)
    return str(tools / "usr/bin/patchelf")


def provision_newest(*, base: Path = KERNELS_DIR, log: Log = _say) -> Kernel:
    """The newest Debian user-mode-linux, unpacked under ``base`` (cached:
    once there it is reused without asking the registry again)."""
    with locked(base):
        stamp = base / "newest.json"
        try:
            known = json.loads(stamp.read_text())
            kernel = Kernel(**known["kernel"])
            if os.access(kernel.binary, os.X_OK):
                return kernel
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return _fetch_newest(base, stamp, log)


def _fetch_newest(base: Path, stamp: Path, log: Log) -> Kernel:
    codename = _host_codename()
    source = debian_mirror(_host_sources(), codename)
    if source is None:
        raise ProvisionError(f"no Debian 'main' source for {codename or 'this host'} in /etc/apt")
    log(f"lab: fetching the newest user-mode-linux ({NEWEST_SUITE}) from the host's Debian mirror")
    apt = _Apt(base / "apt", source, NEWEST_SUITE)
    apt.run("apt-get", "update", "-q")
    version = apt.field("user-mode-linux", "Version")
    if not version:
        raise ProvisionError(f"{NEWEST_SUITE} offers no user-mode-linux")
    floor = libc_floor(apt.field("user-mode-linux", "Depends"))
    need_libc = floor is not None and glibc_older(host_glibc(), floor)
    final = base / f"user-mode-linux_{version}"
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=base))
    downloads = base / "downloads"
    downloads.mkdir(exist_ok=True)
    try:
        debs = [_download(apt.options, "user-mode-linux", downloads)]
        libc_version = ""
        if need_libc:
            libc_version = apt.field("libc6", "Version")
            debs.append(_download(apt.options, "libc6", downloads))
        for deb in debs:
            _unpack(deb, tmp)
        binary = final / "usr/bin/linux.uml"
        origin = f"Debian {NEWEST_SUITE}'s user-mode-linux {version}, unpacked in {_rel(final)}"
        if need_libc:
            loaders = sorted(tmp.glob("usr/lib/*-linux-gnu*/ld-linux*.so.*"))
            if not loaders:
                raise ProvisionError("the unpacked libc6 has no ELF interpreter")
            loader = final / loaders[0].relative_to(tmp)
            patchelf = _patchelf(base / "tools", downloads, log)
            out = subprocess.run(
                [patchelf, "--set-interpreter", str(loader), "--set-rpath", str(loader.parent),
                 str(tmp / "usr/bin/linux.uml")], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise ProvisionError(f"patchelf: {out.stderr.strip()}")
            origin += (f" with {NEWEST_SUITE}'s libc6 {libc_version} beside it"
                       f" (it needs glibc >= {floor}, the host has {host_glibc()})")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for deb in downloads.glob("*.deb"):
            deb.unlink(missing_ok=True)
    try:
        release = _run_version(str(binary))
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProvisionError(str(exc)) from exc
    kernel = Kernel(NEWEST, str(binary), str(final / "usr/lib/uml/modules" / release), release, origin)
    stamp.write_text(json.dumps({"kernel": dataclasses.asdict(kernel),
                                 "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
    log(f"lab: unpacked kernel {release} in {_rel(final)}")
    return kernel


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------
# the lab's entry points


_selected: dict[str, Selection] = {}


def select(spec: str | None = None, *, log: Log = _say) -> Selection:
    """The kernel the lab boots for ``spec`` (default: ``$WB_LAB_KERNEL`` or
    ``auto``); the choice is printed once per process."""
    asked = "" if spec is None else f"asked for as {spec!r}"
    spec = (spec if spec is not None else os.environ.get(SPEC_ENV, "")).strip() or AUTO
    if spec not in _selected:
        sel = choose(
            spec,
            packaged=packaged,
            newest=lambda: provision_newest(log=log),
            from_path=from_path,
            check=boot_check,
            asked=asked,
        )
        _selected[spec] = sel
        log(sel.line())
        cpu = guest_cpu()
        log(f"lab: its guests run on host CPU {cpu} only ({CPU_ENV}=all: on every CPU)" if cpu is not None
            else "lab: its guests run on every host CPU")
    return _selected[spec]


def _packaged_boots() -> bool:
    kernel = packaged()
    return kernel is not None and not kernel.missing_modules() and boot_check(kernel).ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.kernel",
        description="Say which UML kernel the lab boots here, and why (fetching one if needed).",
    )
    parser.add_argument("--proof", action="store_true",
                        help="print the kernels the lab suite must pass on, one spec a line")
    parser.add_argument("--spec", default=None, help=f"instead of ${SPEC_ENV}")
    args = parser.parse_args(argv)
    spec = (args.spec if args.spec is not None else os.environ.get(SPEC_ENV, "")).strip() or AUTO
    try:
        if args.proof:
            specs = proof_specs(spec, _packaged_boots)
            for s in specs:
                select(s)  # provisions and checks each now, so a failure stops here
            print("\n".join(specs))
        else:
            sel = select(spec, log=lambda _line: None)
            print(sel.line())
            print(json.dumps(dataclasses.asdict(sel.kernel), indent=2))
    except NoKernel as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
