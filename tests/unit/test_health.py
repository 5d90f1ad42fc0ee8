"""Probe verdict hysteresis and RFC 2439-style flap damping."""

from __future__ import annotations

import pytest

from wanbalanced.config import DampingConfig
from wanbalanced.health import Damping, Verdict


def test_verdict_needs_consecutive_rounds() -> None:
    v = Verdict(down_after=3, up_after=2, good=True)
    assert [v.record(ok) for ok in (False, False, True, False, False)] == [False] * 5
    assert v.good, "two failures, a success, two failures: never three in a row"
    assert v.record(False) and not v.good
    assert not v.record(True) and not v.good
    assert v.record(True) and v.good


def test_verdict_reset() -> None:
    v = Verdict(3, 3, good=True)
    v.record(False)
    v.reset(good=False)
    assert not v.good and v.streak == 0


def damping(**kw: float) -> Damping:
    return Damping(DampingConfig(**kw))  # type: ignore[arg-type]


def test_penalty_halves_every_half_life() -> None:
    d = damping(half_life=10.0)
    d.flap(0.0)
    assert d.value(0.0) == 1000 and d.value(10.0) == pytest.approx(500) and d.value(20.0) == pytest.approx(250)


def test_one_or_two_flaps_never_suppress_three_quick_ones_do() -> None:
    d = damping()  # penalty 1000, suppress 2500, reuse 800, half-life 60 s
    d.flap(0.0)
    d.flap(5.0)
    assert not d.check(5.0)
    d.flap(10.0)
    assert d.check(10.0)
    reuse = d.reuse_at()
    assert reuse is not None and 10.0 + 60 < reuse < 10.0 + 120
    assert d.check(reuse - 0.5) and not d.check(reuse + 0.01)


def test_flaps_far_apart_never_suppress() -> None:
    d = damping()
    for t in range(0, 3600, 120):  # one flap every 2 minutes for an hour
        d.flap(float(t))
        assert not d.check(float(t))


def test_max_suppress_caps_the_hold() -> None:
    d = damping(half_life=10.0, max_suppress=30.0)
    for t in range(100):
        d.flap(float(t) * 0.1)
    reuse = d.reuse_at()
    assert reuse is not None and reuse - 9.9 == pytest.approx(30.0)


def test_disabled_damping_never_suppresses() -> None:
    d = Damping(DampingConfig(enabled=False))
    for t in range(10):
        d.flap(float(t))
    assert not d.check(10.0) and d.penalty == 0
