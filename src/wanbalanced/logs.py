"""Logging with structured fields.

Records carry fields such as SLAVE, EQUALIZER, EVENT and REASON in `extra`
(upper-case, as journald wants them); on stderr they are appended as
`KEY=value` so a plain log stays greppable.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

from .defaults import LOG_LEVELS

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

#: The configurable names (config.LOG_LEVELS, least severe first) -> logging levels.
LEVELS = dict(zip(LOG_LEVELS, (logging.DEBUG, logging.INFO, NOTICE, logging.WARNING, logging.ERROR), strict=True))

#: The structured fields wanbalanced attaches to records.
FIELDS = ("EQUALIZER", "SLAVE", "EVENT", "FAULT", "REASON", "COMMAND")


def fields(**kw: object) -> dict[str, object]:
    """`extra=` for a log call: fields(slave="wan0") -> {"SLAVE": "wan0"}."""
    return {k.upper(): v for k, v in kw.items() if v is not None}


class FieldsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{k}={getattr(record, k)}" for k in FIELDS if k != "COMMAND" and hasattr(record, k)]
        return f"{line} [{' '.join(extra)}]" if extra else line


def under_journald(stream: TextIO = sys.stderr) -> bool:
    """True when `stream` is connected to journald (systemd sets JOURNAL_STREAM
    to the device and inode of the stream it gave us)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def journal_handler() -> logging.Handler | None:
    """A native journald handler with NOTICE mapped to priority 5."""
    try:
        from systemd.journal import JournalHandler
    except ImportError:  # pragma: no cover - systemd-python is a dependency
        return None

    class Handler(JournalHandler):  # type: ignore[misc]
        @staticmethod
        def map_priority(levelno: int) -> Any:
            # Python has no NOTICE; the stock mapping would make it a warning.
            return 5 if levelno == NOTICE else JournalHandler.map_priority(levelno)

    return Handler(SYSLOG_IDENTIFIER="wanbalanced")


def setup(level: str, stream: TextIO = sys.stderr, journal: bool | None = None) -> str:
    """Route the package's logs to journald (when it is our stderr) or to
    `stream`, at `level`. Returns "journal" or "stderr"."""
    handler: logging.Handler | None = None
    if journal if journal is not None else under_journald(stream):
        handler = journal_handler()
    where = "journal" if handler is not None else "stderr"
    if handler is None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(FieldsFormatter("%(levelname)s %(message)s"))
    root = logging.getLogger("wanbalanced")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False
    return where


def set_level(level: str) -> None:
    logging.getLogger("wanbalanced").setLevel(LEVELS[level])
