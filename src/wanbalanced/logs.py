"""Logging with structured fields.

Records carry fields such as SLAVE, EQUALIZER, EVENT and REASON in `extra`
(upper-case, as journald wants them); on stderr they are appended as
`KEY=value` so a plain log stays greppable.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

#: The structured fields wanbalanced attaches to records.
FIELDS = ("EQUALIZER", "SLAVE", "EVENT", "REASON", "COMMAND")


def fields(**kw: object) -> dict[str, object]:
    """`extra=` for a log call: fields(slave="wan0") -> {"SLAVE": "wan0"}."""
    return {k.upper(): v for k, v in kw.items() if v is not None}


class FieldsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{k}={getattr(record, k)}" for k in FIELDS if k != "COMMAND" and hasattr(record, k)]
        return f"{line} [{' '.join(extra)}]" if extra else line


def setup(level: str, stream: TextIO = sys.stderr) -> None:
    """Route the package's logs to `stream` at `level`."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(FieldsFormatter("%(levelname)s %(message)s"))
    root = logging.getLogger("wanbalanced")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False
