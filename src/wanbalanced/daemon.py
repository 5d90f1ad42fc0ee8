"""The daemon loop: events in, core decisions out, kernel writes executed.

One task reads netlink events into a queue; the loop drains the queue into the
snapshot, lets the core observe and plan, and executes the plan. Timers (up and
down delays, retry back-off) are the loop's wait timeout, so nothing polls.
Signal handlers only set an intent; the loop acts on it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .actions import Action, Attach, Detach, SetRpFilter
from .config import Config
from .core import Core, Fault
from .logs import NOTICE, fields
from .netlink import Kernel, KernelError, Msg, apply_event, expect
from .observed import Snapshot
from .slave import Event, State, Transition

log = logging.getLogger(__name__)

_RESYNC = object()  # queued by the reader when the event socket lost messages
_STOP = object()
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
MAX_PASSES = 8  # plan/execute passes per wake-up; more means the kernel fights back


@dataclass
class _Backoff:
    until: float
    delay: float
    error: str


@dataclass
class Counters:
    """Per-slave counts of kernel changes actually made."""

    attaches: dict[str, int] = field(default_factory=dict)
    detaches: dict[str, int] = field(default_factory=dict)
    resyncs: int = 0


class Daemon:
    """Keeps the kernel converged on the configuration until told to stop."""

    def __init__(self, config: Config, kernel: Kernel | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.kernel = kernel or Kernel()
        self.clock = clock
        self.snap = Snapshot()
        self.core = Core(config, clock())
        self.counters = Counters()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._faults: dict[str, Fault] = {}
        self._backoff: dict[Action, _Backoff] = {}
        self._reader: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._queue.put_nowait, _STOP)
        await self.kernel.open()
        try:
            await self._resync()
            self._log_summary("converged")
            await self._loop()
        finally:
            if self._reader is not None:
                self._reader.cancel()
            self.kernel.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        # The data plane is left exactly as it is: a restart must not cut traffic.
        log.info("stopped; equalizers left as they are")
        return 0

    async def _resync(self) -> None:
        """Full dump and reconcile: at start and after lost events."""
        if self._reader is not None:
            self._reader.cancel()
        self._reader = asyncio.create_task(self._read_events())
        self.snap = await self.kernel.dump()
        self._drain()  # events that raced the dump are newer: apply them on top
        await self.reconcile(self.clock())

    async def _read_events(self) -> None:
        try:
            async for msg in self.kernel.events():
                self._queue.put_nowait(msg)
        except OSError as e:
            log.error("netlink events lost (%s): resubscribing and resyncing", e, extra=fields(event="resync"))
            self._queue.put_nowait(_RESYNC)

    async def _loop(self) -> None:
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), self._timeout())
            except asyncio.TimeoutError:
                item = None
            woke = self.clock()
            items = [item] if item is not None else []
            items.extend(self._take_queued())
            if _STOP in items:
                log.info("stopping on signal")
                return
            if _RESYNC in items:
                self.counters.resyncs += 1
                await self.kernel.resubscribe()
                await self._resync()
                continue
            for msg in items:
                apply_event(self.snap, msg)
            await self.reconcile(woke)

    def _take_queued(self) -> list[object]:
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def _drain(self) -> None:
        rest = []
        for item in self._take_queued():
            if item is _STOP or item is _RESYNC:
                rest.append(item)
            else:
                apply_event(self.snap, item)
        for item in rest:
            self._queue.put_nowait(item)

    def _timeout(self) -> float | None:
        deadlines = [b.until for b in self._backoff.values()]
        core_deadline = self.core.next_deadline()
        if core_deadline is not None:
            deadlines.append(core_deadline)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - self.clock())

    # -- one reconcile -------------------------------------------------------------

    async def reconcile(self, woke: float) -> None:
        """Observe, plan, execute; repeat while the plan makes progress."""
        for _ in range(MAX_PASSES):
            now = self.clock()
            self._log_transitions(self.core.observe(self.snap, now))
            plan = self.core.plan(self.snap)
            self._log_faults(plan.faults)
            runnable = [a for a in plan.actions if self._backoff.get(a, None) is None or self._backoff[a].until <= now]
            self._backoff = {a: b for a, b in self._backoff.items() if a in plan.actions}
            if not runnable:
                return
            progressed = False
            for action in runnable:
                progressed |= await self._execute(action, woke)
            if not progressed:
                return

    async def _execute(self, action: Action, woke: float) -> bool:
        slave = action.device if isinstance(action, (Attach, Detach, SetRpFilter)) else None
        eq = self.config.equalizer_of(action.device) if slave else action.device
        try:
            await self.kernel.execute(action)
        except KernelError as e:
            self._failed(action, e)
            return False
        took = (self.clock() - woke) * 1000
        expect(self.snap, action)
        self._backoff.pop(action, None)
        level, event = logging.INFO, "converge"
        if isinstance(action, Detach):
            level, event = logging.WARNING, "detach"
            self.counters.detaches[action.slave] = self.counters.detaches.get(action.slave, 0) + 1
        elif isinstance(action, Attach):
            level, event = NOTICE, "attach"
            self.counters.attaches[action.slave] = self.counters.attaches.get(action.slave, 0) + 1
        log.log(level, "%s: %s (%s; %.1f ms after the event)", action.device, action.command(), action.reason, took,
                extra=fields(equalizer=eq, slave=slave, event=event, reason=action.reason, command=action.command()))
        return True

    def _failed(self, action: Action, e: KernelError) -> None:
        if e.errno == errno.ENODEV:
            # Being deleted: the kernel downs a device (one RTM_NEWLINK) before
            # it unregisters it (RTM_DELLINK), so this races the deletion event.
            log.debug("%s: %s: device gone", action.device, action.command())
            return
        if isinstance(action, Attach) and e.errno in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP):
            transition, message = self.core.refused(action, e.errno, self.snap, self.clock())
            if transition is not None:
                self._log_transition(transition)
            log.error("%s", message, extra=fields(equalizer=action.equalizer, slave=action.slave,
                                                    event="refused", reason=message, command=action.command()))
            # Logged here with its cause; the plan's fault must not repeat it.
            key = f"refused:{action.slave}"
            self._faults[key] = Fault(key, action.slave, message)
            return
        old = self._backoff.get(action)
        delay = BACKOFF_FIRST if old is None else min(old.delay * 2, BACKOFF_MAX)
        self._backoff[action] = _Backoff(self.clock() + delay, delay, str(e))
        level = logging.ERROR if old is None or old.error != str(e) else logging.DEBUG
        log.log(level, "%s: %s failed: %s; retrying in %gs", action.device, action.command(), e.detail or e,
                delay, extra=fields(event="error", reason=str(e), command=action.command()))

    # -- logging -------------------------------------------------------------------

    def _log_transitions(self, transitions: list[Transition]) -> None:
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
            self._log_transition(t)
            i += 1

    def _log_transition(self, t: Transition) -> None:
        eq = self.config.equalizer_of(t.slave)
        level = logging.WARNING if t.new in (State.DOWN, State.DOWN_DELAY, State.ABSENT, State.REFUSED) else NOTICE
        if t.old is State.ABSENT and t.new is not State.UP:
            level = logging.INFO
        log.log(level, "%s: %s -> %s (%s)", t.slave, t.old.value, t.new.value, t.reason,
                extra=fields(equalizer=eq, slave=t.slave, event=t.event.value, reason=t.reason))

    def _log_faults(self, faults: tuple[Fault, ...]) -> None:
        now = {f.key: f for f in faults}
        for key, fault in now.items():
            if key not in self._faults:
                log.error("%s", fault.message, extra=fields(slave=fault.device, event="fault", reason=fault.message))
        for key, fault in self._faults.items():
            if key not in now:
                log.info("%s: resolved: %s", fault.device, fault.message, extra=fields(event="resolved"))
        self._faults = now

    def _log_summary(self, what: str) -> None:
        log.info("%s: %s", what, self.summary())

    def summary(self) -> str:
        """One line, e.g. "teql0: 2/2 slaves attached"."""
        parts = []
        for eq_name, eq in self.config.equalizers.items():
            n = sum(1 for s in eq.slaves if (l := self.snap.link(s)) is not None and l.attached_to(eq_name))
            parts.append(f"{eq_name}: {n}/{len(eq.slaves)} slaves attached")
        return "; ".join(parts)


async def run(config: Config) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the exit status."""
    return await Daemon(config).run()
