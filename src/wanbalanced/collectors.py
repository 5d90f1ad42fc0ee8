"""The Prometheus side of the metrics: collectors that turn the published
Status and the loop's histograms (metrics.py) into series at scrape time.

Imported only when something renders the metrics (the endpoint, a test), so
that prometheus-client is loaded only then. The collectors only read the
immutable Status the event loop last published (one reference, replaced
atomically) and the histograms' published tuples, so the scrape thread and
the loop share nothing mutable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .metrics import DRIFT_KINDS, FAULT_KINDS, Histograms
from .status import STATES, Status

__all__ = ["HistogramCollector", "StatusCollector", "registry"]

_STATS = (
    ("transmit_bytes", "tx_bytes", "Bytes sent"),
    ("receive_bytes", "rx_bytes", "Bytes received"),
    ("transmit_packets", "tx_packets", "Packets sent"),
    ("receive_packets", "rx_packets", "Packets received"),
    ("transmit_errors", "tx_errors", "Transmit errors"),
    ("receive_errors", "rx_errors", "Receive errors"),
    ("transmit_drops", "tx_dropped", "Packets dropped on transmit"),
    ("receive_drops", "rx_dropped", "Packets dropped on receive"),
)
SLAVE = ["equalizer", "slave"]


class StatusCollector(Collector):
    """Every series read from the published Status."""

    def __init__(self, current: Callable[[], Status | None]) -> None:
        self.current = current

    def collect(self) -> Iterator[Metric]:
        st = self.current()
        if st is None:
            return
        g = {name: GaugeMetricFamily(f"wanbalanced_{name}", doc, labels=SLAVE) for name, doc in (
            ("slave_attached", "1 when the equalizer is the slave's root qdisc in the kernel"),
            ("slave_carrier", "1 when the slave is up with carrier"),
            ("slave_up", "1 when the daemon wants the slave in its equalizer (healthy)"),
            ("slave_state_since_timestamp_seconds", "Unix time of the slave's last state change"),
            ("slave_flap_penalty", "The slave's flap penalty now (it halves every damping.half_life)"),
            ("slave_held_down_until_timestamp_seconds",
             "Unix time until which a flapping slave is held down; 0 when it is not"),
            ("slave_routes", "The slave's configured routes ([[slaves.X.routes]]) in the kernel now"),
            ("slave_routes_configured", "Routes configured through the slave"),
        )}
        state = GaugeMetricFamily("wanbalanced_slave_state", "1 for the slave's current state",
                                  labels=[*SLAVE, "state"])
        attaches = CounterMetricFamily("wanbalanced_slave_attaches", "Times the daemon attached the slave",
                                       labels=SLAVE)
        detaches = CounterMetricFamily("wanbalanced_slave_detaches", "Times the daemon detached the slave",
                                       labels=SLAVE)
        stats = {attr: CounterMetricFamily(f"wanbalanced_slave_{name}", f"{doc} (the link's 64-bit counter)",
                                           labels=SLAVE) for name, attr, doc in _STATS}
        for s in st.slaves:
            labels = [s.equalizer, s.slave]
            g["slave_attached"].add_metric(labels, s.attached)
            g["slave_carrier"].add_metric(labels, s.carrier)
            g["slave_up"].add_metric(labels, s.up)
            g["slave_state_since_timestamp_seconds"].add_metric(labels, s.since)
            g["slave_flap_penalty"].add_metric(labels, s.flap_penalty)
            g["slave_held_down_until_timestamp_seconds"].add_metric(labels, s.held_down_until)
            g["slave_routes"].add_metric(labels, s.routes)
            g["slave_routes_configured"].add_metric(labels, s.routes_configured)
            for value in STATES:
                state.add_metric([*labels, value], value == s.state)
            attaches.add_metric(labels, s.attaches)
            detaches.add_metric(labels, s.detaches)
            if s.stats is not None:
                for attr, family in stats.items():
                    family.add_metric(labels, getattr(s.stats, attr))
        yield from g.values()
        yield state
        yield attaches
        yield detaches
        yield from stats.values()

        eq = {name: GaugeMetricFamily(f"wanbalanced_equalizer_{name}", doc, labels=["equalizer"]) for name, doc in (
            ("attached_slaves", "Slaves attached in the kernel"),
            ("configured_slaves", "Slaves in the configuration"),
            ("up", "1 when the teql device exists and is up"),
            ("default_route", "1 while the default route via the equalizer is in the kernel"),
        )}
        mtu = GaugeMetricFamily("wanbalanced_equalizer_mtu_bytes",
                                "The equalizer's MTU in the kernel (it follows its smallest slave)",
                                labels=["equalizer"])
        mtu_changes = CounterMetricFamily("wanbalanced_equalizer_mtu_changes",
                                          "Times the daemon changed the equalizer's MTU", labels=["equalizer"])
        reopens = CounterMetricFamily("wanbalanced_equalizer_reopens",
                                      "Times the daemon set the equalizer down and up to take a slave of "
                                      "other link flags (mixed = \"reopen\")", labels=["equalizer"])
        stand_in = GaugeMetricFamily(
            "wanbalanced_equalizer_all_down_route",
            "1 while the all_down route of this type stands in for the default route (no slave attached)",
            labels=["equalizer", "type"])
        for e in st.equalizers:
            if e.exists:
                mtu.add_metric([e.equalizer], e.mtu)
            mtu_changes.add_metric([e.equalizer], e.mtu_changes)
            reopens.add_metric([e.equalizer], e.reopens)
            eq["attached_slaves"].add_metric([e.equalizer], e.attached)
            eq["configured_slaves"].add_metric([e.equalizer], e.configured)
            eq["up"].add_metric([e.equalizer], e.up)
            eq["default_route"].add_metric([e.equalizer], e.default_route)
            for kind in ("unreachable", "blackhole"):
                stand_in.add_metric([e.equalizer, kind], e.stand_in == kind)
        yield from eq.values()
        yield stand_in
        yield mtu
        yield mtu_changes
        yield reopens

        sent = CounterMetricFamily("wanbalanced_probe_sent", "ICMP echo requests sent through the slave",
                                   labels=["slave", "target"])
        lost = CounterMetricFamily("wanbalanced_probe_lost",
                                   "Echo requests with no timely reply (or that could not be sent)",
                                   labels=["slave", "target"])
        for p in st.probes:
            sent.add_metric([p.slave, p.target], p.sent)
            lost.add_metric([p.slave, p.target], p.lost)
        yield sent
        yield lost

        faults = GaugeMetricFamily("wanbalanced_faults", "Active faults the operator must fix, by kind",
                                   labels=["kind"])
        for fault in FAULT_KINDS:
            faults.add_metric([fault], sum(1 for f in st.faults if f.kind == fault))
        yield faults
        yield GaugeMetricFamily("wanbalanced_config_last_reload_successful",
                                "1 if the last configuration load succeeded", value=st.reload_successful)
        yield GaugeMetricFamily("wanbalanced_config_last_reload_success_timestamp_seconds",
                                "Unix time of the last successful configuration load",
                                value=st.reload_success_time)
        yield CounterMetricFamily("wanbalanced_netlink_resyncs", "Full resyncs after lost netlink events",
                                  value=st.resyncs)
        drift = CounterMetricFamily("wanbalanced_drift_repairs", "Kernel state changed by someone else and put back",
                                    labels=["kind"])
        for kind in DRIFT_KINDS:
            drift.add_metric([kind], st.drift.get(kind, 0))
        yield drift
        info = GaugeMetricFamily("wanbalanced_build_info", "Version of the running daemon", labels=["version"])
        info.add_metric([st.version], 1)
        yield info


class HistogramCollector(Collector):
    """One Histograms family, exposed as prometheus-client's Histogram would."""

    def __init__(self, histograms: Histograms) -> None:
        self.histograms = histograms

    def collect(self) -> Iterator[Metric]:
        h = self.histograms
        family = HistogramMetricFamily(h.name, h.doc, labels=list(h.labels))
        for labels, data in h.snapshot():
            total, buckets = 0.0, []
            for bound, count in zip((*h.buckets, float("inf")), data[:-1]):
                total += count
                buckets.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
            family.add_metric(list(labels), buckets, sum_value=data[-1])
        yield family


def registry(current: Callable[[], Status | None], histograms: Iterable[Histograms]) -> CollectorRegistry:
    """A registry of the Status series and these histograms."""
    # No *_created series: the contract is the series documented, no more.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatusCollector(current))
    for h in histograms:
        reg.register(HistogramCollector(h))
    return reg
