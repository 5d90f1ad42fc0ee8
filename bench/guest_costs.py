"""What a system call and a fresh page cost where this runs (the guest, or the host).

    .venv/bin/python -m lab.uml -- .venv/bin/python -m bench.guest_costs
    .venv/bin/python -m bench.guest_costs          # the host, for comparison

Not part of the suite: a probe for reading its start-up figures (see
docs/benchmarks.md). A UML guest charges every system call and the first
touch of every page of memory, so a Python process's start-up there is
mostly the memory it touches.
"""

from __future__ import annotations

import mmap
import os
import time

CALLS = 20_000
SIZE = 64 << 20
PAGE = mmap.PAGESIZE


def main() -> None:
    t0 = time.perf_counter()
    for _ in range(CALLS):
        os.getppid()
    syscall = (time.perf_counter() - t0) / CALLS
    region = mmap.mmap(-1, SIZE)
    t0 = time.perf_counter()
    for offset in range(0, SIZE, PAGE):
        region[offset] = 1
    page = (time.perf_counter() - t0) / (SIZE // PAGE)
    print(f"system call (getppid) {syscall * 1e6:.2f} µs, first touch of a page {page * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
