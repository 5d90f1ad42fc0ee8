"""Reaction latency: from the carrier event to the change that takes the line
out, and back (guest side).

For each contender and size, the lines are set up once; each trial downs one
far end on router B (A's ``wanI`` loses its carrier), waits for the
contender's reaction, then brings the far end back and waits again. Both
intervals are measured between two events read by the one observer process:
the kernel's RTM_NEWLINK with the carrier change, and the contender's own
change (see ``bench.contenders``). Trials rotate over the lines, and a random
pause precedes both the cut and the return, so that periodic monitors
(miimon, ARP, probes) are met at every phase of their period. wanbalanced runs without flap damping here.
"""

from __future__ import annotations

import random
import time
from typing import Any

from .contenders import Contender, Wb
from .events import Observer, reaction
from .lines import Lines
from .stats import summary

TIMEOUT = 5.0  #: a reaction slower than this counts as missed


def one_size(obs: Observer, c: Contender, lines: Lines, n: int, trials: int, rng: random.Random) -> dict[str, Any]:
    started = time.monotonic()
    lines.setup(n, up=c.family == "teql", teql=c.family == "teql")
    if isinstance(c, Wb):
        # The trials cut the same lines again and again: flap damping would
        # (rightly) hold them down after the third time.
        c.damping = False
    c.setup(lines)
    try:
        c.wait_ready()
        setup_s = time.monotonic() - started
        time.sleep(0.5)
        out_ms: list[float] = []
        back_ms: list[float] = []
        missed_out = missed_back = 0
        for k in range(trials):
            i = k % n
            slave = f"wan{i}"
            took = reaction(obs, lambda: lines.carrier_down(i), slave, False,
                            lambda e: c.takes_out(e, slave), TIMEOUT)
            if took is not None:
                out_ms.append(took)
            else:
                missed_out += 1
            # A random pause before the line returns too: without it, the
            # return would fall at a fixed phase of a periodic monitor (just
            # after the tick that took the line out).
            time.sleep(rng.uniform(0.05, 0.25))
            took = reaction(obs, lambda: lines.carrier_up(i), slave, True,
                            lambda e: c.puts_back(e, slave), TIMEOUT)
            if took is not None:
                back_ms.append(took)
            else:
                missed_back += 1
                c.wait_ready()
            time.sleep(rng.uniform(0.05, 0.25))
        return {"n": n, "trials": trials, "setup_s": setup_s, "out_ms": out_ms, "back_ms": back_ms,
                "missed_out": missed_out, "missed_back": missed_back,
                "out": summary(out_ms), "back": summary(back_ms)}
    finally:
        c.teardown()
        lines.teardown()
        if isinstance(c, Wb):
            c.damping = True
