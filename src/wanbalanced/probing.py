"""Runs one Prober per slave that the core wants probed, and keeps the counts.

Probers are started and stopped to follow the core (`Core.probe_settings`),
and restarted when a slave is recreated, since a socket bound to a device
stays bound to the old ifindex. Each judged round goes to the core; a flipped
verdict is handed to the daemon loop through `on_flip`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from .config import ProbeConfig
from .core import Core
from .logs import fields
from .observed import Snapshot
from .probe import Prober, ProbeSettings, RoundResult

log = logging.getLogger(__name__)


@dataclass
class TargetCount:
    sent: int = 0
    lost: int = 0


def probed_series(core: Core) -> set[tuple[str, str]]:
    """Every (slave, target) the configuration probes: the probe series that
    may be exported. (A slave not probed right now keeps its series.)"""
    return {(name, str(target)) for name, book in core.slaves.items() if book.settings.probe is not None
            for target in book.settings.probe.targets}


class ProbeManager:
    def __init__(self, core: Callable[[], Core], on_flip: Callable[[str], None],
                 on_rtt: Callable[[str, str, float], None]) -> None:
        self._core = core
        self._on_flip = on_flip
        self._on_rtt = on_rtt
        self._running: dict[str, tuple[Prober, int, ProbeConfig]] = {}
        self._failed: dict[str, str] = {}  # slave -> last start error, logged once
        self.counts: dict[tuple[str, str], TargetCount] = {}

    def sync(self, snap: Snapshot) -> None:
        """Start, restart or stop probers to match what the core wants now."""
        core = self._core()
        for name in list(self._running):
            if name not in core.slaves:
                self._stop(name)
        for name in core.slaves:
            want = core.probe_settings(name, snap)
            link = snap.link(name)
            current = self._running.get(name)
            if current is not None and (want is None or link is None or current[1] != link.index
                                        or current[2] != want):
                self._stop(name)
                current = None
            if want is not None and link is not None and current is None:
                self._start(name, link.index, want)

    def _start(self, name: str, index: int, cfg: ProbeConfig) -> None:
        try:
            settings = ProbeSettings(
                targets=tuple(str(t) for t in cfg.targets), interval=cfg.interval, timeout=cfg.timeout,
                min_targets=cfg.min_targets, max_rtt=cfg.max_rtt, source=str(cfg.source) if cfg.source else None,
            )
            prober = Prober(name, settings, self._round)
            prober.start()
        except (OSError, ValueError) as e:
            if self._failed.get(name) != str(e):
                log.error("%s: cannot probe: %s; the slave stays out until probes can run", name, e,
                          extra=fields(slave=name, event="error", reason=str(e)))
            self._failed[name] = str(e)
            return
        self._failed.pop(name, None)
        self._running[name] = (prober, index, cfg)
        log.debug("%s: probing %s every %gs", name, ", ".join(settings.targets), settings.interval)

    def _stop(self, name: str) -> None:
        prober, _, _ = self._running.pop(name)
        prober.stop()

    def stop_all(self) -> None:
        for name in list(self._running):
            self._stop(name)

    def keep(self, series: Collection[tuple[str, str]]) -> None:
        """Forget the counts of every (slave, target) not in `series`."""
        self.counts = {key: count for key, count in self.counts.items() if key in series}

    def _round(self, result: RoundResult) -> None:
        for target, rtt in result.rtts.items():
            count = self.counts.setdefault((result.slave, target), TargetCount())
            count.sent += 1
            self._on_rtt(result.slave, target, rtt)
        for target in result.lost:
            count = self.counts.setdefault((result.slave, target), TargetCount())
            count.sent += 1
            count.lost += 1
        if self._core().probe_round(result.slave, result.ok):
            self._on_flip(result.slave)
