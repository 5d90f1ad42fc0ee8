"""metrics.py: the lock-free histograms and pruning of series."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from wanbalanced.collectors import HistogramCollector
from wanbalanced.metrics import Histograms, rtt_histograms

V = 0.5  # exact in binary: n observations of V sum to exactly n * V


def read(h: Histograms) -> dict[tuple[str, str], tuple[float, float]]:
    """What a scrape sees: (count, sum) per series."""
    (family,) = HistogramCollector(h).collect()
    out: dict[tuple[str, str], list[float]] = {}
    for s in family.samples:
        key = (s.labels["slave"], s.labels["target"])
        if s.name.endswith("_count"):
            out.setdefault(key, [0.0, 0.0])[0] = s.value
        elif s.name.endswith("_sum"):
            out.setdefault(key, [0.0, 0.0])[1] = s.value
    return {k: (c, total) for k, (c, total) in out.items()}


def test_a_scrape_between_any_two_steps_of_an_observation_sees_it_whole() -> None:
    # The GIL can pass to the scrape thread only between two bytecodes, so
    # reading at every opcode of observe() covers every interleaving there is.
    h = rtt_histograms()
    h.observe(("wan0", "192.0.2.1"), V)
    reads: list[dict[tuple[str, str], tuple[float, float]]] = []

    def at_each_opcode(frame: FrameType, event: str, arg: Any) -> Any:
        if event in ("line", "opcode"):
            reads.append(read(h))  # the tracer itself is not traced
        return at_each_opcode

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code is Histograms.observe.__code__:
            frame.f_trace_opcodes = True
            return at_each_opcode
        return None

    sys.settrace(tracer)
    try:
        h.observe(("wan0", "192.0.2.1"), V)
        h.observe(("wan0", "192.0.2.9"), V)  # a new series appears whole too
    finally:
        sys.settrace(None)
    assert len(reads) > 20, "the reader did not run inside observe()"
    torn = [r for r in reads if any(total != count * V for count, total in r.values())]
    assert torn == [], f"{len(torn)} of {len(reads)} reads saw count and sum disagree, e.g. {torn[0]}"
    assert read(h) == {("wan0", "192.0.2.1"): (2, 2 * V), ("wan0", "192.0.2.9"): (1, V)}
