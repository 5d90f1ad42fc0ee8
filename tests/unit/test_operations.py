"""Status, metrics exposition, control socket, sd_notify and journald mapping."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from kernelstate import config, converged, master, slave, snapshot
from prometheus_client import generate_latest

from wanbalanced import logs, status
from wanbalanced.core import Core, Fault
from wanbalanced.metrics import Metrics
from wanbalanced.notify import Notifier
from wanbalanced.observed import LinkStats


def make_status() -> status.Status:
    snap = converged()
    snap.put_link(slave(11, "wan1", teql="teql0", carrier=False))
    snap.put_link(dataclasses_replace_stats(snap.links[10]))
    core = Core(config(), 100.0)
    core.observe(converged(), 100.0)
    core.observe(snap, 160.0)
    return status.build(
        config(), core, snap, version="9.9.9", done={("attach", "wan0"): 1, ("attach", "wan1"): 1, ("detach", "wan1"): 1},
        faults=(Fault("rp_filter_all", "wan0", "fix all"),), reload_successful=True,
        reload_success_time=1_700_000_000.0, resyncs=2, mono_now=200.0, wall_now=1_700_000_200.0,
    )


def dataclasses_replace_stats(link: object) -> object:
    import dataclasses
    return dataclasses.replace(link, stats=LinkStats(rx_bytes=1000, tx_bytes=2000, tx_packets=20))  # type: ignore


def test_status_says_what_the_kernel_and_the_machines_hold() -> None:
    st = make_status()
    wan0, wan1 = st.slaves
    assert (wan0.state, wan0.attached, wan0.carrier, wan0.up) == ("up", True, True, True)
    # wan1 lost carrier; the snapshot still shows it attached until the detach.
    assert (wan1.state, wan1.carrier, wan1.up, wan1.detaches) == ("down", False, False, 1)
    assert wan1.since == pytest.approx(1_700_000_200.0 - 40.0)
    assert st.summary() == "teql0: 2/2 slaves attached"
    assert st.to_json()["faults"] == [{"kind": "rp_filter_all", "device": "wan0", "message": "fix all"}]


def exposition() -> str:
    st = make_status()
    m = Metrics(lambda: st)
    m.failover.observe(("detach",), 0.0004)
    return generate_latest(m.registry).decode()


def test_metrics_exposition_has_the_contracted_series() -> None:
    text = exposition()
    for line in (
        'wanbalanced_slave_attached{equalizer="teql0",slave="wan0"} 1.0',
        'wanbalanced_slave_carrier{equalizer="teql0",slave="wan1"} 0.0',
        'wanbalanced_slave_up{equalizer="teql0",slave="wan1"} 0.0',
        'wanbalanced_slave_state{equalizer="teql0",slave="wan1",state="down"} 1.0',
        'wanbalanced_slave_state{equalizer="teql0",slave="wan1",state="up"} 0.0',
        'wanbalanced_slave_detaches_total{equalizer="teql0",slave="wan1"} 1.0',
        'wanbalanced_slave_transmit_bytes_total{equalizer="teql0",slave="wan0"} 2000.0',
        'wanbalanced_slave_receive_bytes_total{equalizer="teql0",slave="wan0"} 1000.0',
        'wanbalanced_equalizer_attached_slaves{equalizer="teql0"} 2.0',
        'wanbalanced_equalizer_default_route{equalizer="teql0"} 1.0',
        'wanbalanced_faults{kind="rp_filter_all"} 1.0',
        'wanbalanced_config_last_reload_successful 1.0',
        'wanbalanced_netlink_resyncs_total 2.0',
        'wanbalanced_build_info{version="9.9.9"} 1.0',
        'wanbalanced_failover_seconds_bucket{action="detach",le="0.0005"} 1.0',
        'wanbalanced_failover_seconds_bucket{action="detach",le="0.00025"} 0.0',
    ):
        assert line in text.splitlines(), line


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_metrics_pass_promtool_check_metrics() -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=exposition(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_status_yet_means_no_series() -> None:
    m = Metrics(lambda: None)
    text = generate_latest(m.registry).decode()
    assert "wanbalanced_slave" not in text


def test_control_socket_roundtrip_and_second_daemon_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    st = make_status()

    async def scenario() -> None:
        server = await status.serve(path, lambda: st)
        assert os.stat(path).st_mode & 0o077 == 0, "root only"
        answer = await asyncio.to_thread(status.query, path)
        assert answer["slaves"][1]["slave"] == "wan1" and answer["slaves"][1]["state"] == "down"
        with pytest.raises(status.AlreadyRunning):
            await status.serve(path, lambda: st)
        server.close()
        await server.wait_closed()
        # A stale socket of a dead daemon is taken over.
        server = await status.serve(path, lambda: st)
        server.close()

    asyncio.run(scenario())


def test_query_without_daemon_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(status.ControlError, match="is wanbalanced running"):
        status.query(str(tmp_path / "nope.sock"))


def test_sd_notify_protocol_and_watchdog_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier()
    n.ready("teql0: 2/2 slaves attached")
    assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=teql0: 2/2 slaves attached"]
    n.reloading()
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=") and int(lines[1][15:]) > 0
    n.status("teql0: 2/2 slaves attached")  # unchanged: nothing sent
    n.status("teql0: 1/2 slaves attached")
    assert sock.recv(4096) == b"STATUS=teql0: 1/2 slaves attached"
    assert n.watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert n.watchdog_interval() is None, "the watchdog is for another process"
    sock.close()


def test_no_notify_socket_means_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.watchdog_interval() is None
    n.ready("x")  # must not raise


def test_journald_priorities() -> None:
    handler = logs.journal_handler()
    assert handler is not None
    prio = handler.map_priority  # type: ignore[attr-defined]
    assert [prio(level) for level in (logging.DEBUG, logging.INFO, logs.NOTICE, logging.WARNING, logging.ERROR)] \
        == [7, 6, 5, 4, 3]


def test_journald_fields_reach_the_sender() -> None:
    handler = logs.journal_handler()
    assert handler is not None
    sent: list[dict[str, object]] = []
    handler.send = lambda MESSAGE, **kw: sent.append({"MESSAGE": MESSAGE, **kw})  # type: ignore[attr-defined]
    logger = logging.getLogger("wanbalanced.test-journal")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.warning("wan0: tc qdisc del dev wan0 root teql0", extra=logs.fields(slave="wan0", event="detach"))
    finally:
        logger.removeHandler(handler)
    assert sent[0]["PRIORITY"] == "4" and sent[0]["SLAVE"] == "wan0" and sent[0]["EVENT"] == "detach"
    assert sent[0]["SYSLOG_IDENTIFIER"] == "wanbalanced"


def test_journal_detection_compares_the_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.under_journald(f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not logs.under_journald(f)


def test_kernel_state_builders_make_what_they_say() -> None:
    # The other tests trust these fakes: they must hold what their arguments say.
    from ipaddress import IPv4Interface

    from wanbalanced.observed import DEFAULT_DST, IFF_LOWER_UP, IFF_NOARP, IFF_UP

    snap = snapshot(master(up=True), slave(1, "wan0"), slave(3, "wan1", carrier=False, teql="teql0"),
                    address=True, default_route=True)
    wan0, wan1, teql = snap.link("wan0"), snap.link("wan1"), snap.link("teql0")
    assert wan0 is not None and wan1 is not None and teql is not None
    assert (wan0.index, wan0.carrier, wan0.admin_up) == (1, True, True) and wan0.flags & IFF_LOWER_UP
    assert wan0.qdisc is not None and wan0.qdisc.kind == "noqueue"
    assert (wan1.index, wan1.carrier, wan1.admin_up) == (3, False, True) and not wan1.flags & IFF_LOWER_UP
    assert wan1.qdisc is not None and wan1.qdisc.kind == "teql0"
    assert teql.flags & IFF_NOARP and teql.flags & IFF_UP and not teql.carrier
    assert [a.interface for a in snap.addresses_of(teql.index)] == [IPv4Interface("10.0.0.0/31")]
    assert [(r.dst, r.oif) for r in snap.default_routes(254)] == [(DEFAULT_DST, teql.index)]
    bare = snapshot(master(), slave(1, "wan0", up=False))
    assert bare.addresses_of(2) == [] and bare.default_routes(254) == []
    down = bare.link("wan0")
    assert down is not None and not down.admin_up and not down.flags & IFF_LOWER_UP


def test_exposition_is_exactly_the_documented_contract() -> None:
    from test_prometheus_rules import METRICS

    from wanbalanced.metrics import Metrics
    from prometheus_client.parser import text_string_to_metric_families

    st = make_status()
    m = Metrics(lambda: st)
    m.failover.observe(("detach",), 0.001)
    m.probe_rtt.observe(("wan0", "192.0.2.1"), 0.001)
    families = {f.name: f.type for f in text_string_to_metric_families(generate_latest(m.registry).decode())}
    contract = {name.removesuffix("_total"): kind for name, (kind, _) in METRICS.items()}
    assert families == contract


@pytest.mark.parametrize("family", ["rtt", "failover"])
def test_our_histograms_match_prometheus_clients(family: str) -> None:
    # Our lock-free histograms must expose exactly what prometheus-client's
    # Histogram would for the same observations (bounds included: le is <=).
    from prometheus_client import CollectorRegistry, Histogram

    from wanbalanced.collectors import HistogramCollector
    from wanbalanced.metrics import failover_histograms, rtt_histograms

    ours = rtt_histograms() if family == "rtt" else failover_histograms()
    registry = CollectorRegistry(auto_describe=False)
    reference = Histogram(ours.name, ours.doc, list(ours.labels), buckets=ours.buckets, registry=registry)
    values = [0.0, 1e-4, 0.00042, 1e-3, 0.0123, 0.1, 0.7, 5.0, 9.5, *ours.buckets]
    for i, v in enumerate(values):
        labels = ((f"wan{i % 2}", "192.0.2.1" if i % 3 else "192.0.2.2") if family == "rtt"
                  else ("attach" if i % 3 else "detach",))
        ours.observe(labels, v)
        reference.labels(*labels).observe(v)
    theirs = CollectorRegistry(auto_describe=False)
    theirs.register(HistogramCollector(ours))
    assert generate_latest(theirs) == generate_latest(registry)

