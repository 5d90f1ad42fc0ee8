"""Command line: `wanbalanced run | check-config | plan`."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from . import __version__
from .config import Config, ConfigError, load_config

DEFAULT_CONFIG = "/etc/wanbalanced/config.toml"

# Exit statuses of `plan`, as documented.
PLAN_CONVERGED, PLAN_ERROR, PLAN_PENDING = 0, 1, 2


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    for name, eq in config.equalizers.items():
        print(f"{name}: slaves {', '.join(eq.slaves)}")
    print(f"{args.config}: OK")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from . import daemon, logs

    config = _load(args.config)
    if config is None:
        return 1
    logs.setup(args.log_level or config.daemon.log_level)
    try:
        return asyncio.run(daemon.run(config))
    except PermissionError as e:
        print(f"wanbalanced: {e}: run as root or with CAP_NET_ADMIN", file=sys.stderr)
        return 1


async def _plan(config: Config) -> int:
    from .core import Core
    from .netlink import Kernel

    kernel = Kernel()
    await kernel.open(listen=False)
    try:
        snap = await kernel.dump()
    finally:
        kernel.close()
    # Delays are ignored: the plan shows where the daemon is heading.
    core = Core(config, time.monotonic(), honour_delays=False)
    core.observe(snap, time.monotonic())
    plan = core.plan(snap)
    for action in plan.actions:
        print(action.command())
    for fault in plan.faults:
        print(f"wanbalanced: {fault.message}", file=sys.stderr)
    if plan.actions:
        return PLAN_PENDING
    return PLAN_ERROR if plan.faults else PLAN_CONVERGED


def cmd_plan(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return PLAN_ERROR
    try:
        return asyncio.run(_plan(config))
    except OSError as e:
        print(f"wanbalanced: cannot read the kernel state: {e}", file=sys.stderr)
        return PLAN_ERROR


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wanbalanced", description="Keeps a TEQL link equalizer healthy.")
    p.add_argument("--version", action="version", version=f"wanbalanced {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--log-level", choices=["debug", "info", "notice", "warning", "error"])
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate the configuration file")
    check.set_defaults(func=cmd_check_config)
    plan = sub.add_parser("plan", help="print the changes the daemon would make now; change nothing")
    plan.set_defaults(func=cmd_plan)
    for s in (run, check, plan):
        s.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
