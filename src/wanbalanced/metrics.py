"""Prometheus metrics, read from the published `Status`; never from netlink.

Scrapes are answered by the endpoint's own thread (endpoint.py). The collector
only reads the immutable Status the event loop last published (one reference,
replaced atomically), and the RTT histograms publish immutable tuples, so the
two threads share nothing mutable.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterator

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .actions import DRIFT_KINDS
from .core import FAULT_KINDS
from .endpoint import Exposition, MetricsServer
from .status import STATES, Status

log = logging.getLogger(__name__)

# Fine enough to tell 100 µs from 10 ms.
PROBE_RTT_BUCKETS = (100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0)
FAILOVER_BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
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
        stand_in = GaugeMetricFamily(
            "wanbalanced_equalizer_all_down_route",
            "1 while the all_down route of this type stands in for the default route (no slave attached)",
            labels=["equalizer", "type"])
        for e in st.equalizers:
            eq["attached_slaves"].add_metric([e.equalizer], e.attached)
            eq["configured_slaves"].add_metric([e.equalizer], e.configured)
            eq["up"].add_metric([e.equalizer], e.up)
            eq["default_route"].add_metric([e.equalizer], e.default_route)
            for kind in ("unreachable", "blackhole"):
                stand_in.add_metric([e.equalizer, kind], e.stand_in == kind)
        yield from eq.values()
        yield stand_in

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


class RttHistograms(Collector):
    """wanbalanced_probe_rtt_seconds: one histogram per (slave, target),
    observed by the event loop's thread only, read by scrapes.

    prometheus-client's Histogram takes a lock three times per observation,
    and CPython 3.11 reads the clock on every lock acquisition: a system call
    where there is no vDSO (UML: 55 µs each), and a thousand observations a
    second at 64 probed slaves. Here each observation builds the series' new
    counts as one tuple and publishes it with a single dict store (atomic
    under the GIL): a scrape sees each series either before or after an
    observation, never in between, so its buckets, count and sum agree."""

    NAME = "wanbalanced_probe_rtt_seconds"

    def __init__(self, buckets: tuple[float, ...] = PROBE_RTT_BUCKETS) -> None:
        self.buckets = buckets
        # (slave, target) -> (count per bucket (not cumulative)..., count above the last, sum);
        # a value is never changed, only replaced.
        self._series: dict[tuple[str, str], tuple[float, ...]] = {}
        self._zero: tuple[float, ...] = (0,) * (len(buckets) + 2)

    def observe(self, slave: str, target: str, seconds: float) -> None:
        key = (slave, target)
        old = self._series.get(key, self._zero)
        i = bisect_left(self.buckets, seconds)  # le: a value equal to a bound counts in its bucket
        self._series[key] = (*old[:i], old[i] + 1, *old[i + 1:-1], old[-1] + seconds)

    def keep(self, series: Collection[tuple[str, str]]) -> None:
        """Drop every (slave, target) not in `series` (after a reload)."""
        # A new dict, swapped in: a scrape iterating the old one is not disturbed.
        self._series = {key: data for key, data in self._series.items() if key in series}

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.NAME, "Round-trip time of ICMP echo probes through the slave",
                                       labels=["slave", "target"])
        for (slave, target), data in list(self._series.items()):
            total, buckets = 0.0, []
            for bound, count in zip((*self.buckets, float("inf")), data[:-1]):
                total += count
                buckets.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
            family.add_metric([slave, target], buckets, sum_value=data[-1])
        yield family


class Metrics:
    """The registry, the histograms and the HTTP endpoint."""

    def __init__(self, current: Callable[[], Status | None]) -> None:
        # No *_created series: the contract is the series documented, no more.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(current))
        self.failover = Histogram(
            "wanbalanced_failover_seconds",
            "From the kernel event the daemon received to the kernel change it caused",
            ["action"], buckets=FAILOVER_BUCKETS, registry=self.registry,
        )
        self.probe_rtt = RttHistograms()
        self.registry.register(self.probe_rtt)
        self.exposition = Exposition(self.registry, current)
        self._server: MetricsServer | None = None

    def serve(self, listen: str) -> None:
        """Start the endpoint on "host:port" or "[v6]:port"; "" disables it.
        Raises OSError if the address cannot be bound."""
        if not listen:
            return
        host, _, port = listen.rpartition(":")
        server = MetricsServer(self.exposition)
        server.start(host.strip("[]"), int(port))
        self._server = server
        log.info("metrics on http://%s/metrics", listen)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
