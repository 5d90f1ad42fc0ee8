"""Command line: `wanbalanced run | check-config | plan`."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .defaults import DEFAULT_CONFIG, LOG_LEVELS, control_socket
from .defaults import DEFAULT_CONTROL_SOCKET as DEFAULT_SOCKET

if TYPE_CHECKING:
    from .config import Config

# Exit statuses of `plan`, as documented.
PLAN_CONVERGED, PLAN_ERROR, PLAN_PENDING = 0, 1, 2
# Exit statuses of `status` beside 0, as LSB init scripts use them: not
# running, and running but its status not known yet.
STATUS_NO_DAEMON, STATUS_STARTING = 3, 4


def _load(path: str, secure: bool = False) -> Config | None:
    # Here, not at the top: `status` needs no models (pydantic is most of a command's start).
    from .config import ConfigError, load_config

    try:
        return load_config(path, secure)
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
    import asyncio  # here, not at the top: check-config and status need no event loop

    from . import daemon, logs

    # A reload request before the loop can take it must not kill the daemon
    # (SIGHUP's default): held pending until daemon.run handles it. The entry
    # point (__main__) blocks it much earlier; this covers other callers.
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        secure = not args.allow_insecure_config
        config = _load(args.config, secure)
        if config is None:
            return 1
        logs.setup(args.log_level or config.daemon.log_level)
        try:
            return asyncio.run(daemon.run(config, args.config, secure, args.log_level))
        except PermissionError as e:
            print(f"wanbalanced: {e}: run as root or with CAP_NET_ADMIN", file=sys.stderr)
            return 1
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


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
    import asyncio

    config = _load(args.config)
    if config is None:
        return PLAN_ERROR
    try:
        return asyncio.run(_plan(config))
    except OSError as e:
        print(f"wanbalanced: cannot read the kernel state: {e}", file=sys.stderr)
        return PLAN_ERROR


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s >= 86400:
        return f"{s // 86400}d ago"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m ago"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s ago"
    return f"{s}s ago"


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from .status import ControlError, query, starting

    path = args.socket
    if path is None:
        # The config only says where the socket is; a missing default file is fine.
        try:
            path = control_socket(args.config) or DEFAULT_SOCKET
        except (OSError, ValueError) as e:
            if args.config_given:
                print(f"{args.config}: {e.strerror if isinstance(e, OSError) else e}", file=sys.stderr)
                return 1
            path = DEFAULT_SOCKET
    try:
        answer = query(path)
    except ControlError as e:
        print(f"wanbalanced status: {e}", file=sys.stderr)
        return STATUS_NO_DAEMON  # as `systemctl status` does for a unit that is not running
    if args.json:
        print(json.dumps(answer, indent=2))
        return STATUS_STARTING if starting(answer) else 0
    if starting(answer):
        print(f"wanbalanced status: the daemon (pid {answer.get('pid')}) is starting: no status yet",
              file=sys.stderr)
        return STATUS_STARTING
    now = time.time()
    rows = [("EQUALIZER", "SLAVE", "STATE", "CARRIER", "ATTACHED", "SINCE", "DETACHES", "LAST REASON")]
    for s in answer["slaves"]:
        rows.append((s["equalizer"], s["slave"], s["state"], "yes" if s["carrier"] else "no",
                     "yes" if s["attached"] else "no",
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["since"])) + f" ({_ago(now - s['since'])})",
                     str(s["detaches"]), s["reason"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    for eq in answer["equalizers"]:
        route = "default route via it" if eq["default_route"] else "no default route"
        mtu = f", MTU {eq['mtu']} ({eq['mtu_reason']})" if eq.get("exists") else ""
        print(f"{eq['equalizer']}: {eq['attached']}/{eq['configured']} slaves attached, {route}{mtu}")
    for f in answer["faults"]:
        print(f"fault: {f['message']}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wanbalanced", description="Keeps a TEQL link equalizer healthy.")
    p.add_argument("--version", action="version", version=f"wanbalanced {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--log-level", choices=LOG_LEVELS)
    run.add_argument("--allow-insecure-config", action="store_true",
                     help="accept a config file that others than root may write (not recommended)")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate the configuration file")
    check.set_defaults(func=cmd_check_config)
    plan = sub.add_parser("plan", help="print the changes the daemon would make now; change nothing")
    plan.set_defaults(func=cmd_plan)
    status = sub.add_parser("status", help="ask the running daemon for the state of every slave")
    status.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    status.add_argument("--socket", help=f"control socket (default: the config's daemon.control_socket, "
                                         f"else {DEFAULT_SOCKET})")
    status.set_defaults(func=cmd_status)
    for s in (run, check, plan, status):
        s.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # `status` reads the config only to find the socket, and only if asked to.
    args.config_given = any(a in ("--config", "-c") or a.startswith("--config=") for a in (argv or sys.argv[1:]))
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
