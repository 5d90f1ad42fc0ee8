"""How the daemon tells the operator what happened: one log record per state
change, kernel write and fault, with structured fields and a fitting priority
(a detach is a warning, a re-slave a notice, a kernel refusal an error)."""

from __future__ import annotations

import logging

from .actions import Action, Attach
from .config import Config
from .core import Fault
from .logs import NOTICE, fields
from .slave import Event, State, Transition

log = logging.getLogger("wanbalanced.daemon")

# A write's priority, by its EVENT: the ones an operator should notice stand out.
_WRITE_LEVELS = {"drift": logging.WARNING, "detach": logging.WARNING, "attach": NOTICE}

_GOING_DOWN = (State.DOWN, State.DOWN_DELAY, State.ABSENT, State.REFUSED, State.FAILED, State.HELD_DOWN)


class Reporter:
    """Logs transitions, writes and faults; remembers faults to log each once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.faults: dict[str, Fault] = {}
        self._held: list[Transition] = []

    def hold(self, transitions: list[Transition]) -> None:
        """Log these transitions after the write that follows them: a line is
        taken out first, and said to be down a moment later, in that order."""
        self._held.extend(transitions)

    def flush(self) -> None:
        """Log the transitions held, if any."""
        if self._held:
            held, self._held = self._held, []
            self.transitions(held)

    def transitions(self, transitions: list[Transition]) -> None:
        """Log each transition; a zero delay's pair (up -> down_delay -> down)
        reads as one step."""
        i = 0
        while i < len(transitions):
            t = transitions[i]
            nxt = transitions[i + 1] if i + 1 < len(transitions) else None
            if (nxt is not None and nxt.slave == t.slave and nxt.event is Event.TIMER
                    and t.new in (State.UP_DELAY, State.DOWN_DELAY) and nxt.reason == t.reason):
                t = Transition(t.slave, t.old, nxt.new, t.event, t.reason)
                i += 1
            self.transition(t)
            i += 1

    def transition(self, t: Transition) -> None:
        self.flush()
        level = logging.WARNING if t.new in _GOING_DOWN else NOTICE
        if t.event is Event.REUSE:
            level = NOTICE  # released from a hold-down: on its way back
        elif t.old is State.ABSENT and t.new is not State.UP:
            level = logging.INFO
        log.log(level, "%s: %s -> %s (%s)", t.slave, t.old.value, t.new.value, t.reason,
                extra=fields(equalizer=self.config.equalizer_of(t.slave), slave=t.slave,
                             event=t.event.value, reason=t.reason))

    def _where(self, device: str) -> dict[str, object]:
        """EQUALIZER and SLAVE fields for a device, whichever it is."""
        eq = self.config.equalizer_of(device)
        return {"equalizer": eq, "slave": device} if eq is not None else {"equalizer": device}

    def write(self, action: Action, took_ms: float | None) -> None:
        """A kernel write that succeeded, as its equivalent command."""
        self.flush()
        event = "drift" if action.drift is not None else action.event
        when = f"; {took_ms:.1f} ms after the event" if took_ms is not None else ""
        log.log(_WRITE_LEVELS.get(event, logging.INFO), "%s: %s (%s%s)", action.device, action.command(),
                action.why, when, extra=fields(**self._where(action.device), event=event, reason=action.why,
                                                command=action.command()))

    def refused(self, action: Attach, message: str) -> None:
        self.flush()
        log.error("%s", message, extra=fields(equalizer=action.equalizer, slave=action.slave, event="refused",
                                              fault="refused", reason=message, command=action.command()))
        # Logged here with its cause; the plan's fault must not repeat it.
        fault = Fault("refused", action.slave, message)
        self.faults[fault.key] = fault

    def failed(self, action: Action, error: str, retry_in: float, first: bool) -> None:
        self.flush()
        log.log(logging.ERROR if first else logging.DEBUG, "%s: %s failed: %s; retrying in %gs",
                action.device, action.command(), error, retry_in,
                extra=fields(**self._where(action.device), event="error", reason=error, command=action.command()))

    def update_faults(self, faults: tuple[Fault, ...]) -> None:
        now = {f.key: f for f in faults}
        for key, fault in now.items():
            if key not in self.faults and not fault.logged:
                log.error("%s", fault.message, extra=fields(**self._where(fault.device), event="fault",
                                                            fault=fault.kind, reason=fault.message))
        for key, fault in self.faults.items():
            if key not in now:
                log.info("%s: resolved: %s", fault.device, fault.message,
                         extra=fields(**self._where(fault.device), event="resolved", fault=fault.kind))
        self.faults = now
