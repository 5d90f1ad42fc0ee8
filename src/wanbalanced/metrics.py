"""The daemon's metrics: what the event loop records, free of prometheus-client.

The loop records two histograms (failover time, probe RTTs); every other
series is read at scrape time from the Status the loop last published
(collectors.py). Nothing here imports prometheus-client: a daemon whose
endpoint is off never loads it (about 3 MiB and, in the lab, 0.1 s of start),
and one whose endpoint is on loads it when the endpoint opens.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from .actions import DRIFT_KINDS
from .core import FAULT_KINDS
from .status import Status

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .endpoint import MetricsServer

__all__ = ["DRIFT_KINDS", "FAILOVER_BUCKETS", "FAILOVER_EVENTS", "FAULT_KINDS", "Histograms", "Metrics", "PROBE_RTT_BUCKETS"]

log = logging.getLogger(__name__)

# Fine enough to tell 100 µs from 10 ms.
PROBE_RTT_BUCKETS = (100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0)
#: The events whose time from the kernel event is wanbalanced_failover_seconds (its `action` label).
FAILOVER_EVENTS = ("attach", "detach")
FAILOVER_BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histograms:
    """One histogram family: a series per label tuple, observed by the event
    loop's thread only, read by scrapes (collectors.HistogramCollector).

    prometheus-client's Histogram takes a lock three times per observation,
    and CPython 3.11 reads the clock on every lock acquisition: a system call
    where there is no vDSO (UML: 55 µs each), and a thousand observations a
    second at 64 probed slaves. Here each observation builds the series' new
    counts as one tuple and publishes it with a single dict store (atomic
    under the GIL): a scrape sees each series either before or after an
    observation, never in between, so its buckets, count and sum agree."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.buckets = name, doc, labels, buckets
        # labels -> (count per bucket (not cumulative)..., count above the last, sum);
        # a value is never changed, only replaced.
        self._series: dict[tuple[str, ...], tuple[float, ...]] = {}
        self._zero: tuple[float, ...] = (0,) * (len(buckets) + 2)

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        """Count one observation in the series of `labels` (one value per label name)."""
        old = self._series.get(labels, self._zero)
        i = bisect_left(self.buckets, seconds)  # le: a value equal to a bound counts in its bucket
        self._series[labels] = (*old[:i], old[i] + 1, *old[i + 1:-1], old[-1] + seconds)

    def keep(self, series: Collection[tuple[str, ...]]) -> None:
        """Drop every series not in `series` (after a reload)."""
        # A new dict, swapped in: a scrape iterating the old one is not disturbed.
        self._series = {key: data for key, data in self._series.items() if key in series}

    def snapshot(self) -> list[tuple[tuple[str, ...], tuple[float, ...]]]:
        """Each series' labels and counts, as one consistent reading per series."""
        return list(self._series.items())


def rtt_histograms() -> Histograms:
    """wanbalanced_probe_rtt_seconds, by slave and target."""
    return Histograms("wanbalanced_probe_rtt_seconds", "Round-trip time of ICMP echo probes through the slave",
                      ("slave", "target"), PROBE_RTT_BUCKETS)


def failover_histograms() -> Histograms:
    """wanbalanced_failover_seconds, by action (attach, detach)."""
    return Histograms("wanbalanced_failover_seconds",
                      "From the kernel event the daemon received to the kernel change it caused",
                      ("action",), FAILOVER_BUCKETS)


class Metrics:
    """The histograms, and on demand the registry and the HTTP endpoint."""

    def __init__(self, current: Callable[[], Status | None]) -> None:
        self.current = current
        self.failover = failover_histograms()
        self.probe_rtt = rtt_histograms()
        self._registry: CollectorRegistry | None = None
        self._server: MetricsServer | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """The prometheus-client registry of every series (built, and the library loaded, on first use)."""
        if self._registry is None:
            from .collectors import registry

            self._registry = registry(self.current, (self.failover, self.probe_rtt))
        return self._registry

    def serve(self, listen: str) -> None:
        """Start the endpoint on "host:port" or "[v6]:port"; "" disables it.
        Raises OSError if the address cannot be bound."""
        if not listen:
            return
        from .endpoint import Exposition, MetricsServer

        host, _, port = listen.rpartition(":")
        server = MetricsServer(Exposition(self.registry, self.current))
        server.start(host.strip("[]"), int(port))
        self._server = server
        log.info("metrics on http://%s/metrics", listen)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
