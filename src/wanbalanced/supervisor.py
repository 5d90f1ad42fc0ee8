"""Supervision of the daemon's background tasks: the one place that sees one die.

A task that ends with an exception is logged with its traceback and then
recovered by its own `on_crash` (restart it, or ask the loop for a resync),
unless it has crashed `budget` times within `window` seconds: then the whole
daemon gives up (`on_fatal`), exits non-zero, and systemd restarts it. A task
that returns normally or is cancelled is simply forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .logs import fields

log = logging.getLogger(__name__)

Factory = Callable[[], Coroutine[Any, Any, None]]


class Supervisor:
    """Starts named tasks and watches them end."""

    def __init__(self, on_fatal: Callable[[str], None], *, budget: int = 5, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_fatal = on_fatal
        self.budget = budget
        self.window = window
        self.clock = clock
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.crashes: dict[str, list[float]] = {}  # name -> recent crash times
        self.fatal: str | None = None  # what gave up, once something has

    def start(self, name: str, factory: Factory, on_crash: Callable[[], None] | None = None) -> asyncio.Task[None]:
        """Run `factory()` as task `name` (cancelling one running under that
        name). After a crash, `on_crash` recovers; by default the task is
        started again."""
        self.cancel(name)
        task = asyncio.create_task(factory(), name=name)
        self.tasks[name] = task
        def restart() -> None:
            self.start(name, factory, on_crash)

        recover = on_crash if on_crash is not None else restart
        task.add_done_callback(lambda t: self._done(name, t, recover))
        return task

    def alive(self, name: str) -> bool:
        task = self.tasks.get(name)
        return task is not None and not task.done()

    def cancel(self, name: str) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def cancel_all(self) -> None:
        for name in list(self.tasks):
            self.cancel(name)

    def _done(self, name: str, task: asyncio.Task[None], recover: Callable[[], None]) -> None:
        if self.tasks.get(name) is task:
            del self.tasks[name]
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        now = self.clock()
        recent = [t for t in self.crashes.get(name, []) if now - t < self.window] + [now]
        self.crashes[name] = recent
        if len(recent) >= self.budget or self.fatal is not None:
            log.critical("task %s died %d times in %gs, last with %r: giving up, the daemon exits",
                         name, len(recent), self.window, error, exc_info=error,
                         extra=fields(event="error", reason=f"{name}: {error!r}"))
            self.fatal = self.fatal or name
            self.on_fatal(name)
            return
        log.error("task %s died with %r: recovering", name, error, exc_info=error,
                  extra=fields(event="error", reason=f"{name}: {error!r}"))
        recover()
