"""Defaults and names that the command line, logging and the netlink edge
share with the configuration models, without loading pydantic.

`wanbalanced status` needs only the control socket's path; reading it here
keeps that command free of the models' cost (pydantic and building the
models are most of `check-config`'s time).
"""

from __future__ import annotations

import tomllib
from typing import Literal, get_args

__all__ = ["DEFAULT_CONFIG", "DEFAULT_CONTROL_SOCKET", "DEFAULT_NETLINK_RCVBUF", "LOG_LEVELS", "LogLevel",
           "check_socket_path", "control_socket"]

DEFAULT_CONFIG = "/etc/wanbalanced/config.toml"
DEFAULT_CONTROL_SOCKET = "/run/wanbalanced/control.sock"
DEFAULT_NETLINK_RCVBUF = 8 << 20
LogLevel = Literal["debug", "info", "notice", "warning", "error"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)  #: least severe first


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
