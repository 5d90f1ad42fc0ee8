"""A paced UDP stream with sequence numbers, and its counter (guest side).

``python -m bench.traffic send`` runs on router A: it sends ``count``
datagrams to ``dst:port`` at ``rate`` per second from the monotonic instant
``start`` (seconds, ``time.monotonic()``: one clock for the whole guest, so the
suite can place faults on the stream's timeline). Both processes print
``ready`` once started and then read that instant (the receiver: when to stop)
from their standard input, so that a slow start cannot eat into the stream. Datagram ``k`` is due at
``start + k / rate``; a late sender catches up in a burst rather than skipping,
so every datagram is sent. It prints one JSON line: how many were sent, send
errors (e.g. no route) and how late the pacing ran.

``python -m bench.traffic receive`` runs on router B (``ip netns exec rb``):
one socket in B's default VRF receives from every line because the suite sets
``net.ipv4.udp_l3mdev_accept=1``. It counts the sequence numbers of one trial
until the monotonic instant ``until`` and prints one JSON line: the number
received, duplicates, the missing sequence numbers as ``[first, last]`` ranges,
and how many arrived over each line (by interface index, from ``IP_PKTINFO``).

Only the standard library: both start in about 0.1 s in the guest.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

HEADER = struct.Struct("!II")  # trial id, sequence number
PAYLOAD = 64  # bytes per datagram, header included
IP_PKTINFO = 8


def _instant() -> float:
    """Say we are ready, then read the instant we were waiting for."""
    print("ready", flush=True)
    return float(sys.stdin.readline())


def send(dst: str, port: int, rate: float, count: int, trial: int) -> dict[str, float]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = _instant()
    pad = b"\0" * (PAYLOAD - HEADER.size)
    errors = 0
    late_max = 0.0
    late_sum = 0.0
    for k in range(count):
        due = start + k / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
            now = time.monotonic()
        late = now - due
        late_max = max(late_max, late)
        late_sum += late
        try:
            sock.sendto(HEADER.pack(trial, k) + pad, (dst, port))
        except OSError:
            errors += 1  # no route, no buffer: lost like any other
    return {"sent": count, "errors": errors, "late_max_ms": late_max * 1e3,
            "late_mean_ms": late_sum / max(count, 1) * 1e3}


def ranges(missing: list[int]) -> list[list[int]]:
    """[3, 4, 5, 9] -> [[3, 5], [9, 9]]"""
    out: list[list[int]] = []
    for k in missing:
        if out and out[-1][1] == k - 1:
            out[-1][1] = k
        else:
            out.append([k, k])
    return out


def receive(port: int, count: int, trial: int) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind(("0.0.0.0", port))
    until = _instant()
    seen = bytearray(count)
    dups = 0
    alien = 0
    per_if: dict[int, int] = {}
    while True:
        left = until - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data, anc, _flags, _addr = sock.recvmsg(2048, 64)
        except (TimeoutError, socket.timeout):
            break
        if len(data) < HEADER.size:
            alien += 1
            continue
        got_trial, seq = HEADER.unpack_from(data)
        if got_trial != trial or seq >= count:
            alien += 1
            continue
        if seen[seq]:
            dups += 1
        seen[seq] = 1
        for level, kind, value in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                index = struct.unpack_from("=i", value)[0]
                per_if[index] = per_if.get(index, 0) + 1
    missing = [k for k in range(count) if not seen[k]]
    return {"received": count - len(missing), "duplicates": dups, "alien": alien,
            "missing": ranges(missing), "per_ifindex": {str(k): v for k, v in sorted(per_if.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.traffic")
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("send")
    s.add_argument("--dst", required=True)
    s.add_argument("--rate", type=float, required=True)
    r = sub.add_parser("receive")
    for p in (s, r):
        p.add_argument("--port", type=int, default=9000)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--trial", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "send":
        result: dict[str, object] = dict(send(args.dst, args.port, args.rate, args.count, args.trial))
    else:
        result = receive(args.port, args.count, args.trial)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
