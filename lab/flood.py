"""Router B's side of the probe-flood test: bursts of foreign ICMP echo replies.

Run in router B's netns (``ip netns exec rb python -m lab.flood ...``). It
sends crafted echo replies from the probe target to router A's probe source
over one line, with identifiers the daemon did not use (the last two are
fixed and its own are random: a collision is a 1-in-65536 event that the
daemon's nonce check turns into an ignored reply anyway).

Each burst starts `lead` seconds before a multiple of `interval` on
CLOCK_MONOTONIC, which every netns of the guest shares: that is when the
daemon's rounds are sent (they sit on that grid, see probe.next_grid_point),
so the real replies arrive in the middle of the burst, queued behind the
foreign ones. It prints the number of packets sent.
"""

from __future__ import annotations

import argparse
import math
import socket
import struct
import time


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_reply(src: str, dst: str, ident: int, seq: int, payload: bytes) -> bytes:
    """A whole IPv4 packet (IP_HDRINCL: the kernel fills in the IP checksum)."""
    head = struct.pack("!BBHHH", 0, 0, 0, ident, seq)
    icmp = struct.pack("!BBHHH", 0, 0, _checksum(head + payload), ident, seq) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, socket.IPPROTO_ICMP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + icmp


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dev", required=True, help="router B's end of the line")
    p.add_argument("--src", required=True, help="the probe target (the replies' source)")
    p.add_argument("--dst", required=True, help="router A's probe source address")
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--burst", type=int, default=250, help="foreign replies per round")
    p.add_argument("--lead", type=float, default=0.003, help="seconds before the grid point")
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a.dev.encode())
    # Payloads shaped like the daemon's (magic and 16 bytes), identifiers and sequences varied.
    packets = [echo_reply(a.src, a.dst, 0xF000 + i % 0x0FFF, i & 0xFFFF, b"wanb" + bytes(16))
               for i in range(a.burst)]
    sent = 0
    deadline = time.monotonic() + a.seconds
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        start = (math.floor(now / a.interval) + 1) * a.interval - a.lead
        time.sleep(max(0.0, start - time.monotonic()))
        for pkt in packets:
            try:
                sock.sendto(pkt, (a.dst, 0))
                sent += 1
            except OSError:  # ENOBUFS: the veth's queue is full; that is the flood's own loss
                pass
    print(sent, flush=True)


if __name__ == "__main__":
    main()
