"""Pure health bookkeeping: the probe verdict with hysteresis, and flap damping.

No I/O and no clock: probe rounds and `now` are fed in, so both are tested
without a network or sleeping.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only a type: `status` imports this module and needs no models
    from .config import DampingConfig


class Verdict:
    """Healthy or not, changing only after `down_after` failed or `up_after`
    good rounds in a row, so one lost echo is never an outage."""

    def __init__(self, down_after: int, up_after: int, good: bool) -> None:
        self.down_after, self.up_after = down_after, up_after
        self.good = good
        self.streak = 0  # rounds in a row that disagree with the verdict

    def reset(self, good: bool) -> None:
        self.good, self.streak = good, 0

    def record(self, ok: bool) -> bool:
        """Count one round; True when the verdict flipped."""
        if ok == self.good:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak >= (self.up_after if ok else self.down_after):
            self.good, self.streak = ok, 0
            return True
        return False


class Damping:
    """RFC 2439-style flap penalty: grows by `penalty` on every flap, halves every
    `half_life`; the slave is suppressed from crossing `suppress` until the
    penalty decays below `reuse`."""

    def __init__(self, cfg: DampingConfig) -> None:
        self.cfg = cfg
        self.penalty = 0.0
        self.at = 0.0  # when `penalty` was last computed
        self.suppressed = False
        self.ceiling = cfg.ceiling  # held no longer than max_suppress

    def value(self, now: float) -> float:
        return self.penalty * 2 ** (-(now - self.at) / self.cfg.half_life)

    def flap(self, now: float) -> None:
        if not self.cfg.enabled:
            return
        self.penalty = min(self.value(now) + self.cfg.penalty, self.ceiling)
        self.at = now
        if self.penalty >= self.cfg.suppress:
            self.suppressed = True

    def check(self, now: float) -> bool:
        """Whether the slave is held down now (clears once below `reuse`)."""
        if self.suppressed and self.value(now) < self.cfg.reuse:
            self.suppressed = False
        return self.suppressed

    def reuse_at(self) -> float | None:
        """When the penalty will have decayed below `reuse`, if suppressed."""
        if not self.suppressed or self.penalty <= 0:
            return None
        return self.at + self.cfg.half_life * math.log2(self.penalty / self.cfg.reuse)
