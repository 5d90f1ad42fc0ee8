"""Does TEQL over veth still crash the guest kernel? (docs/caveats.md)

The benchmark suite's first runs crashed the 6.1 guest with a use-after-free
(``refcount_t: underflow`` in ``veth_xmit`` called from ``teql_master_xmit``)
when a carrier was cut under traffic (docs/benchmarks.md, "TEQL over veth").
This measures it on any lab kernel: a UDP flood through teql0 over two veth
slaves while line 0's far end goes down and up again, ``--cycles`` times, and
the kernel log read for the warning after every cycle.

Host side, one guest per kernel, a summary line each::

    .venv/bin/python -m bench.veth_uaf [--cycles N] [--kernel SPEC]...

Guest side (what each guest runs): ``python -m bench.veth_uaf guest``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time

WARNING = re.compile(r"refcount_t: underflow|use-after-free|BUG: |general protection|Kernel mode fault")
RESULT = "veth-uaf result:"


def _flood(dst: str, seconds: float) -> None:
    """Send UDP datagrams to ``dst`` as fast as this process can."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    payload = b"x" * 64
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(200):
            try:
                sock.sendto(payload, (dst, 9))
            except OSError:
                pass


def _kernel_warnings(kmsg: int) -> list[str]:
    found: list[str] = []
    while True:
        try:
            record = os.read(kmsg, 8192).decode("utf-8", "replace")
        except BlockingIOError:
            return found
        except OSError:  # EPIPE: records were overwritten; go on reading
            continue
        text = record.split(";", 1)[-1].strip()
        if WARNING.search(text):
            found.append(text)


def _counters() -> dict[str, int]:
    def read(dev: str, name: str) -> int:
        try:
            return int(open(f"/sys/class/net/{dev}/statistics/{name}").read())
        except (OSError, ValueError):
            return 0
    return {"wan0_dropped": read("wan0", "tx_dropped"), "wan0_tx": read("wan0", "tx_packets"),
            "wan1_tx": read("wan1", "tx_packets"), "teql0_tx": read("teql0", "tx_packets")}


MODES = {
    "teql": "through teql0, line 0 cut and restored",
    "teql-nocut": "through teql0, no cut (control)",
    "direct": "straight over wan0, no teql0, line 0 cut and restored (control)",
}


def guest(cycles: int, mode: str = "teql") -> int:
    from lab.topo import FAR_ADDR, Lab, ip, reset_teql

    reset_teql(1)
    lab = Lab()
    lab.teardown()
    lab.setup(2, up=True)
    if mode == "direct":
        ip("addr", "add", "10.0.0.0/31", "dev", "wan0")
        ip("route", "replace", "default", "dev", "wan0")
    else:
        lab.teql_by_hand()
    kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(kmsg, 0, os.SEEK_END)
    flood = subprocess.Popen([sys.executable, "-c",
                              f"import bench.veth_uaf as v; v._flood({FAR_ADDR!r}, 3600)"])
    warnings: list[str] = []
    done = 0
    try:
        time.sleep(0.5)
        before = _counters()
        for done in range(1, cycles + 1):
            if mode == "teql-nocut":
                time.sleep(0.1)
            else:
                lab.far_down(0)
                time.sleep(0.02)
                lab.far_up(0)
                time.sleep(0.03)
            warnings += _kernel_warnings(kmsg)
            if done % 10 == 0 or warnings:
                print(f"cycle {done}: {len(warnings)} kernel warning(s)", flush=True)
            if warnings:
                break
        after = _counters()
    finally:
        flood.kill()
        flood.wait()
        lab.teardown()
    delta = {k: after[k] - before[k] for k in after}
    first = warnings[0] if warnings else ""
    # Each veth drop on wan0 while TEQL sends is a NET_XMIT_DROP returned to
    # teql_master_xmit: with the 6.1 code, the freed skb goes to the next slave.
    print(f"{RESULT} kernel {os.uname().release}, {MODES[mode]}: {done} cycles under a UDP flood; "
          f"teql0 sent {delta['teql0_tx']}, wan0 {delta['wan0_tx']} + wan1 {delta['wan1_tx']}, "
          f"veth drops on wan0 (NET_XMIT_DROP to TEQL) {delta['wan0_dropped']}; "
          f"{len(warnings)} use-after-free warning(s){': ' + first if first else ''}", flush=True)
    return 0


def host(cycles: int, kernels: list[str], mode: str = "teql") -> int:
    from lab.uml import NO_RC, REPO, run_in_guest

    summary: list[str] = []
    for spec in kernels:
        lines: list[str] = []
        rc = run_in_guest(f"{sys.executable} -m bench.veth_uaf guest --mode {mode} --cycles {cycles} | tee .lab/veth-uaf.out",
                          cwd=str(REPO), timeout=60 + cycles * 2.0, kernel=spec)
        try:
            lines = (REPO / ".lab" / "veth-uaf.out").read_text().splitlines()
        except OSError:
            pass
        result = next((ln for ln in lines if ln.startswith(RESULT)), None)
        if result is None:
            last = next((ln for ln in reversed(lines) if ln.startswith("cycle")), "before the first 10 cycles")
            result = f"{RESULT} kernel ({spec}), {MODES[mode]}: the guest died (rc {rc}{', no rc' if rc == NO_RC else ''}), {last}"
        summary.append(f"{spec}: {result[len(RESULT):].strip()}")
    print("\n".join(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.veth_uaf", description=__doc__.split("\n\n")[0])
    parser.add_argument("side", nargs="?", choices=("host", "guest"), default="host")
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--kernel", action="append", default=[], metavar="SPEC")
    parser.add_argument("--mode", choices=sorted(MODES), default="teql")
    args = parser.parse_args(argv)
    if args.side == "guest":
        return guest(args.cycles, args.mode)
    return host(args.cycles, args.kernel or ["packaged", "newest"], args.mode)


if __name__ == "__main__":
    sys.exit(main())
