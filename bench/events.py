"""The suite's handle on the netlink observer process (guest side).

``bench/observe.py`` runs as its own process (real-time priority) and prints
the changes it sees; a thread here collects them. ``mark()`` then ``wait()``
finds the first event after a point that matches a predicate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import time


@dataclass(frozen=True)
class Event:
    t: float  #: time.monotonic() when the observer read it
    ev: str  #: carrier, qdisc, bond, team, team_port, overrun
    data: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.data.get(key)


Predicate = Callable[[Event], bool]


class Observer:
    def __init__(self, team: bool = False) -> None:
        argv = [sys.executable, "-m", "bench.observe"] + (["--team"] if team else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        first = self.proc.stdout.readline().strip()
        if first != "ready":
            raise RuntimeError(f"observer did not start: {first!r}")
        self.events: list[Event] = []
        self.overruns = 0
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            raw = json.loads(line)
            event = Event(float(raw.pop("t")), str(raw.pop("ev")), raw)
            with self._cond:
                if event.ev == "overrun":
                    self.overruns += 1
                self.events.append(event)
                self._cond.notify_all()

    def only(self, names: list[str] | None) -> None:
        """Report only these interfaces from now on (None: all). The filter
        runs before parsing, so an event storm on others costs little."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("only " + " ".join(names or []) + "\n")
        self.proc.stdin.flush()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait(self, pred: Predicate, since: int, timeout: float) -> Event | None:
        """The first event at index >= since matching pred, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = since
            while True:
                while i < len(self.events):
                    if pred(self.events[i]):
                        return self.events[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def since(self, since: int) -> list[Event]:
        with self._cond:
            return list(self.events[since:])

    def trim(self) -> None:
        """Forget past events (long runs); indexes from mark() are void after."""
        with self._cond:
            self.events.clear()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def carrier(name: str, up: bool) -> Predicate:
    return lambda e: e.ev == "carrier" and e.get("if") == name and e.get("up") is up


def reaction(obs: Observer, act: Callable[[], None], name: str, up: bool, answer: Predicate,
             timeout: float) -> float | None:
    """Run `act`, which sets `name`'s carrier to `up`, then wait for the
    kernel's carrier event and for the contender's `answer` to it. Returns the
    milliseconds between the two events, or None if either did not come
    within `timeout`."""
    mark = obs.mark()
    act()
    seen = obs.wait(carrier(name, up), mark, timeout)
    answered = obs.wait(answer, mark, timeout)
    if seen is None or answered is None:
        return None
    return (answered.t - seen.t) * 1e3
