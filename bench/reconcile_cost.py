"""What the safety-net reconcile costs when the kernel is already right.

Runs in the lab guest (`python -m lab.uml -- .venv/bin/python -m bench.reconcile_cost`):
for 2 and 64 slaves, converge an equalizer, then time the full pass the
daemon makes every `reconcile_interval` (a dump of links, qdiscs, addresses
and routes, then observe and plan) many times. Reports medians and the share
of one core that pass costs at the default interval of 300 s.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from lab.topo import Lab, reset_teql
from wanbalanced.config import parse_config
from wanbalanced.core import Core
from wanbalanced.netlink import Kernel, expect

RUNS = 50
INTERVAL = 300.0


def config(n: int) -> str:
    slaves = ", ".join(f'"wan{i}"' for i in range(n))
    return f'[daemon]\nmetrics_listen = ""\ncontrol_socket = ""\n[equalizers.teql0]\nslaves = [{slaves}]\n' \
           'address = "10.0.0.0/31"\n'


async def measure(n: int) -> dict[str, float]:
    kernel = Kernel()
    await kernel.open(listen=False)
    cfg = parse_config(config(n))
    core = Core(cfg, time.monotonic())
    snap = await kernel.dump()
    core.observe(snap, time.monotonic())
    for action in core.plan(snap).actions:  # converge once
        await kernel.execute(action)
        expect(snap, action)
    wall, cpu = [], []
    for _ in range(RUNS):
        w, c = time.perf_counter(), time.process_time()
        snap = await kernel.dump()
        core.observe(snap, time.monotonic())
        plan = core.plan(snap)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
        assert plan.converged, [a.command() for a in plan.actions]
    kernel.close()
    return {"wall_ms": statistics.median(wall) * 1e3, "cpu_ms": statistics.median(cpu) * 1e3,
            "p90_wall_ms": statistics.quantiles(wall, n=10)[-1] * 1e3}


def main() -> int:
    print(f"safety-net reconcile on a converged kernel, median of {RUNS} passes:")
    for n in (2, 64):
        reset_teql(1)
        lab = Lab()
        lab.teardown()
        lab.setup(n)
        try:
            r = asyncio.run(measure(n))
        finally:
            lab.teardown()
        # The guest's CPU clock ticks every 10 ms, so wall time (an upper bound
        # for a single thread) gives the share.
        share = r["wall_ms"] / 1e3 / INTERVAL
        print(f"  {n:2d} slaves: {r['wall_ms']:.2f} ms wall (p90 {r['p90_wall_ms']:.2f}), "
              f"{r['cpu_ms']:.0f} ms CPU (10 ms ticks); every {INTERVAL:g}s: at most {share:.1e} of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
