"""Defaults and names that the command line, logging and the netlink edge
share with the configuration models, without loading pydantic: the paths,
the log levels, and the teql name rule.

`wanbalanced status` needs only the control socket's path; reading it here
keeps that command free of the models' cost (pydantic and building the
models are most of `check-config`'s time).
"""

from __future__ import annotations

import re
import tomllib
from typing import Literal, get_args

__all__ = ["DEFAULT_CONFIG", "DEFAULT_CONTROL_SOCKET", "DEFAULT_NETLINK_RCVBUF", "LOG_LEVELS", "TEQL_LIKE", "TEQL_NAME",
           "LogLevel", "check_socket_path", "control_socket", "is_teql_name", "teql_number"]

DEFAULT_CONFIG = "/etc/wanbalanced/config.toml"
DEFAULT_CONTROL_SOCKET = "/run/wanbalanced/control.sock"
DEFAULT_NETLINK_RCVBUF = 8 << 20
LogLevel = Literal["debug", "info", "notice", "warning", "error"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)  #: least severe first

#: The names sch_teql gives its devices: teql0, teql1, ... (no leading zero).
TEQL_NAME = re.compile(r"teql(0|[1-9][0-9]*)")
#: Names a slave may not have: anything that reads as a teql device.
TEQL_LIKE = re.compile(r"teql[0-9]+")


def teql_number(name: str) -> int | None:
    """N of teqlN, as sch_teql names its devices; None for any other name."""
    m = TEQL_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def is_teql_name(name: str) -> bool:
    """teqlN, as sch_teql names its devices."""
    return teql_number(name) is not None


def check_socket_path(v: str) -> str:
    """A control socket path: absolute and short enough for sun_path, or "" (off)."""
    if v and not v.startswith("/"):
        raise ValueError("must be an absolute path, or \"\" to disable")
    if len(v.encode()) > 107:
        raise ValueError("is longer than a unix socket path may be (107 bytes)")
    return v


def control_socket(config_path: str) -> str:
    """daemon.control_socket of the file at `config_path` ("" when it says "off").

    Only that key is read and checked, so a file that is being edited (and
    may be invalid elsewhere) still tells where the running daemon listens.
    Raises OSError if the file cannot be read, ValueError if it is not TOML or
    the key is not a valid path.
    """
    with open(config_path, "rb") as f:
        doc = tomllib.load(f)
    daemon = doc.get("daemon", {})
    value = daemon.get("control_socket", DEFAULT_CONTROL_SOCKET) if isinstance(daemon, dict) else None
    if not isinstance(value, str):
        raise ValueError("daemon.control_socket: must be a string")
    try:
        return check_socket_path(value)
    except ValueError as e:
        raise ValueError(f"daemon.control_socket: {e}") from None
