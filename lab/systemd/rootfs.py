"""Host side: the Debian 12 root of the systemd guest, and a wheelhouse.

The root is built once with ``mmdebstrap`` (about 20 s, from Debian's package
registry) and cached under ``/var/cache/wanbalanced-lab`` (``$WB_LAB_CACHE``)
as ``rootfs-<key>``, where the key hashes everything the build depends on: the
suite, the package list, the UML kernel's version and this module's
``BUILD_VERSION``.  A later run, also from a fresh clone on the same machine,
reuses it.  The cached root is never booted itself: every boot gets an overlay
of it, or a copy where overlays cannot be mounted (``new_run_root``), so the
cache stays as built.

Building is atomic: mmdebstrap fills ``rootfs-<key>.tmp-<pid>``, the UML
modules are copied in, and only a complete root is renamed to its final name.
Builders take an exclusive ``flock`` on ``<cache>/lock``, so while one holds
it every ``*.tmp-*`` directory is the leftover of a builder that died: it is
removed.  A crash therefore never leaves a half-built root under a final name.

The guest has no network.  Python packages reach it through a *wheelhouse*
made here on the host (``ensure_wheelhouse``): a shell snippet, the README's
own ``pip download`` command, run in an empty directory, cached under
``wheelhouse-<key>`` the same way.

Only the standard library is used here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lab import kernel as lab_kernel
from lab.uml import lab_available

__all__ = [
    "BUILD_VERSION",
    "PACKAGES",
    "SUITE",
    "cache_dir",
    "ensure_root",
    "ensure_wheelhouse",
    "new_run_root",
    "remove_run_root",
    "root_key",
    "unavailable",
]

#: Bump when the build steps below change: it is part of the cache key.
BUILD_VERSION = 1

SUITE = "bookworm"

#: What the guest needs beyond minbase: systemd as PID 1 (with journald and
#: D-Bus), iproute2 and kmod (the topology, modprobe), Python with venv and
#: Debian's systemd-python (the README's install), Prometheus (server and
#: promtool), ping and ps for debugging.
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "kmod",
    "python3",
    "python3-venv",
    "python3-systemd",
    "prometheus",
    "iputils-ping",
    "procps",
)

DEFAULT_CACHE = Path("/var/cache/wanbalanced-lab")
CACHE_ENV = "WB_LAB_CACHE"

#: Written into every complete root (and wheelhouse): what it was built from.
STAMP = ".wanbalanced-lab.json"

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(f"lab-systemd: {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where roots, wheelhouses and per-boot roots live."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def unavailable() -> str | None:
    """None if a systemd guest can be built and booted here, else why not."""
    reason = lab_available()
    if reason is not None:
        return reason
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap not found (install Debian package mmdebstrap)"
    return None


def _uml_version() -> tuple[str, str, Path]:
    """(kernel release, where the kernel comes from, its modules directory)
    of the kernel the lab selected (``lab/kernel.py``): the root's
    ``/lib/modules`` must match the kernel that boots it."""
    chosen = lab_kernel.select().kernel
    return chosen.release, chosen.origin, Path(chosen.modules)


def root_key() -> str:
    """The cache key of the root: what it would be built from, hashed."""
    release, pkg, _ = _uml_version()
    recipe = {
        "build_version": BUILD_VERSION,
        "suite": SUITE,
        "packages": sorted(PACKAGES),
        "uml_release": release,
        "uml_package": pkg,
    }
    blob = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    top = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                point = line.split()[4].encode().decode("unicode_escape")
                if point == top or point.startswith(top + "/"):
                    found.append(point)
    except OSError:
        return []
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def _remove_tree(path: Path) -> None:
    # A builder killed in the middle of mmdebstrap can leave /proc, /sys or
    # /dev of the host bind-mounted inside its root: unmount them first, and
    # never let rm cross into another file system.
    for point in _mounts_under(path):
        subprocess.run(["umount", "--lazy", point], check=False)
    # Roots hold root-owned files, device nodes and read-only directories;
    # rm copes with all of them.
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _remove_stale_builds(cache: Path, log: Log) -> None:
    """Remove leftovers of builders that died (call with the lock held)."""
    for tmp in sorted(cache.glob("*.tmp-*")):
        log(f"removing a half-built leftover: {tmp}")
        _remove_tree(tmp)


def _run(argv: list[str], log: Log) -> None:
    log("$ " + " ".join(argv))
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)


def _build_root(tmp: Path, log: Log) -> None:
    release, pkg, mdir = _uml_version()
    _run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--include=" + ",".join(PACKAGES),
            "--format=directory",
            SUITE,
            str(tmp),
        ],
        log,
    )
    # The UML kernel's modules where kmod looks for them, so that
    # systemd-modules-load and modprobe work in the guest as on a router.
    # bookworm has a merged /usr: /lib is a relative link to usr/lib.
    modules = tmp / "usr" / "lib" / "modules" / release
    modules.parent.mkdir(parents=True, exist_ok=True)
    log(f"copying {mdir} to {modules}")
    shutil.copytree(mdir, modules, symlinks=True)
    _run(["chroot", str(tmp), "depmod", release], log)
    (tmp / STAMP).write_text(
        json.dumps(
            {
                "key": root_key(),
                "suite": SUITE,
                "packages": list(PACKAGES),
                "uml_release": release,
                "uml_package": pkg,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            indent=2,
        )
        + "\n"
    )


def ensure_root(*, rebuild: bool = False, log: Log = _log) -> Path:
    """The cached Debian root, built first if it is missing.

    Returns its path (``<cache>/rootfs-<key>``).  Raises RuntimeError if the
    lab cannot run here or the build fails.
    """
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(f"systemd lab not available: {reason}")
    if os.geteuid() != 0:
        raise RuntimeError("building the guest root needs root (mmdebstrap, chroot)")
    cache = cache_dir()
    final = cache / f"rootfs-{root_key()}"
    with lab_kernel.locked(cache):
        _remove_stale_builds(cache, log)
        if final.is_dir() and (final / STAMP).is_file() and not rebuild:
            return final
        tmp = cache / f"{final.name}.tmp-{os.getpid()}"
        start = time.monotonic()
        log(f"building the guest root {final} (Debian {SUITE}, mmdebstrap)")
        try:
            _build_root(tmp, log)
        except BaseException:
            _remove_tree(tmp)
            raise
        if final.exists():  # --rebuild, or a root without its stamp
            old = cache / f"{final.name}.tmp-old-{os.getpid()}"
            os.rename(final, old)
            _remove_tree(old)
        os.rename(tmp, final)
        log(f"built {final} in {time.monotonic() - start:.1f}s")
        return final


def ensure_wheelhouse(
    script: str,
    *,
    env: dict[str, str] | None = None,
    key_extra: str = "",
    log: Log = _log,
) -> Path:
    """A wheelhouse made by ``script`` (a shell snippet, run with ``sh -e``
    in an empty directory, that must create ``./wheelhouse``), cached under
    ``<cache>/wheelhouse-<key>``; the key hashes the script and ``key_extra``
    (e.g. the Python version it targets).

    Returns the wheelhouse directory.  Raises RuntimeError if the script
    fails or makes no wheelhouse.
    """
    cache = cache_dir()
    key = hashlib.sha256((script + "\0" + key_extra).encode()).hexdigest()[:16]
    final = cache / f"wheelhouse-{key}"
    with lab_kernel.locked(cache):
        _remove_stale_builds(cache, log)
        if final.is_dir() and (final / STAMP).is_file():
            return final
        tmp = cache / f"{final.name}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            log(f"making the wheelhouse {final}:\n{script.rstrip()}")
            proc = subprocess.run(
                ["sh", "-e", "-c", script],
                cwd=tmp,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                check=False,
            )
            made = tmp / "wheelhouse"
            if proc.returncode != 0 or not made.is_dir():
                raise RuntimeError(
                    f"the wheelhouse script failed (exit {proc.returncode})"
                    if proc.returncode
                    else "the wheelhouse script made no ./wheelhouse"
                )
            (made / STAMP).write_text(
                json.dumps({"script": script, "key_extra": key_extra}, indent=2) + "\n"
            )
            if final.exists():
                _remove_tree(final)
            os.rename(made, final)
        finally:
            _remove_tree(tmp)
        return final


# --------------------------------------------------------------------------
# per-boot roots


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_runs(runs: Path, log: Log) -> None:
    """Remove the roots of boots whose process is gone (call with the lock)."""
    for run in sorted(runs.iterdir()) if runs.is_dir() else []:
        if not run.is_dir():
            continue
        try:
            pid = int((run / "pid").read_text())
        except (OSError, ValueError):
            pid = 0
        if pid == 0 or not _pid_alive(pid):
            log(f"removing the root of a finished boot: {run}")
            _remove_tree(run)


def new_run_root(root: Path, *, log: Log = _log) -> Path:
    """A private, writable root for one boot, made from ``root``.

    An overlay mount (``root`` as its lower layer, the boot's writes in an
    upper directory next to it) when the host allows one: instant, and the
    cache cannot change.  Otherwise a copy (about 700 MB: 2 to 10 s).
    Returns the directory to boot; ``remove_run_root`` removes it, and roots
    left by processes that died are removed by the next call.
    """
    runs = root.parent / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    with lab_kernel.locked(root.parent):
        _remove_stale_runs(runs, log)
        run = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))
        (run / "pid").write_text(str(os.getpid()))
    merged = run / "root"
    try:
        for d in ("upper", "work", "root"):
            (run / d).mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={root},upperdir={run / 'upper'},workdir={run / 'work'}", str(merged)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
        )
        if mounted.returncode != 0:
            log(f"no overlay mount ({mounted.stderr.strip()}): copying the root")
            merged.rmdir()
            subprocess.run(["cp", "-a", "--reflink=auto", str(root), str(merged)],
                           check=True, stdin=subprocess.DEVNULL)
    except BaseException:
        _remove_tree(run)
        raise
    return merged


def remove_run_root(merged: Path) -> None:
    """Unmount and remove a root made by ``new_run_root``."""
    _remove_tree(merged.parent)
