"""The daemon loop against a fake kernel: ordering, back-off, resync, stop.

The fake holds a Snapshot as its truth, applies successful writes to it, and
hands out events the test injects. The real kernel is exercised in tests/lab.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import errno
import logging
import os
import signal
from pathlib import Path
import functools
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from typing import Any

import pytest
from kernelstate import config, master, slave, snapshot
from messages import addr_msg, link_msg

from wanbalanced import daemon as daemon_mod
from wanbalanced.actions import Action
from wanbalanced.core import Core
from wanbalanced.daemon import Daemon, Event, Intent, KernelEdge
from wanbalanced.netlink import KernelError, expect
from wanbalanced.notify import Notifier
from ipaddress import IPv6Interface

from wanbalanced.observed import (DEFAULT_DST6, IFA_F_NODAD, IFA_F_NOPREFIXROUTE, IFF_BROADCAST, IFF_MULTICAST,
                                  RTPROT_WANBALANCED, Address, Link, LinkStats, Route, Snapshot)


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (no pytest plugin needed)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))
    return wrapper


@dataclasses.dataclass
class Barrier:
    """The kernel's answer to a barrier, in the fake's event stream."""

    reached: asyncio.Future[bool]


class FakeKernel:
    """The kernel edge (daemon.KernelEdge, which mypy checks it against) over
    a Snapshot as its truth."""

    def __init__(self, truth: Snapshot) -> None:
        self.truth = truth
        self.events_in: asyncio.Queue[Event | Exception | Barrier] = asyncio.Queue()
        self.executed: list[str] = []
        self.failures: dict[str, list[int]] = {}  # command -> errnos to raise, in turn
        self.dumps = 0
        self.dumped_tables: list[Collection[int]] = []
        self.resubscribed = 0
        self.barriers = 0

    async def open(self, listen: bool = True) -> None:
        pass

    async def resubscribe(self) -> None:
        self.resubscribed += 1

    def close(self) -> None:
        pass

    async def dump(self, route_tables: Collection[int]) -> Snapshot:
        self.dumps += 1
        self.dumped_tables.append(route_tables)
        return copy.deepcopy(self.truth)

    async def dump_links(self) -> list[Link]:
        return list(copy.deepcopy(self.truth).links.values())

    async def events(self) -> AsyncIterator[Event]:
        while True:
            item = await self.events_in.get()
            if isinstance(item, Barrier):
                item.reached.set_result(True)
                continue
            if isinstance(item, Exception):
                raise item
            yield item

    async def barrier(self, timeout: float) -> bool:
        # As the kernel does: the answer is queued behind what was announced.
        self.barriers += 1
        marker = Barrier(asyncio.get_running_loop().create_future())
        self.announce(marker)
        try:
            async with asyncio.timeout(timeout):
                return await marker.reached
        except TimeoutError:
            return False

    def announce(self, item: Event | Barrier) -> None:
        """Queue a message on the event socket (a subclass may delay it)."""
        self.events_in.put_nowait(item)

    async def execute(self, action: Action) -> None:
        pending = self.failures.get(action.command())
        if pending:
            raise KernelError(action, pending.pop(0))
        self.executed.append(action.command())
        expect(self.truth, action)


_: type[KernelEdge] = FakeKernel  # mypy: the fake has all the daemon uses


async def until(predicate: Callable[[], object], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def fresh() -> Snapshot:
    return snapshot(master(), slave(10, "wan0"), slave(11, "wan1"))


DAEMON_CONFIG = """
[daemon]
metrics_listen = ""
control_socket = ""

[equalizers.teql0]
slaves = ["wan0", "wan1"]
address = "10.0.0.0/31"
rp_filter = 0
"""


async def start(kernel: FakeKernel, config_path: str | None = None) -> tuple[Daemon, asyncio.Task[int]]:
    d = Daemon(config(DAEMON_CONFIG), kernel, config_path=config_path)
    task = asyncio.create_task(d.run())
    await until(lambda: kernel.dumps >= 1 and not d.core.plan(d.snap).actions)
    return d, task


async def stop(task: asyncio.Task[int]) -> int:
    os.kill(os.getpid(), signal.SIGTERM)
    return await asyncio.wait_for(task, 2.0)


@run_async
async def test_converges_then_follows_carrier_events() -> None:
    kernel = FakeKernel(fresh())
    d, task = await start(kernel)
    assert kernel.executed == [
        "tc qdisc add dev wan0 root teql0",
        "tc qdisc add dev wan1 root teql0",
        "ip link set teql0 up",
        "ip addr replace 10.0.0.0/31 dev teql0 noprefixroute",
        "ip route replace default dev teql0 proto 119",
    ]
    kernel.executed.clear()
    kernel.events_in.put_nowait(link_msg("RTM_NEWLINK", 10, "wan0", carrier=False))
    await until(lambda: kernel.executed == ["tc qdisc del dev wan0 root teql0"])
    assert d.counters.done[("detach", "wan0")] == 1 and ("detach", "wan1") not in d.counters.done
    assert await stop(task) == 0


@run_async
async def test_a_line_is_taken_out_before_anything_is_logged_about_it(caplog: pytest.LogCaptureFixture) -> None:
    # A log record is system calls (and a journald round trip): the detach
    # goes first, then the state change and the write are logged, in order.
    logged_at_execute: list[list[str]] = []

    class Watching(FakeKernel):
        async def execute(self, action: Action) -> None:
            logged_at_execute.append([r.getMessage() for r in caplog.records])
            await super().execute(action)

    kernel = Watching(fresh())
    with caplog.at_level(logging.INFO, logger="wanbalanced"):
        d, task = await start(kernel)
        caplog.clear()
        logged_at_execute.clear()
        kernel.events_in.put_nowait(link_msg("RTM_NEWLINK", 10, "wan0", carrier=False))
        await until(lambda: "tc qdisc del dev wan0 root teql0" in kernel.executed and len(caplog.records) >= 2)
    assert logged_at_execute == [[]], "nothing logged before the detach"
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "wan0: up -> down (carrier lost)"
    assert messages[1].startswith("wan0: tc qdisc del dev wan0 root teql0 (carrier lost; ")
    assert await stop(task) == 0


@run_async
async def test_a_failed_write_is_retried_with_backoff_logged_once_and_a_fault_until_it_succeeds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(daemon_mod, "BACKOFF_FIRST", 0.05)
    kernel = FakeKernel(fresh())
    write = "ip route replace default dev teql0 proto 119"
    kernel.failures[write] = [errno.EBUSY, errno.EBUSY]
    with caplog.at_level(logging.DEBUG, logger="wanbalanced"):
        d = Daemon(config(DAEMON_CONFIG), kernel)
        task = asyncio.create_task(d.run())
        await until(lambda: "write_failed:teql0" in d.report.faults)
        fault = d.report.faults["write_failed:teql0"]
        assert fault.message == f"teql0: {write}: Device or resource busy; retried with back-off until it succeeds"
        assert [f["kind"] for f in d.status.to_json()["faults"]] == ["write_failed"]  # type: ignore[union-attr]
        await until(lambda: write in kernel.executed and not d.report.faults)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "Device or resource busy; retrying in 0.05s" in errors[0].getMessage(), \
        "logged once: the fault adds no second line"
    assert [r.getMessage() for r in caplog.records if "resolved" in r.getMessage()] == [
        f"teql0: resolved: {fault.message}"]
    assert not d._backoff
    assert await stop(task) == 0


def missing_sysctl(monkeypatch: pytest.MonkeyPatch, failures: int) -> tuple[FakeKernel, str]:
    """A kernel whose wan0 rp_filter file is missing for the first `failures` writes."""
    monkeypatch.setattr(daemon_mod, "BACKOFF_FIRST", 60.0)
    kernel = FakeKernel(snapshot(master(), slave(10, "wan0", rp_filter=1), slave(11, "wan1")))
    write = "sysctl -w net.ipv4.conf.wan0.rp_filter=0"
    kernel.failures[write] = [errno.ENOENT] * failures
    return kernel, write


@run_async
async def test_a_sysctl_missing_after_a_rename_is_retried_soon_and_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # pppd's pppN -> wanN: the sysctl directory moves after the rename is
    # announced. One quiet retry after RENAME_SETTLE, far before BACKOFF_FIRST.
    kernel, write = missing_sysctl(monkeypatch, failures=1)
    with caplog.at_level(logging.DEBUG, logger="wanbalanced"):
        d, task = await start(kernel)
        await until(lambda: kernel.executed.count(write) == 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not d._backoff and kernel.failures[write] == []
    assert await stop(task) == 0


@run_async
async def test_a_sysctl_still_missing_after_the_quick_retry_is_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kernel, write = missing_sysctl(monkeypatch, failures=3)
    with caplog.at_level(logging.DEBUG, logger="wanbalanced"):
        d = Daemon(config(DAEMON_CONFIG), kernel)
        task = asyncio.create_task(d.run())
        await until(lambda: len(kernel.failures[write]) == 1)
        await asyncio.sleep(0.2)  # the next retry is BACKOFF_FIRST away, not RENAME_SETTLE
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "No such file or directory; retrying in 60s" in errors[0]
    assert len(kernel.failures[write]) == 1
    assert await stop(task) == 0


@run_async
async def test_backoff_survives_a_change_of_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The default route's reason counts the attached slaves; a slave leaving
    # changes the words, not the action: no retry before the back-off ends,
    # and the error is not logged again at ERROR.
    monkeypatch.setattr(daemon_mod, "BACKOFF_FIRST", 60.0)
    kernel = FakeKernel(fresh())
    route = "ip route replace default dev teql0 proto 119"
    kernel.failures[route] = [errno.EBUSY] * 5
    with caplog.at_level(logging.DEBUG, logger="wanbalanced"):
        d = Daemon(config(DAEMON_CONFIG), kernel)
        task = asyncio.create_task(d.run())
        await until(lambda: bool(d._backoff))
        [(failed, backoff)] = d._backoff.items()
        assert failed.reason == "2 slave(s) attached"
        kernel.events_in.put_nowait(link_msg("RTM_NEWLINK", 11, "wan1", carrier=False))
        await until(lambda: "tc qdisc del dev wan1 root teql0" in kernel.executed)
    [planned] = d.core.plan(d.snap).actions
    assert planned.reason == "1 slave(s) attached"
    assert d._backoff == {planned: backoff} and d._backoff[planned] is backoff, "the back-off was reset"
    assert len(kernel.failures[route]) == 4, "retried before the back-off ended"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and route in r.getMessage()]
    assert len(errors) == 1
    assert await stop(task) == 0


@run_async
async def test_event_loss_resubscribes_and_resyncs_from_a_dump() -> None:
    kernel = FakeKernel(fresh())
    d, task = await start(kernel)
    # While events are lost, wan1 loses its carrier; only a dump can tell.
    kernel.truth.put_link(slave(11, "wan1", carrier=False, teql="teql0"))
    kernel.events_in.put_nowait(OSError(errno.ENOBUFS, "No buffer space available"))
    await until(lambda: "tc qdisc del dev wan1 root teql0" in kernel.executed)
    assert kernel.resubscribed == 1 and kernel.dumps == 2 and d.counters.resyncs == 1
    assert await stop(task) == 0


@run_async
async def test_a_stats_refresh_takes_the_counters_of_a_link_dump() -> None:
    # The kernel sends no event when counters move: only the periodic
    # link dump (dump_links) brings them, and it writes nothing.
    kernel = FakeKernel(fresh())
    d, task = await start(kernel)
    kernel.executed.clear()
    wan0 = kernel.truth.link("wan0")
    assert wan0 is not None
    kernel.truth.put_link(dataclasses.replace(wan0, stats=LinkStats(rx_bytes=1000, tx_bytes=2000)))
    d._queue.put_nowait(Intent.REFRESH)
    await until(lambda: (link := d.snap.link("wan0")) is not None and link.stats is not None or task.done())
    assert not task.done(), "the loop died on the refresh"
    assert (link := d.snap.link("wan0")) is not None and link.stats == LinkStats(rx_bytes=1000, tx_bytes=2000)
    assert kernel.executed == []
    assert await stop(task) == 0


@run_async
async def test_a_full_event_queue_is_event_loss_and_resyncs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_mod, "MAX_QUEUED_EVENTS", 5)
    kernel = FakeKernel(fresh())
    d, task = await start(kernel)
    # A burst the loop cannot take in time (the reader queues without
    # yielding while events are ready): the queue never grows past its bound,
    # and what the burst meant is learnt from a dump instead.
    kernel.truth.put_link(slave(11, "wan1", carrier=False, teql="teql0"))
    for _ in range(8):
        kernel.events_in.put_nowait(link_msg("RTM_NEWLINK", 10, "wan0", carrier=True))
    await until(lambda: "tc qdisc del dev wan1 root teql0" in kernel.executed)
    assert d.overflows == 1 and kernel.resubscribed == 1 and d.counters.resyncs == 1
    assert await stop(task) == 0


@run_async
async def test_deleted_device_race_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeKernel(fresh())
    d, task = await start(kernel)
    kernel.failures["tc qdisc del dev wan1 root teql0"] = [errno.ENODEV]
    with caplog.at_level(logging.INFO, logger="wanbalanced"):
        kernel.events_in.put_nowait(link_msg("RTM_NEWLINK", 11, "wan1", up=False, carrier=False))
        kernel.events_in.put_nowait(link_msg("RTM_DELLINK", 11, "wan1", up=False, carrier=False))
        await until(lambda: d.core.machines["wan1"].state.value == "absent")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not d._backoff
    assert await stop(task) == 0


@run_async
async def test_sighup_reload_applies_a_good_file_and_keeps_the_old_on_a_bad_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(DAEMON_CONFIG)
    kernel = FakeKernel(fresh())
    d, task = await start(kernel, str(path))
    kernel.executed.clear()
    path.write_text(DAEMON_CONFIG.replace('"wan0", "wan1"', '"wan0"'))
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: kernel.executed == ["tc qdisc del dev wan1 root teql0"])
    assert d.config.equalizers["teql0"].slaves == ("wan0",)
    assert d.status is not None and d.status.reload_successful
    # A broken file: an error names the problem, nothing changes, no exit.
    path.write_text(DAEMON_CONFIG.replace('slaves = ["wan0", "wan1"]', 'slaves = "wan0"'))
    with caplog.at_level(logging.ERROR, logger="wanbalanced"):
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: d.status is not None and not d.status.reload_successful)
    assert "reload failed, keeping the running configuration: equalizers.teql0.slaves" in caplog.text
    assert d.config.equalizers["teql0"].slaves == ("wan0",)
    assert not task.done()
    assert await stop(task) == 0


@run_async
async def test_a_reload_to_another_route_table_dumps_that_table_first(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(DAEMON_CONFIG)
    kernel = FakeKernel(fresh())
    d, task = await start(kernel, str(path))
    assert kernel.dumps == 1
    kernel.executed.clear()
    # Only the default routes of the configured tables are dumped: table 200's
    # must be known (a clash there) before ours may go into it.
    path.write_text(DAEMON_CONFIG.replace('rp_filter = 0', 'rp_filter = 0\nroute_table = 200'))
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: any("table 200" in c for c in kernel.executed))
    assert kernel.dumps == 2 and 200 in kernel.dumped_tables[-1]
    assert d.status is not None and d.status.reload_successful
    assert await stop(task) == 0


@run_async
async def test_reload_keeps_the_command_line_log_level(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(DAEMON_CONFIG)  # no log_level: the file says info
    kernel = FakeKernel(fresh())
    d = Daemon(config(DAEMON_CONFIG), kernel, config_path=str(path), log_level="debug")
    task = asyncio.create_task(d.run())
    await until(lambda: d.status is not None)
    logging.getLogger("wanbalanced").setLevel(logging.DEBUG)
    assert await d.reload()
    assert logging.getLogger("wanbalanced").level == logging.DEBUG
    assert await stop(task) == 0


@run_async
async def test_a_config_that_cannot_be_applied_is_not_half_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(DAEMON_CONFIG)
    kernel = FakeKernel(fresh())
    d, task = await start(kernel, str(path))
    before, executed = d.config, list(kernel.executed)
    path.write_text(DAEMON_CONFIG.replace('"wan0", "wan1"', '"wan0"'))

    def boom(*_: object) -> object:
        raise OverflowError("simulated")

    monkeypatch.setattr(Core, "plan", boom)
    assert not await d.reload()
    monkeypatch.undo()
    assert d.config is before and kernel.executed == executed
    assert d.status is not None and not d.status.reload_successful
    assert await stop(task) == 0


PROBED_CONFIG = DAEMON_CONFIG + """
[slaves.wan0.probe]
targets = ["192.0.2.1", "192.0.2.2"]
up_after = 1

[slaves.wan1.probe]
targets = ["192.0.2.1"]
up_after = 1
"""


class FakeProber:
    """Stands in for probe.Prober (no raw socket): the test hands out rounds."""

    running: dict[str, FakeProber] = {}

    def __init__(self, slave: str, settings: Any, on_round: Callable[[Any], None]) -> None:
        self.slave, self.settings, self.on_round = slave, settings, on_round

    def start(self) -> None:
        FakeProber.running[self.slave] = self

    def stop(self) -> None:
        FakeProber.running.pop(self.slave, None)

    def answer(self, rtt: float) -> None:
        from wanbalanced.probe import RoundResult
        self.on_round(RoundResult(self.slave, 0, 0.0, {t: rtt for t in self.settings.targets}, (), True))


def probe_lines(d: Daemon) -> list[str]:
    from prometheus_client import generate_latest
    return [line for line in generate_latest(d.metrics.registry).decode().splitlines()
            if line.startswith("wanbalanced_probe_")]


@run_async
async def test_reload_prunes_the_series_of_removed_slaves_and_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wanbalanced import probing
    monkeypatch.setattr(probing, "Prober", FakeProber)
    FakeProber.running = {}
    path = tmp_path / "config.toml"
    path.write_text(PROBED_CONFIG)
    kernel = FakeKernel(fresh())
    d = Daemon(config(PROBED_CONFIG), kernel, config_path=str(path))
    task = asyncio.create_task(d.run())
    await until(lambda: set(FakeProber.running) == {"wan0", "wan1"})
    FakeProber.running["wan0"].answer(0.001)
    FakeProber.running["wan1"].answer(0.002)
    await until(lambda: d.status is not None and len(d.status.probes) == 3)
    before = probe_lines(d)
    for series in ('slave="wan0",target="192.0.2.2"', 'slave="wan1",target="192.0.2.1"'):
        assert any(series in line and line.startswith("wanbalanced_probe_sent_total") for line in before)
        assert any(series in line and line.startswith("wanbalanced_probe_rtt_seconds_count") for line in before)

    # wan1 leaves the file; wan0 stops probing 192.0.2.2.
    path.write_text(PROBED_CONFIG.replace('"wan0", "wan1"', '"wan0"').split("[slaves.wan1.probe]")[0]
                    .replace('targets = ["192.0.2.1", "192.0.2.2"]', 'targets = ["192.0.2.1"]'))
    assert await d.reload()
    after = probe_lines(d)
    assert [line for line in after if "wan1" in line or "192.0.2.2" in line] == []
    kept = 'wanbalanced_probe_rtt_seconds_count{slave="wan0",target="192.0.2.1"} 1.0'
    assert kept in after and 'wanbalanced_probe_sent_total{slave="wan0",target="192.0.2.1"} 1.0' in after
    assert await stop(task) == 0


# -- malformed input, supervision, watchdog ---------------------------------------------


@run_async
async def test_an_event_that_cannot_be_applied_is_dropped_and_the_loop_goes_on() -> None:
    from messages import route_msg
    kernel = FakeKernel(fresh())
    d, task = await start(kernel)
    # A route out of teql0 with host bits set (10.0.0.1/24): no kernel sends
    # one; parse_route raises ValueError on it.
    kernel.events_in.put_nowait(route_msg("RTM_NEWROUTE", 2, dst="10.0.0.1", dst_len=24))
    kernel.events_in.put_nowait(link_msg("RTM_NEWLINK", 10, "wan0", carrier=False))
    await until(lambda: "tc qdisc del dev wan0 root teql0" in kernel.executed)
    assert d.malformed_events == 1 and not task.done()
    assert await stop(task) == 0


@run_async
async def test_a_crashing_reader_resyncs_then_the_daemon_exits_nonzero() -> None:
    kernel = FakeKernel(fresh())
    d, task = await start(kernel)
    kernel.events_in.put_nowait(RuntimeError("decoder bug"))
    await until(lambda: kernel.resubscribed == 1 and kernel.dumps == 2)
    kernel.events_in.put_nowait(link_msg("RTM_NEWLINK", 10, "wan0", carrier=False))
    await until(lambda: "tc qdisc del dev wan0 root teql0" in kernel.executed)
    # Crashing over and over: give up, for systemd to restart the daemon.
    for _ in range(d.supervisor.budget):
        kernel.events_in.put_nowait(RuntimeError("decoder bug"))
    assert await asyncio.wait_for(task, 2.0) == 1
    assert d.supervisor.fatal == daemon_mod.READER


class PingRecorder(Notifier):
    def __init__(self) -> None:
        super().__init__()
        self.pings = 0

    def watchdog_interval(self) -> float | None:
        return 0.001

    def ping(self) -> None:
        self.pings += 1


@run_async
async def test_watchdog_pings_only_while_the_loop_and_the_reader_live() -> None:
    kernel = FakeKernel(fresh())
    notifier = PingRecorder()
    d = Daemon(config(DAEMON_CONFIG), kernel, notifier=notifier)
    task = asyncio.create_task(d.run())
    await until(lambda: notifier.pings >= 3)
    # The reader dies: the loop runs but must not ping.
    d.supervisor.cancel(daemon_mod.READER)
    assert not d.watchdog_ok()
    before = notifier.pings
    await until(lambda: Intent.PING not in list(d._queue._queue))  # type: ignore[attr-defined]
    d._queue.put_nowait(Intent.PING)
    await until(lambda: d._queue.empty())
    assert notifier.pings == before
    # A loop stuck in a kernel request: the ticks keep coming, no ping goes out.
    d._start_reader()
    hung = asyncio.Event()

    async def hang(action: Action) -> None:
        hung.set()
        await asyncio.Event().wait()

    kernel.execute = hang  # type: ignore[method-assign]
    kernel.events_in.put_nowait(link_msg("RTM_NEWLINK", 10, "wan0", carrier=False))
    await asyncio.wait_for(hung.wait(), 2)
    stuck_at = notifier.pings
    await until(lambda: d._queue.qsize() >= 5)
    assert notifier.pings == stuck_at
    task.cancel()


@run_async
async def test_the_mtu_hold_running_out_wakes_the_loop_to_raise_teql0() -> None:
    # No event comes when a hold runs out: the loop's timeout must.
    truth = snapshot(master(up=True, mtu=1400), slave(10, "wan0", teql="teql0"),
                     slave(11, "wan1", teql="teql0", mtu=1400), address=True, default_route=True)
    kernel = FakeKernel(truth)
    d = Daemon(config(DAEMON_CONFIG + 'mtu_hold = "300ms"\n'), kernel)
    task = asyncio.create_task(d.run())
    await until(lambda: kernel.dumps >= 1 and d.status is not None)
    assert kernel.executed == []  # adopted as found: teql0 fits
    kernel.truth.drop_link(11)
    kernel.events_in.put_nowait(link_msg("RTM_DELLINK", 11, "wan1", mtu=1400))
    loop = asyncio.get_running_loop()
    deleted = loop.time()
    await until(lambda: kernel.executed == ["ip link set teql0 mtu 1500"])
    assert loop.time() - deleted >= 0.3  # held until then
    assert d.counters.done.get(("mtu", "teql0")) == 1
    assert await stop(task) == 0


class AnnouncingKernel(FakeKernel):
    """A fake that announces the IPv6 address a reopen flushes and the one the
    daemon adds back, as the kernel does: in order, behind the acknowledgement
    of the write that caused them, and each datagram a while after the last
    (a slow guest, a busy reader). A barrier's answer queues behind them."""

    V6 = "2001:db8:ff::a"
    DELAY = 0.01  # per datagram: far more turns of the loop than a guess at "caught up" would wait

    def __init__(self, truth: Snapshot) -> None:
        super().__init__(truth)
        self.backlog: asyncio.Queue[Event | Barrier] = asyncio.Queue()
        self.trickler: asyncio.Task[None] | None = None

    async def _trickle(self) -> None:
        while True:
            msg = await self.backlog.get()
            await asyncio.sleep(self.DELAY)
            self.events_in.put_nowait(msg)

    def announce(self, item: Event | Barrier) -> None:
        if self.trickler is None:
            self.trickler = asyncio.create_task(self._trickle())
        self.backlog.put_nowait(item)

    async def execute(self, action: Action) -> None:
        await super().execute(action)
        flags = IFA_F_NOPREFIXROUTE | IFA_F_NODAD
        if action.command() == "ip link set teql0 down":
            self.announce(addr_msg("RTM_DELADDR", 2, self.V6, 128, flags))
        elif action.command().startswith(f"ip addr replace {self.V6}/128"):
            self.announce(addr_msg("RTM_NEWADDR", 2, self.V6, 128, flags))


@run_async
async def test_the_next_plan_waits_for_the_kernels_word_on_our_own_writes() -> None:
    # A reopen flushes teql0's IPv6 address and the daemon adds it back in the
    # same pass; woken by the flush's announcement alone, it would "repair"
    # a state older than its own writes, and count that as drift.
    truth = snapshot(master(up=True, flags=IFF_BROADCAST | IFF_MULTICAST), slave(10, "wan0", teql="teql0"),
                     address=True, default_route=True)
    truth.put_address(Address(2, IPv6Interface(f"{AnnouncingKernel.V6}/128"), IFA_F_NOPREFIXROUTE | IFA_F_NODAD))
    truth.put_route(Route(254, DEFAULT_DST6, 1024, 2, proto=RTPROT_WANBALANCED))
    kernel = AnnouncingKernel(truth)
    d = Daemon(config(DAEMON_CONFIG + f'address6 = "{AnnouncingKernel.V6}/128"\n'), kernel)
    task = asyncio.create_task(d.run())
    await until(lambda: kernel.dumps >= 1 and not d.core.plan(d.snap).actions)
    assert kernel.executed == []
    # wan1 dials in without BROADCAST: teql0 is reopened for it.
    kernel.truth.put_link(slave(11, "wan1", flags=0))
    kernel.events_in.put_nowait(link_msg("RTM_NEWLINK", 11, "wan1"))
    await until(lambda: "ip link set teql0 up" in kernel.executed)
    await until(lambda: kernel.backlog.empty() and kernel.events_in.empty())
    await asyncio.sleep(0.1)
    assert kernel.executed[:5] == ["sysctl -w net.ipv4.conf.wan1.rp_filter=0", "ip link set teql0 down",
                                   "tc qdisc add dev wan1 root teql0", "ip link set teql0 up",
                                   f"ip addr replace {AnnouncingKernel.V6}/128 dev teql0 noprefixroute nodad"]
    assert kernel.executed.count(f"ip addr replace {AnnouncingKernel.V6}/128 dev teql0 noprefixroute nodad") == 1
    assert d.counters.drift == {}
    assert [a.interface for a in d.snap.addresses_of(2) if a.interface.version == 6] == \
        [IPv6Interface(f"{AnnouncingKernel.V6}/128")]
    assert await stop(task) == 0
