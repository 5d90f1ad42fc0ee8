"""``python -m lab.systemd``: build the cached root, or run a command in a
booted systemd guest.

    python -m lab.systemd build [--rebuild]
    python -m lab.systemd run [--timeout S] [--mem M] [--mount HOST:GUEST[:rw]]...
                              [--cwd DIR] [--env KEY=VALUE]... [--keep-root] -- COMMAND...
    python -m lab.systemd path

``run`` mounts the checkout read-only at /mnt/wanbalanced, keeps the results
(console log, journal, output) in ``.lab/systemd-run/`` of the checkout and
exits with the command's exit status (125 if the guest reported none).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lab.systemd.boot import Mount, run_job
from lab.systemd.rootfs import cache_dir, ensure_root, root_key, unavailable
from lab.uml import NO_RC, REPO, command_line


def _mount(spec: str) -> Mount:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("rw", "ro")):
        raise argparse.ArgumentTypeError(f"expected HOST:GUEST[:rw], got {spec!r}")
    return Mount(Path(parts[0]), parts[1], writable=len(parts) == 3 and parts[2] == "rw")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.systemd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    build = sub.add_parser("build", help="build the Debian root if it is not cached")
    build.add_argument("--rebuild", action="store_true", help="build it even if cached")
    sub.add_parser("path", help="print where the root is (or would be) cached")
    run = sub.add_parser("run", help="boot the guest and run a command in it")
    run.add_argument("--timeout", type=float, default=300.0)
    run.add_argument("--mem", default="1G")
    run.add_argument("--cwd", default="/mnt/wanbalanced")
    run.add_argument("--mount", type=_mount, action="append", default=[])
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--keep-root", action="store_true",
                     help="keep the guest's root for inspection (the next run removes it)")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.cmd == "path":
        print(cache_dir() / f"rootfs-{root_key()}")
        return 0
    reason = unavailable()
    if reason is not None:
        print(f"systemd lab not available: {reason}", file=sys.stderr)
        return NO_RC
    start = time.monotonic()
    try:
        root = ensure_root(rebuild=bool(getattr(args, "rebuild", False)))
    except (RuntimeError, OSError) as exc:
        print(f"lab-systemd: {exc}", file=sys.stderr)
        return NO_RC
    if args.cmd == "build":
        print(f"{root} ({time.monotonic() - start:.1f}s)")
        return 0

    command, env = command_line(parser, list(args.command), list(args.env))
    mounts = [Mount(REPO, "/mnt/wanbalanced"), *args.mount]
    result = run_job(
        root, command, results=REPO / ".lab" / "systemd-run", mounts=mounts,
        cwd=str(args.cwd), env=env, mem=str(args.mem), timeout=float(args.timeout),
        keep_root=bool(args.keep_root),
    )
    print(f"lab-systemd: rc={result.rc}, guest ran {result.seconds:.1f}s"
          f" (driver started after {result.driver_seconds or 0:.1f}s);"
          f" results in {result.results}"
          + (f"; its root: {result.run_root}" if result.run_root else ""), file=sys.stderr)
    return result.rc


if __name__ == "__main__":
    sys.exit(main())
