"""The lab's kernel selection (lab/kernel.py): which UML kernel boots, and why.

The choice itself is pure (``choose``, ``proof_specs``); the boot check is
exercised with fake kernel binaries, shell scripts that print what a real
UML prints when it panics at init or reaches it.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab import kernel as lk
from lab.kernel import AUTO, NEWEST, PACKAGED, BootCheck, Kernel, NoKernel, ProvisionError

PANIC_CONSOLE = [
    "Run /sbin/init as init process",
    "userspace - ptrace set fp regs failed, errno = 14",
    "Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b",
]


def make_kernel(tmp_path: Path, name: str, release: str, modules: bool = True) -> Kernel:
    mdir = tmp_path / name / "modules" / release
    if modules:
        for rel in lk.REQUIRED_MODULES:
            (mdir / rel).parent.mkdir(parents=True, exist_ok=True)
            (mdir / rel).write_bytes(b"")
    return Kernel(name, f"/fake/{name}/linux.uml", str(mdir), release, f"the {name} kernel")


class Checks:
    """A boot check that answers from a table and records who was booted."""

    def __init__(self, verdicts: dict[str, BootCheck]) -> None:
        self.verdicts = verdicts
        self.booted: list[str] = []

    def __call__(self, kernel: Kernel) -> BootCheck:
        self.booted.append(kernel.spec)
        return self.verdicts[kernel.spec]


OK = BootCheck(True, "reaches init on this host (checked in 1.0 s)")
PANICS = BootCheck(False, "userspace - ptrace set fp regs failed, errno = 14")


def choose(spec: str, pkg: Kernel | None, new: Kernel | Exception, checks: Checks) -> lk.Selection:
    def newest() -> Kernel:
        if isinstance(new, Exception):
            raise new
        return new

    def from_path(path: str) -> Kernel:
        raise OSError(f"{path} is not an executable file")

    return lk.choose(spec, packaged=lambda: pkg, newest=newest, from_path=from_path, check=checks)


def test_auto_takes_the_packaged_kernel_where_it_boots(tmp_path: Path) -> None:
    pkg, new = make_kernel(tmp_path, PACKAGED, "6.1.176"), make_kernel(tmp_path, NEWEST, "7.2.7")
    checks = Checks({PACKAGED: OK, NEWEST: OK})
    sel = choose(AUTO, pkg, new, checks)
    assert sel.kernel == pkg
    assert checks.booted == [PACKAGED]  # the newest is not even fetched
    assert sel.line().startswith("lab: kernel 6.1.176 (ptrace mode): the packaged kernel; the packaged kernel reaches init")


def test_auto_falls_back_to_the_newest_when_the_packaged_panics(tmp_path: Path) -> None:
    pkg, new = make_kernel(tmp_path, PACKAGED, "6.1.176"), make_kernel(tmp_path, NEWEST, "7.2.7")
    sel = choose(AUTO, pkg, new, Checks({PACKAGED: PANICS, NEWEST: OK}))
    assert sel.kernel == new
    line = sel.line()
    assert "\n" not in line
    assert line.startswith("lab: kernel 7.2.7 (ptrace mode):")
    assert "6.1.176 does not boot here: userspace - ptrace set fp regs failed, errno = 14" in line


def test_auto_fetches_the_newest_where_nothing_is_installed(tmp_path: Path) -> None:
    new = make_kernel(tmp_path, NEWEST, "7.2.7")
    sel = choose(AUTO, None, new, Checks({NEWEST: OK}))
    assert sel.kernel == new and "not installed" in sel.why


def test_no_kernel_boots_says_what_was_tried_and_what_to_do(tmp_path: Path) -> None:
    pkg, new = make_kernel(tmp_path, PACKAGED, "6.1.176"), make_kernel(tmp_path, NEWEST, "7.2.7")
    with pytest.raises(NoKernel) as err:
        choose(AUTO, pkg, new, Checks({PACKAGED: PANICS, NEWEST: BootCheck(False, "no init after 20 s")}))
    msg = str(err.value)
    assert "6.1.176 does not boot here: userspace - ptrace set fp regs failed" in msg
    assert "7.2.7 does not boot here: no init after 20 s" in msg
    assert "What to do" in msg and "apt-get install user-mode-linux" in msg and lk.SPEC_ENV in msg
    assert "Kernel panic" not in msg  # a diagnosis, not a dump


def test_a_fetch_that_fails_is_reported(tmp_path: Path) -> None:
    pkg = make_kernel(tmp_path, PACKAGED, "6.1.176")
    with pytest.raises(NoKernel) as err:
        choose(AUTO, pkg, ProvisionError("apt-get update -q: network unreachable"), Checks({PACKAGED: PANICS}))
    assert "could not be fetched: apt-get update -q: network unreachable" in str(err.value)


def test_forced_packaged_never_falls_back(tmp_path: Path) -> None:
    pkg, new = make_kernel(tmp_path, PACKAGED, "6.1.176"), make_kernel(tmp_path, NEWEST, "7.2.7")
    checks = Checks({PACKAGED: PANICS, NEWEST: OK})
    with pytest.raises(NoKernel):
        choose(PACKAGED, pkg, new, checks)
    assert checks.booted == [PACKAGED]


def test_forced_newest_is_taken_even_where_the_packaged_boots(tmp_path: Path) -> None:
    pkg, new = make_kernel(tmp_path, PACKAGED, "6.1.176"), make_kernel(tmp_path, NEWEST, "7.2.7")
    checks = Checks({PACKAGED: OK, NEWEST: OK})
    sel = choose(NEWEST, pkg, new, checks)
    assert sel.kernel == new and checks.booted == [NEWEST]
    assert f"forced by {lk.SPEC_ENV}=newest" in sel.why


def test_the_chosen_kernel_boots_with_what_its_check_found(tmp_path: Path) -> None:
    pkg, new = make_kernel(tmp_path, PACKAGED, "6.1.176"), make_kernel(tmp_path, NEWEST, "7.2.7")
    seccomp = BootCheck(True, "reaches init on this host (checked in 0.9 s) in seccomp mode", args=(lk.SECCOMP_ARG,))
    sel = choose(AUTO, pkg, new, Checks({PACKAGED: PANICS, NEWEST: seccomp}))
    assert sel.kernel.args == (lk.SECCOMP_ARG,) and sel.kernel.release == "7.2.7"
    assert sel.line().startswith("lab: kernel 7.2.7 (seccomp mode):")
    assert choose(PACKAGED, pkg, new, Checks({PACKAGED: OK})).kernel.args == ()


def test_a_kernel_without_the_labs_modules_is_not_booted(tmp_path: Path) -> None:
    pkg = make_kernel(tmp_path, PACKAGED, "6.1.176", modules=False)
    new = make_kernel(tmp_path, NEWEST, "7.2.7")
    checks = Checks({PACKAGED: OK, NEWEST: OK})
    sel = choose(AUTO, pkg, new, checks)
    assert sel.kernel == new and checks.booted == [NEWEST]
    assert "lacks kernel/net/sched/sch_teql.ko" in sel.why


def test_a_forced_path_that_is_no_kernel_is_reported(tmp_path: Path) -> None:
    with pytest.raises(NoKernel) as err:
        choose("/nowhere/linux", None, ProvisionError("unused"), Checks({}))
    assert "/nowhere/linux is not an executable file" in str(err.value)


def test_proof_specs() -> None:
    assert lk.proof_specs(AUTO, lambda: True) == [NEWEST, PACKAGED]
    assert lk.proof_specs("", lambda: False) == [NEWEST]
    assert lk.proof_specs(PACKAGED, lambda: pytest.fail("not asked")) == [PACKAGED]
    assert lk.proof_specs("/opt/uml/linux", lambda: True) == ["/opt/uml/linux"]


def test_verdict_from_a_panicking_console() -> None:
    assert lk.verdict_from_console(PANIC_CONSOLE, False, False, 0) == (
        "userspace - ptrace set fp regs failed, errno = 14")
    assert lk.verdict_from_console(["Kernel panic - not syncing: VFS"], False, False, 1).startswith("Kernel panic")
    assert lk.verdict_from_console(["booting"], False, True, None) == "no init after 20 s"
    assert lk.verdict_from_console(["x", "bad option", ""], False, False, 2) == (
        "exited with status 2 before init (bad option)")


def test_libc_floor_and_versions() -> None:
    assert lk.libc_floor("libc6 (>= 2.38)") == "2.38"
    assert lk.libc_floor("debconf, libc6 (>= 2.34), libfoo") == "2.34"
    assert lk.libc_floor("libc6-dev (>= 2.40)") is None
    assert lk.libc_floor("") is None
    assert lk.glibc_older("2.36", "2.38") and not lk.glibc_older("2.41", "2.38")
    assert not lk.glibc_older("2.38", "2.38") and lk.glibc_older("2.9", "2.10")


def test_the_hosts_debian_mirror_from_either_format() -> None:
    one_line = textwrap.dedent("""\
        # comment
        deb http://security.example/debian-security bookworm-security main
        deb [arch=amd64 signed-by=/k/debian.gpg] http://mirror.example/debian bookworm main contrib
        deb-src http://mirror.example/debian bookworm main
        """)
    src = lk.debian_mirror(lk.parse_sources(one_line, deb822=False), "bookworm")
    assert src is not None
    assert (src.uri, src.signed_by) == ("http://mirror.example/debian", "/k/debian.gpg")
    deb822 = textwrap.dedent("""\
        Types: deb
        URIs: http://mirror.example/debian
        Suites: trixie trixie-updates
        Components: main
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

        Types: deb
        URIs: http://mirror.example/debian-security
        Suites: trixie-security
        Components: main
        """)
    src = lk.debian_mirror(lk.parse_sources(deb822, deb822=True), "trixie")
    assert src is not None and src.uri == "http://mirror.example/debian"
    assert lk.debian_mirror(lk.parse_sources(deb822, deb822=True), "bookworm") is None


def fake_uml(path: Path, console: list[str], counter: Path) -> Path:
    """A stand-in for linux.uml: --version prints a release, a "boot" prints
    ``console`` and counts itself. It never runs the init it is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"echo {line!r}" for line in console)
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = --version ]; then echo 9.9.9; exit 0; fi
        echo boot >> {str(counter)!r}
        """) + body + "\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_boot_check_boots_once_and_remembers(tmp_path: Path) -> None:
    counter, cache = tmp_path / "boots", tmp_path / "checks.json"
    binary = fake_uml(tmp_path / "linux.uml", ["Linux version 9.9.9", lk.INIT_MARK], counter)
    kernel = Kernel("x", str(binary), str(tmp_path), "9.9.9", "fake")
    first = lk.boot_check(kernel, cache=cache)
    assert first.ok and not first.cached and "reaches init" in first.detail
    second = lk.boot_check(kernel, cache=cache)
    assert second.ok and second.cached
    assert counter.read_text().count("boot") == 1
    # Another binary at the same path (an upgrade) is checked again.
    fake_uml(binary, PANIC_CONSOLE, counter)
    os.utime(binary, ns=(1, 1))
    third = lk.boot_check(kernel, cache=cache)
    assert not third.ok and third.detail == "userspace - ptrace set fp regs failed, errno = 14"
    assert counter.read_text().count("boot") == 2


def test_boot_check_of_a_kernel_that_cannot_start(tmp_path: Path) -> None:
    binary = tmp_path / "linux.uml"
    binary.write_text("not an executable format")
    binary.chmod(0o755)
    kernel = Kernel("x", str(binary), str(tmp_path), "9.9.9", "fake")
    verdict = lk.boot_check(kernel, cache=tmp_path / "checks.json")
    assert not verdict.ok and "cannot start it" in verdict.detail


def test_from_path_finds_modules_beside_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lk.MODULES_ENV, raising=False)
    binary = fake_uml(tmp_path / "usr" / "bin" / "linux.uml", [], tmp_path / "boots")
    kernel = lk.from_path(str(binary))
    assert kernel.release == "9.9.9"
    assert kernel.modules == str(tmp_path / "usr" / "lib" / "uml" / "modules" / "9.9.9")
    monkeypatch.setenv(lk.MODULES_ENV, "/elsewhere")
    assert lk.from_path(str(binary)).modules == "/elsewhere"


def modal_uml(path: Path, seccomp_console: list[str], plain_console: list[str], counter: Path) -> Path:
    """A stand-in for linux.uml that prints ``seccomp_console`` when booted
    with ``seccomp=on`` and ``plain_console`` otherwise, and logs each boot's
    arguments to ``counter``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    def echo(lines: list[str]) -> str:
        return "\n".join(f"  echo {line!r}" for line in lines) or "  :"
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = --version ]; then echo 9.9.9; exit 0; fi
        echo "boot $*" >> {str(counter)!r}
        case " $* " in
        *" seccomp=on "*)
        """) + echo(seccomp_console) + "\n  ;;\n*)\n" + echo(plain_console) + "\n  ;;\nesac\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


SECCOMP_BOOT = ["Checking that seccomp filters can be installed...OK",
                *(f"boot line {i}" for i in range(80)),  # more than the tail the probe keeps
                lk.INIT_MARK]
PTRACE_BOOT = ["Checking that ptrace can change system call numbers...OK", lk.INIT_MARK]


def boots(counter: Path) -> list[str]:
    return counter.read_text().splitlines()


def test_a_kernel_with_seccomp_mode_boots_in_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lk.SECCOMP_ENV, raising=False)
    counter, cache = tmp_path / "boots", tmp_path / "checks.json"
    binary = modal_uml(tmp_path / "linux.uml", SECCOMP_BOOT, PTRACE_BOOT, counter)
    kernel = Kernel("x", str(binary), str(tmp_path), "9.9.9", "fake")
    first = lk.boot_check(kernel, cache=cache)
    assert first.ok and first.args == (lk.SECCOMP_ARG,) and first.detail.endswith("in seccomp mode")
    again = lk.boot_check(kernel, cache=cache)
    assert again.cached and again.args == (lk.SECCOMP_ARG,)
    assert len(boots(counter)) == 1 and lk.SECCOMP_ARG in boots(counter)[0]


def test_seccomp_mode_that_does_not_work_falls_back_to_ptrace(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lk.SECCOMP_ENV, raising=False)
    counter = tmp_path / "boots"
    broken = ["Checking that seccomp filters can be installed...", "SECCOMP userspace requested but not functional!",
              "Kernel panic - not syncing: Failed to start userspace"]
    binary = modal_uml(tmp_path / "linux.uml", broken, PTRACE_BOOT, counter)
    verdict = lk.boot_check(Kernel("x", str(binary), str(tmp_path), "9.9.9", "fake"), cache=tmp_path / "c.json")
    assert verdict.ok and verdict.args == ()
    assert "in ptrace mode (seccomp mode: Kernel panic - not syncing: Failed to start userspace)" in verdict.detail
    assert [lk.SECCOMP_ARG in b for b in boots(counter)] == [True, False]


def test_a_kernel_without_seccomp_mode_is_booted_once_and_plainly(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lk.SECCOMP_ENV, raising=False)
    counter = tmp_path / "boots"
    old = ['Unknown kernel command line parameters "seccomp=on", will be passed to user space.', *PTRACE_BOOT]
    binary = modal_uml(tmp_path / "linux.uml", old, PTRACE_BOOT, counter)
    verdict = lk.boot_check(Kernel("x", str(binary), str(tmp_path), "9.9.9", "fake"), cache=tmp_path / "c.json")
    assert verdict.ok and verdict.args == () and len(boots(counter)) == 1
    # One that panics for another reason is not booted a second time either.
    counter.unlink()
    binary = modal_uml(tmp_path / "panics.uml", PANIC_CONSOLE, PANIC_CONSOLE, counter)
    verdict = lk.boot_check(Kernel("y", str(binary), str(tmp_path), "9.9.9", "fake"), cache=tmp_path / "c.json")
    assert not verdict.ok and "ptrace set fp regs failed" in verdict.detail and len(boots(counter)) == 1


def test_seccomp_off_boots_in_ptrace_mode_and_is_remembered_apart(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    counter, cache = tmp_path / "boots", tmp_path / "checks.json"
    binary = modal_uml(tmp_path / "linux.uml", SECCOMP_BOOT, PTRACE_BOOT, counter)
    kernel = Kernel("x", str(binary), str(tmp_path), "9.9.9", "fake")
    monkeypatch.setenv(lk.SECCOMP_ENV, "off")
    off = lk.boot_check(kernel, cache=cache)
    assert off.ok and off.args == () and lk.SECCOMP_ARG not in boots(counter)[0]
    monkeypatch.delenv(lk.SECCOMP_ENV)
    on = lk.boot_check(kernel, cache=cache)
    assert on.ok and not on.cached and on.args == (lk.SECCOMP_ARG,)


def test_every_guest_boots_with_what_the_check_found() -> None:
    kernel = Kernel("newest", "/k/linux.uml", "/k/modules/7.2.7", "7.2.7", "fake", args=(lk.SECCOMP_ARG,))
    argv = kernel.argv(mem="1G", init="/lib/systemd/systemd", root="/srv/root", extra=("WB_JOB=/j",))
    assert argv[0] == "/k/linux.uml" and argv[-2:] == ["WB_JOB=/j", lk.SECCOMP_ARG]
    assert {"mem=1G", "rootfstype=hostfs", "rootflags=/srv/root", "init=/lib/systemd/systemd", "rw"} <= set(argv)
    assert lk.SECCOMP_ARG not in dataclasses.replace(kernel, args=()).argv(mem="1G", init="/sbin/init")


def test_a_guest_runs_on_one_host_cpu_unless_told_otherwise() -> None:
    cpus = {0, 1, 2, 3}
    assert lk.guest_cpu({}, cpus) == 3
    assert lk.guest_cpu({"WB_LAB_CPU": "1"}, cpus) == 1
    assert lk.guest_cpu({"WB_LAB_CPU": "all"}, cpus) is None
    assert lk.guest_cpu({}, {5}) is None  # one CPU: nothing to choose
    with pytest.raises(SystemExit, match="expected 'all' or a CPU number"):
        lk.guest_cpu({"WB_LAB_CPU": "one"}, cpus)
    with pytest.raises(SystemExit, match=r"may use CPUs \[0, 1, 2, 3\] only"):
        lk.guest_cpu({"WB_LAB_CPU": "7"}, cpus)


def test_the_guests_host_processes_start_on_that_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real child, as the UML binary is started: its affinity is what it inherits.
    monkeypatch.delenv("WB_LAB_CPU", raising=False)
    allowed = sorted(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                         preexec_fn=lk.on_guest_cpu(), capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([max(allowed)] if len(allowed) > 1 else allowed)
    monkeypatch.setenv("WB_LAB_CPU", "all")
    assert lk.on_guest_cpu() is None
