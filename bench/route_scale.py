"""Resync cost against the size of routing tables the daemon does not manage.

Runs in the lab guest:
`python -m lab.uml --timeout 1500 --mem 3G -- .venv/bin/python -m bench.route_scale`.
For N unrelated routes (out of a veth `bulk0`, in the main table or in table
200), times the resync's full dump (`Kernel.dump`, as the daemon calls it) and
the peak memory of the process doing it, for this checkout's code ("after")
and for the code of BASE ("before", extracted with git archive into .lab/).
Each measurement is a fresh child process, so its peak RSS is its own.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tarfile
import io
from pathlib import Path
from typing import Any

from lab.topo import Lab, ip, reset_teql, run

BASE = "8aa74f6"  # main before the route screening
REPO = Path(__file__).resolve().parent.parent
RUNS = 3
SIZES = tuple(int(n) for n in os.environ.get("WB_ROUTES", "0,100000,1000000").split(","))
BEFORE_MAX = int(os.environ.get("WB_BEFORE_MAX", "100000"))  # pyroute2 objects of 1M routes (~4 GiB) do not fit the guest

CHILD = r"""
import asyncio, inspect, json, statistics, sys, time
import wanbalanced.netlink as nl
def hwm_mib():
    # VmHWM is this process's own peak: ru_maxrss would keep the peak of the
    # parent it was forked from, which grew while it added the routes.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
async def main():
    k = nl.Kernel()
    await k.open(listen=False)
    filtered = "route_tables" in inspect.signature(k.dump).parameters
    times = []
    for _ in range(int(sys.argv[1])):
        t = time.perf_counter()
        snap = await (k.dump(route_tables={254}) if filtered else k.dump())
        times.append(time.perf_counter() - t)
    print(json.dumps({"median_s": statistics.median(times), "maxrss_mib": hwm_mib(),
                      "kept": len(snap.routes), "module": nl.__file__}))
asyncio.run(main())
"""


def before_tree() -> str:
    dest = REPO / ".lab" / "wb-before"  # /tmp is the guest's own tmpfs
    if not (dest / "wanbalanced").is_dir():
        tar = subprocess.run(["git", "-C", str(REPO), "archive", BASE, "src/wanbalanced"],
                             capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(dest / "x")
        (dest / "x" / "src" / "wanbalanced").rename(dest / "wanbalanced")
    return str(dest)


def measure(pythonpath: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    out = subprocess.run([sys.executable, "-c", CHILD, str(RUNS)], env=env, capture_output=True, text=True,
                         timeout=1200)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else f"rc {out.returncode}"}
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def add_routes(start: int, stop: int, table: str) -> None:
    """Routes number start..stop-1: 100.64.0.0/32 and up, out of bulk0."""
    base = int(ipaddress.IPv4Address("100.64.0.0"))
    for chunk in range(start, stop, 100_000):  # not one string of a million lines in this process
        lines = "".join(f"route add {ipaddress.IPv4Address(base + i)}/32 dev bulk0 table {table}\n"
                        for i in range(chunk, min(stop, chunk + 100_000)))
        run("ip", "-batch", "-", input=lines, timeout=1200)


def main() -> int:
    reset_teql(1)
    lab = Lab()
    lab.teardown()
    lab.setup(2)
    rows: list[dict[str, Any]] = []
    try:
        # A converged equalizer, as the daemon leaves it.
        lab.teql_by_hand()
        ip("link", "add", "bulk0", "type", "veth", "peer", "name", "bulk0p")
        ip("link", "set", "bulk0", "up")
        ip("link", "set", "bulk0p", "up")
        before = before_tree()
        after = str(REPO / "src")
        for table in ("200", "main"):
            have = 0
            for n in SIZES:
                add_routes(have, n, table)
                have = n
                row: dict[str, Any] = {"table": table, "routes": n, "after": measure(after)}
                row["before"] = measure(before) if n <= BEFORE_MAX else {"error": "not run: does not fit"}
                print(json.dumps(row), flush=True)
                rows.append(row)
            ip("route", "flush", "table", table, "dev", "bulk0")
    finally:
        ip("link", "del", "bulk0", check=False)
        lab.teardown()
    print("| table | unrelated routes | before: dump (s) | before: peak RSS (MiB) | after: dump (s) | after: peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        b, a = r["before"], r["after"]
        fb = (f"{b['median_s']:.3f} | {b['maxrss_mib']:.0f}" if "median_s" in b else f"{b['error']} | -")
        print(f"| {r['table']} | {r['routes']:,} | {fb} | {a['median_s']:.3f} | {a['maxrss_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
