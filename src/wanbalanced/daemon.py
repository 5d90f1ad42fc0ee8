"""The daemon loop: events in, core decisions out, kernel writes executed.

One task reads netlink events into a queue; the loop drains the queue into the
snapshot, lets the core observe and plan, and executes the plan. Timers (up and
down delays, retry back-off) are the loop's wait timeout, so nothing polls;
only link counters are refreshed by a periodic dump, for the metrics. Signal
handlers only queue an intent (stop, reload); the loop acts on it.

Every background task runs under the `Supervisor`: one that dies is logged and
recovered, or the daemon exits non-zero for systemd to restart it. The
watchdog is pinged by the loop itself, and only while the event reader lives,
so a loop stuck in an await or a dead reader stops the pings.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import __version__, status
from .actions import Action, Attach
from .config import Config, ConfigError, load_config
from .core import Core, Fault
from .logs import fields, set_level
from .metrics import FAILOVER_EVENTS, Metrics
from .netlink import Kernel, KernelError, apply_event, expect
from .notify import Notifier
from .observed import Link, Snapshot
from .probing import ProbeManager, probed_series
from .report import Reporter
from .supervisor import Supervisor

log = logging.getLogger(__name__)


class Intent(enum.Enum):
    """What the loop is asked to do, queued beside the netlink events by
    signal handlers, ticks, probers and the supervisor."""

    STOP = "stop"  # SIGTERM, SIGINT: return 0
    RELOAD = "reload"  # SIGHUP: re-read the file
    RESYNC = "resync"  # events were lost: resubscribe, dump, reconcile
    REFRESH = "refresh"  # dump the links for fresh counters
    VERDICT = "verdict"  # a prober's verdict flipped: reconcile
    RECONCILE = "reconcile"  # the safety net: dump and reconcile, keep the socket
    PING = "ping"  # the watchdog tick
    FATAL = "fatal"  # a task gave up: return 1


class Event(Protocol):
    """A decoded netlink message as the edge hands it out (a pyroute2 nlmsg),
    for netlink.apply_event."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def get_attr(self, attr: str, default: Any = None) -> Any: ...


Item = Intent | Event  # what the loop's queue holds


class KernelEdge(Protocol):
    """What the daemon needs of the kernel: netlink.Kernel, or a fake of it."""

    async def open(self) -> None:
        """Open the sockets, subscribed to the events."""

    async def resubscribe(self) -> None:
        """A new event socket, after events were lost."""

    def close(self) -> None: ...

    async def dump(self, route_tables: Collection[int]) -> Snapshot:
        """A full snapshot, with the default routes of `route_tables`."""

    async def dump_links(self) -> list[Link]:
        """Every link, with fresh counters."""

    def events(self) -> AsyncIterator[Event]:
        """Every event, forever; OSError when some were lost."""

    async def barrier(self, timeout: float) -> bool:
        """True once `events` has handed on all the kernel had announced when
        this was called; False if not seen within `timeout` seconds."""

    async def execute(self, action: Action) -> None:
        """One action; netlink.KernelError with the kernel's errno."""


READER = "netlink events"
# Decoded events waiting for the loop; more means the loop cannot keep up, and
# the queue is then treated like lost events (resubscribe and resync).
MAX_QUEUED_EVENTS = 20_000
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
MAX_PASSES = 8  # plan/execute passes per wake-up; more means the kernel fights back
# After our writes, how long the loop waits for the event reader to reach the
# barrier behind their announcements (Kernel.barrier): a round trip to the
# kernel, or the few milliseconds until it announces an IPv6 address; more
# only if an announcement never comes, and then the plan goes ahead as before.
BARRIER_TIMEOUT = 0.5


@dataclass
class _Backoff:
    until: float
    delay: float
    error: str
    #: A quiet retry after an error its action calls transient: the next
    #: failure is logged as the first and backs off from BACKOFF_FIRST.
    quiet: bool = False


@dataclass
class Counters:
    """Counts of what the daemon did, for the status and the metrics."""

    # Kernel writes done, by the action's event and device: ("attach", "wan0"),
    # ("mtu", "teql0"), ... An action counts itself; nothing here names it.
    done: dict[tuple[str, str], int] = field(default_factory=dict)
    resyncs: int = 0
    drift: dict[str, int] = field(default_factory=dict)  # repairs by kind
    reload_successful: bool = True
    reload_success_time: float = field(default_factory=time.time)


class Daemon:
    """Keeps the kernel converged on the configuration until told to stop."""

    def __init__(self, config: Config, kernel: KernelEdge | None = None, *, config_path: str | None = None,
                 secure_config: bool = False, log_level: str | None = None,
                 clock: Callable[[], float] = time.monotonic, notifier: Notifier | None = None) -> None:
        self.config = config
        self.log_level = log_level  # --log-level wins over the file, also after a reload
        self.config_path = config_path
        self.secure_config = secure_config
        self.kernel: KernelEdge = kernel or Kernel(rcvbuf=config.daemon.netlink_rcvbuf)
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.snap = Snapshot()
        self.core = Core(config, clock())
        self.counters = Counters()
        self.report = Reporter(config)
        self.status: status.Status | None = None  # replaced whole; read by other threads
        self.metrics = Metrics(lambda: self.status)
        self.probes = ProbeManager(
            lambda: self.core, on_flip=lambda _slave: self._queue.put_nowait(Intent.VERDICT),
            on_rtt=lambda slave, target, rtt: self.metrics.probe_rtt.observe((slave, target), rtt),
        )
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._backoff: dict[Action, _Backoff] = {}
        self.supervisor = Supervisor(lambda _name: self._queue.put_nowait(Intent.FATAL))
        self.malformed_events = 0
        self.overflows = 0

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        control = None
        if self.config.daemon.control_socket:
            try:
                control = await status.serve(self.config.daemon.control_socket, lambda: self.status)
            except status.AlreadyRunning as e:
                log.error("%s: not starting a second daemon on the same equalizers", e)
                return 1
        signals = {signal.SIGTERM: Intent.STOP, signal.SIGINT: Intent.STOP, signal.SIGHUP: Intent.RELOAD}
        for sig, intent in signals.items():
            loop.add_signal_handler(sig, self._queue.put_nowait, intent)
        # The entry point blocked SIGHUP until now: one sent during start-up
        # is delivered here and becomes a reload, not lost and not fatal.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        try:
            self.metrics.serve(self.config.daemon.metrics_listen)
        except OSError as e:
            log.error("metrics endpoint %s: %s; running without metrics", self.config.daemon.metrics_listen, e)
        await self.kernel.open()
        code = 0
        try:
            interval = self.notifier.watchdog_interval()
            if interval is not None:
                self.notifier.ping()  # the first resync may take a while
                self._start_tick("watchdog", interval, Intent.PING)
            await self._resync()
            self._start_tick("stats refresh", self.config.daemon.stats_interval, Intent.REFRESH)
            if self.config.daemon.reconcile_interval:
                self._start_tick("safety-net reconcile", self.config.daemon.reconcile_interval, Intent.RECONCILE)
            log.info("converged: %s", self._publish())
            self.notifier.ready(self._publish())
            code = await self._loop()
        except Exception as e:  # noqa: BLE001 - logged, then systemd restarts us
            log.critical("the daemon loop failed: %r; exiting", e, exc_info=e,
                         extra=fields(event="error", reason=repr(e)))
            code = 1
        finally:
            self.notifier.stopping()
            self.probes.stop_all()
            self.supervisor.cancel_all()
            if control is not None:
                control.close()
            self.metrics.close()
            self.kernel.close()
            # Held again, so that a late reload request cannot kill the exit.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
            for sig in signals:
                loop.remove_signal_handler(sig)
        # The data plane is left exactly as it is: a restart must not cut traffic.
        log.info("stopped; equalizers left as they are")
        return code

    def _start_tick(self, name: str, interval: float, intent: Intent) -> None:
        self.supervisor.start(name, lambda: self._tick(interval, intent))

    def _start_reader(self) -> None:
        # Events may have been lost with a crashed reader: resync, which
        # starts a new one on a new socket.
        self.supervisor.start(READER, self._read_events, on_crash=lambda: self._queue.put_nowait(Intent.RESYNC))

    def watchdog_ok(self) -> bool:
        """Whether to ping the watchdog now: the loop is running (it asks) and
        the event reader is alive."""
        return self.supervisor.alive(READER)

    async def _resync(self, restart_reader: bool = True) -> None:
        """Full dump and reconcile: at start, after lost events, and now and
        then as a safety net (then the event socket is kept)."""
        if restart_reader:
            self._start_reader()
        self.snap = await self.kernel.dump(route_tables(self.config))
        # Events queued since the subscription are applied on top: each carries
        # a whole object, so replaying ones the dump already saw is harmless.
        intents = []
        for item in self._take_queued():
            if isinstance(item, Intent):
                intents.append(item)
            else:
                self._apply(item)
        for intent in intents:
            self._queue.put_nowait(intent)
        await self.reconcile(None)

    def _apply(self, msg: Event) -> None:
        """One event into the snapshot; one the edge cannot make sense of is
        logged and dropped, never allowed to stop the loop."""
        try:
            apply_event(self.snap, msg)
        except Exception as e:  # noqa: BLE001 - malformed input, not a bug of ours to die of
            self.malformed_events += 1
            log.warning("netlink event dropped, it cannot be applied: %r (%s)", e,
                        getattr(msg, "get", lambda _k: None)("event"), extra=fields(event="error", reason=repr(e)))

    async def _read_events(self) -> None:
        try:
            async for msg in self.kernel.events():
                if self._queue.qsize() >= MAX_QUEUED_EVENTS:
                    self.overflows += 1
                    log.error("netlink event queue full (%d): treating it as lost events, resyncing",
                              MAX_QUEUED_EVENTS, extra=fields(event="resync"))
                    self._queue.put_nowait(Intent.RESYNC)
                    return
                self._queue.put_nowait(msg)
        except OSError as e:
            log.error("netlink events lost (%s): resubscribing and resyncing", e, extra=fields(event="resync"))
            self._queue.put_nowait(Intent.RESYNC)

    async def _tick(self, interval: float, intent: Intent) -> None:
        while True:
            await asyncio.sleep(interval)
            self._queue.put_nowait(intent)

    async def _loop(self) -> int:
        """Until told to stop (returns 0) or a task gave up (returns 1)."""
        while True:
            try:
                # Not wait_for, which runs the get in a task of its own: the
                # loop would wake turns after the event was queued, and in the
                # lab's guest every turn is system calls.
                async with asyncio.timeout(self._timeout()):
                    first = await self._queue.get()
                items = [first, *self._take_queued()]
            except TimeoutError:
                items = []  # a delay or a back-off ran out
            woke = self.clock()
            intents = {i for i in items if isinstance(i, Intent)}
            if Intent.STOP in intents:
                log.info("stopping on signal")
                return 0
            if Intent.FATAL in intents:
                return 1
            if Intent.PING in intents:
                if self.watchdog_ok():
                    self.notifier.ping()
                if len(items) == 1:
                    continue  # nothing else to do: no reconcile for a ping
            if Intent.RESYNC in intents:
                self.counters.resyncs += 1
                # Queued events predate the new subscription: the dump supersedes them.
                for intent in [i for i in self._take_queued() if isinstance(i, Intent)]:
                    self._queue.put_nowait(intent)
                self.supervisor.cancel(READER)
                await self.kernel.resubscribe()
                await self._resync()
            elif Intent.RECONCILE in intents:
                await self._resync(restart_reader=False)
            else:
                for msg in items:
                    if not isinstance(msg, Intent):
                        self._apply(msg)
                if Intent.REFRESH in intents:
                    for link in await self.kernel.dump_links():
                        self.snap.put_link(link)
                await self.reconcile(woke)
            if Intent.RELOAD in intents:
                await self.reload()
            self.notifier.status(self._publish())

    def _take_queued(self) -> list[Item]:
        out: list[Item] = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def _timeout(self) -> float | None:
        deadlines = [b.until for b in self._backoff.values()]
        core_deadline = self.core.next_deadline()
        if core_deadline is not None:
            deadlines.append(core_deadline)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - self.clock())

    def _publish(self) -> str:
        """Build and publish the status; return its one-line summary."""
        self.status = status.build(
            self.config, self.core, self.snap, version=__version__, done=dict(self.counters.done),
            faults=tuple(self.report.faults.values()),
            reload_successful=self.counters.reload_successful,
            reload_success_time=self.counters.reload_success_time, resyncs=self.counters.resyncs,
            probes={key: (c.sent, c.lost) for key, c in self.probes.counts.items()},
            drift=dict(self.counters.drift),
            mono_now=self.clock(), wall_now=time.time(),
        )
        return self.status.summary()

    # -- reload ------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the configuration file. A bad file changes nothing."""
        if self.config_path is None:
            return False
        self.notifier.reloading()
        try:
            new = load_config(self.config_path, self.secure_config)
        except ConfigError as e:
            self.counters.reload_successful = False
            problems = "; ".join(f"{p.path}: {p.message}" if p.path else p.message for p in e.problems)
            log.error("reload failed, keeping the running configuration: %s", problems,
                      extra=fields(event="reload", reason=problems))
            self.notifier.ready(self._publish())
            return False
        try:
            # Rehearse on a throwaway core: whatever fails must fail before the
            # running configuration is touched, never halfway through.
            trial = Core(new, self.clock())
            trial.observe(self.snap, self.clock())
            trial.plan(self.snap)
        except Exception as e:  # noqa: BLE001 - any failure means: keep the old config
            self.counters.reload_successful = False
            log.error("reload failed, keeping the running configuration: cannot apply it: %r", e,
                      extra=fields(event="reload", reason=repr(e)))
            self.notifier.ready(self._publish())
            return False
        old = self.config
        for key in ("metrics_listen", "control_socket"):
            if getattr(old.daemon, key) != getattr(new.daemon, key):
                log.warning("daemon.%s changed: takes effect at the next restart", key, extra=fields(event="reload"))
        cleanup = self.core.reconfigure(new, self.snap, self.clock())
        self.config = self.report.config = new
        set_level(self.log_level or new.daemon.log_level)
        for action in cleanup:
            await self._execute(action, None)
        if route_tables(new) != route_tables(old):
            # Only the default routes of the configured tables are dumped: a
            # new table's must be known before ours may replace one there.
            await self._resync(restart_reader=False)
        else:
            await self.reconcile(None)  # also stops the probers of removed slaves and targets
        # Series of slaves and targets no longer in the file go, rather than
        # being exported frozen forever.
        kept = probed_series(self.core)
        self.probes.keep(kept)
        self.metrics.probe_rtt.keep(kept)
        self.counters.reload_successful, self.counters.reload_success_time = True, time.time()
        before = {s for eq in old.equalizers.values() for s in eq.slaves}
        after = {s for eq in new.equalizers.values() for s in eq.slaves}
        change = f"added {sorted(after - before) or 'none'}, removed {sorted(before - after) or 'none'}"
        log.info("reloaded %s: slaves %s", self.config_path, change, extra=fields(event="reload", reason=change))
        self.notifier.ready(self._publish())
        return True

    # -- one reconcile -------------------------------------------------------------

    async def reconcile(self, woke: float | None) -> None:
        """Observe, plan, execute; repeat while the plan makes progress.

        `woke` is when the loop woke for what caused this pass (a kernel event,
        or a delay running out), to measure failover latency; None at start-up,
        on reload and on resync, where no single cause exists."""
        try:
            wrote = await self._passes(woke)
        finally:
            self.probes.sync(self.snap)
        if wrote:
            await self._catch_up()

    async def _passes(self, woke: float | None) -> bool:
        """Up to MAX_PASSES of observe, plan, execute; whether any write was done."""
        wrote = False
        try:
            for _ in range(MAX_PASSES):
                now = self.clock()
                # Logged once the pass's first write is done (Reporter.hold).
                self.report.hold(self.core.observe(self.snap, now))
                plan = self.core.plan(self.snap)
                self._backoff = {a: b for a, b in self._backoff.items() if a in plan.actions}
                self.report.update_faults(plan.faults + self._write_faults())
                runnable = [a for a in plan.actions if a not in self._backoff or self._backoff[a].until <= now]
                if not plan.actions:
                    self.core.settle(self.snap)
                if not runnable:
                    return wrote
                progressed = False
                for action in runnable:
                    done = await self._execute(action, woke)
                    if done and action.key in plan.drift:
                        self.counters.drift[action.kind] = self.counters.drift.get(action.kind, 0) + 1
                    progressed |= done
                wrote |= progressed
                if not progressed:
                    return wrote
            return wrote
        finally:
            self.report.flush()

    def _write_faults(self) -> tuple[Fault, ...]:
        """A fault per device with a write in back-off (a quiet retry is none
        yet): it stays until the write succeeds or is no longer wanted."""
        faults: dict[str, Fault] = {}
        for action, backoff in self._backoff.items():
            if not backoff.quiet and action.device not in faults:
                faults[action.device] = Fault("write_failed", action.device,
                                              f"{action.device}: {backoff.error}; retried with back-off until it "
                                              "succeeds", logged=True)  # by _failed, with its delay
        return tuple(faults.values())

    async def _catch_up(self) -> None:
        """Let the event reader take all the kernel announced of our writes.

        The kernel queues a write's notifications on the event socket before it
        acknowledges the write, but the reader takes one datagram per turn of
        the loop. Woken by part of them, the next plan would see a state older
        than our writes and "repair" it: a reopen's flush of teql0's IPv6
        address, announced after the daemon had added it back, read as drift.
        The barrier's answer is queued behind them all (and the kernel's late
        word on IPv6 addresses is waited for too)."""
        if not await self.kernel.barrier(BARRIER_TIMEOUT):
            log.debug("the event reader did not reach the barrier behind our writes in %.1f s", BARRIER_TIMEOUT)

    async def _execute(self, action: Action, woke: float | None) -> bool:
        try:
            await self.kernel.execute(action)
        except KernelError as e:
            self._failed(action, e)
            return False
        took = self.clock() - woke if woke is not None else None
        expect(self.snap, action)
        self._backoff.pop(action, None)
        key = (action.event, action.device)
        self.counters.done[key] = self.counters.done.get(key, 0) + 1
        if took is not None and action.event in FAILOVER_EVENTS:
            self.metrics.failover.observe((action.event,), took)
        self.report.write(action, took * 1000 if took is not None else None)
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
                self.report.transition(transition)
            self.report.refused(action, message)
            return
        old = self._backoff.get(action)
        soon = action.retry_soon(e.errno) if old is None else None
        if soon is not None:
            log.debug("%s: %s failed: %s; retrying in %gs", action.device, action.command(), e, soon)
            self._backoff[action] = _Backoff(self.clock() + soon, soon, str(e), quiet=True)
            return
        if old is None or old.quiet:
            delay, first = BACKOFF_FIRST, True
        else:  # logged again only if the error changed
            delay, first = min(old.delay * 2, BACKOFF_MAX), old.error != str(e)
        self._backoff[action] = _Backoff(self.clock() + delay, delay, str(e))
        self.report.failed(action, e.detail or str(e), delay, first=first)


def route_tables(config: Config) -> frozenset[int]:
    """The tables whose default routes the core must see (ours and clashes)."""
    return frozenset(eq.route_table for eq in config.equalizers.values() if eq.default_route)


async def run(config: Config, config_path: str | None = None, secure_config: bool = False,
              log_level: str | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the exit status."""
    return await Daemon(config, config_path=config_path, secure_config=secure_config, log_level=log_level).run()
