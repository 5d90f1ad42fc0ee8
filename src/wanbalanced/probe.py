"""ICMP echo probes through one slave, on the daemon's event loop.

A line can be dead while its carrier stays up, so each slave is probed through
itself: a raw ICMP socket bound to the slave (SO_BINDTODEVICE) makes the
kernel send out of that device whatever the routing table says (the default
route points at the equalizer). With no route through the slave, the kernel
assumes the target is on-link there and takes the source address from another
interface, as slaves usually have no address of their own. The replies
arrive on that address-less slave, where the reverse-path filter drops them
even in loose mode: probes need rp_filter 0 on the slave (the daemon's default).

A raw socket rather than an unprivileged ping socket, because those need
net.ipv4.ping_group_range, which excludes even root by default. Every raw ICMP
socket on the device sees every echo reply, so each `Prober` has its own
identifier and ignores replies that are not answers to its outstanding
requests. One reader callback and a few timers per slave: no threads.

Replies cannot be forged by anyone who does not see the requests, nor
replayed: the identifier and the first sequence number are random, and each
echo carries a fresh random nonce that its reply must bring back. The
payload holds nothing else (no clock: send times stay in the prober). A
classic BPF filter on the socket passes only echo replies with the prober's
identifier, so a flood of foreign replies is dropped in the kernel and never
wakes the daemon or fills the socket's queue ahead of a true reply. Of what
passes, identifier, sequence and source are compared before the payload, and
the checksum is computed last.

IPv6 targets get ICMPv6 echo on a second raw socket (IPPROTO_ICMPV6), bound
the same way, with the same identifier. It differs in three ways: the kernel
computes and verifies the checksum (it covers a pseudo-header); the socket
delivers the ICMPv6 message without its IP header, so the BPF filter reads
type and identifier at offsets 0 and 4 and the source comes from recvfrom;
and the kernel makes no on-link guess for a global target with no route out
of the slave (ENETUNREACH), so the far end's link-local address is the
target of choice (reached on the bound device).

Probers with the same interval keep their rounds on one grid of the loop's
clock (multiples of the interval), so that the event loop sends every
slave's round, and judges every round that times out, in one wake-up rather
than one per slave. A round whose every request has been answered is judged
at once; only missing replies wait for the timeout.
"""

from __future__ import annotations

import array
import asyncio
import errno
import functools
import hmac
import math
import secrets
import socket
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from typing import NamedTuple

__all__ = ["EchoReply", "ProbeSettings", "Prober", "RoundResult", "attach_filter", "build_echo", "build_echo6",
           "checksum_ok", "echo6_reply_filter", "echo_reply_filter", "open_socket", "parse_echo6_reply",
           "parse_echo_reply"]

ICMP_ECHOREPLY, ICMP_ECHO = 0, 8
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
ICMP6_FILTER = 1  # linux/icmpv6.h, at level IPPROTO_ICMPV6: a bitmap of the types the socket blocks
MAGIC = b"wanb"  # marks our payloads in a capture
NONCE_SIZE = 16  # random bytes per echo: a forger must guess 128 bits
SOL_RAW, ICMP_FILTER = 255, 1  # linux/icmp.h: a mask of the ICMP types the socket drops
SO_ATTACH_FILTER = 26  # asm-generic/socket.h (socket has no constant for it)
_READ_BATCH = 64  # packets per wake-up, so a flood cannot starve the loop
_RECV_SIZE = 1500  # anything longer is not one of our replies (truncation fails its nonce)
_SLOT_SLACK = 0.005  # a round sent this late still shares its slot's judge time
_live_idents: set[int] = set()  # identifiers of this process's live probers


@dataclass(frozen=True)
class ProbeSettings:
    """How one slave is probed. The configuration ([slaves.<name>.probe]) has
    already been validated; this only refuses settings that cannot work."""

    targets: tuple[str, ...]        # IPv4 or IPv6 addresses (IPv6: ICMPv6 echo)
    interval: float                 # seconds between rounds
    timeout: float                  # a reply later than this after its request counts as lost
    min_targets: int = 1            # a round is good when at least this many targets answered in time
    max_rtt: float | None = None    # a reply slower than this counts as lost (latency threshold)
    source: str | None = None       # bind the IPv4 socket to this source address

    def __post_init__(self) -> None:
        for address in self.targets:
            try:
                ip_address(address)
            except ValueError as e:
                raise ValueError(f"not an IP address: {address!r}") from e
        if self.source is not None:
            try:
                IPv4Address(self.source)
            except ValueError as e:
                raise ValueError(f"not an IPv4 address: {self.source!r}") from e
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets must be distinct and not empty: {self.targets}")
        if not 1 <= self.min_targets <= len(self.targets):
            raise ValueError(f"min_targets {self.min_targets} is not in 1..{len(self.targets)}")
        if not (self.interval > 0 and self.timeout > 0 and (self.max_rtt is None or self.max_rtt > 0)):
            raise ValueError("interval, timeout and max_rtt must be positive")
        # Sequence numbers wrap at 16 bits: a wrapped one must not meet a round still outstanding.
        if self.timeout >= self.interval * 0x8000:
            raise ValueError(f"timeout {self.timeout} is too long for interval {self.interval}")


@dataclass(frozen=True)
class RoundResult:
    """The verdict on one round, given once: as soon as every target has
    answered, else `timeout` after the round was sent. Rounds are judged in
    the order they were sent."""

    slave: str
    seq: int                        # the round's sequence number
    sent_at: float                  # clock() when the round's requests were sent
    rtts: dict[str, float]          # target -> round-trip time (s), for replies in time
    lost: tuple[str, ...]           # targets with no (timely) reply
    ok: bool                        # len(rtts) >= min_targets
    error: str | None = None        # sendto failed (e.g. ENETUNREACH, ENOBUFS, device gone): the round is not ok


@dataclass
class _Round:
    seq: int
    sent_at: float
    pending: dict[str, float] = field(default_factory=dict)  # target -> clock() at its sendto
    payloads: dict[str, bytes] = field(default_factory=dict) # target -> its echo's payload (magic + nonce)
    rtts: dict[str, float] = field(default_factory=dict)     # answered in time
    error: str | None = None
    judge: asyncio.TimerHandle | None = None

    @property
    def complete(self) -> bool:
        """Every request was sent and answered (in time or not): no later
        reply can change the verdict."""
        return self.error is None and not self.pending


def next_grid_point(now: float, interval: float) -> tuple[int, float]:
    """The first multiple k*interval at least half an interval after `now`, as
    (k, time). Two probers with the same interval compute the very same time,
    so their rounds fall due in the same turn of the event loop; the half
    interval keeps the gap after a round sent off the grid at 0.5 to 1.5
    intervals."""
    k = math.floor(now / interval + 0.5) + 1
    return k, k * interval


# -- packets -------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071); 0 over data that carries a valid one."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_echo(ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP echo request (no IP header: the kernel adds it)."""
    header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, _checksum(header + payload), ident & 0xFFFF,
                       seq & 0xFFFF) + payload


def build_echo6(ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMPv6 echo request with a zero checksum: on a raw ICMPv6 socket the
    kernel always computes it (it covers a pseudo-header the kernel writes)."""
    return struct.pack("!BBHHH", ICMPV6_ECHO_REQUEST, 0, 0, ident & 0xFFFF, seq & 0xFFFF) + payload


class EchoReply(NamedTuple):
    """An ICMP echo reply as parsed by `parse_echo_reply`: its checksum is not
    verified yet (see `checksum_ok`)."""

    source: str      # the IPv4 source address
    ident: int
    seq: int
    message: bytes   # the whole ICMP message; the payload is message[8:]


def parse_echo_reply(packet: bytes) -> EchoReply | None:
    """The ICMP echo reply in an IPv4 packet, as a raw socket receives it; None
    for anything else. The checksum is left to the caller, to compute only for
    a reply that matches an outstanding request (a cheap reject first)."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total, frag, proto = struct.unpack_from("!H2xHxB", packet, 2)
    # A fragment cannot be checked on its own; our echoes are far too small to be fragmented.
    if ihl < 20 or proto != socket.IPPROTO_ICMP or frag & 0x3FFF or not ihl + 8 <= total <= len(packet):
        return None
    icmp = packet[ihl:total]
    if icmp[0] != ICMP_ECHOREPLY or icmp[1] != 0:
        return None
    ident, seq = struct.unpack_from("!HH", icmp, 4)
    return EchoReply(socket.inet_ntoa(packet[12:16]), ident, seq, icmp)


def parse_echo6_reply(message: bytes, source: str) -> EchoReply | None:
    """The ICMPv6 echo reply a raw ICMPv6 socket received: the message itself,
    no IP header (the source comes from recvfrom). The kernel has verified its
    checksum already (it drops ICMPv6 with a bad one before any raw socket)."""
    if len(message) < 8 or message[0] != ICMPV6_ECHO_REPLY or message[1] != 0:
        return None
    ident, seq = struct.unpack_from("!HH", message, 4)
    return EchoReply(source.split("%", 1)[0], ident, seq, message)


def checksum_ok(message: bytes) -> bool:
    """True if the ICMP message carries a valid Internet checksum."""
    return _checksum(message) == 0


# -- the kernel's filter ---------------------------------------------------------

# Classic BPF (linux/filter.h, linux/bpf_common.h): an instruction is
# struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }, with code the
# OR of a class, a size, a mode or an operation, and a source. Jumps skip jt
# (true) or jf (false) instructions after the next one. A raw IPv4 socket's
# filter sees the packet from its IP header on, and returns the number of
# bytes to keep: 0 drops the packet before it is queued on the socket.
_BPF_LD, _BPF_LDX, _BPF_JMP, _BPF_RET = 0x00, 0x01, 0x05, 0x06  # classes
_BPF_H, _BPF_B = 0x08, 0x10                                     # sizes: half word, byte
_BPF_ABS, _BPF_IND, _BPF_MSH = 0x20, 0x40, 0xA0                 # modes: P[k], P[X + k], 4 * (P[k] & 0xf)
_BPF_JEQ, _BPF_K = 0x10, 0x00                                   # jump if A == k; k is the operand
_SOCK_FILTER = struct.Struct("=HBBI")


def echo_reply_filter(ident: int) -> bytes:
    """The classic BPF program that accepts only ICMP echo replies (type 0,
    code 0) with identifier `ident`, as an array of struct sock_filter."""
    program = [
        # X = the IP header's length: 4 * IHL, from the low nibble of byte 0.
        (_BPF_LDX | _BPF_B | _BPF_MSH, 0, 0, 0),
        # A = the ICMP type and code (the half word at X); echo reply is 0, 0.
        (_BPF_LD | _BPF_H | _BPF_IND, 0, 0, 0),
        (_BPF_JMP | _BPF_JEQ | _BPF_K, 0, 3, ICMP_ECHOREPLY << 8),  # else drop
        # A = the echo identifier (the half word at X + 4).
        (_BPF_LD | _BPF_H | _BPF_IND, 0, 0, 4),
        (_BPF_JMP | _BPF_JEQ | _BPF_K, 0, 1, ident & 0xFFFF),       # else drop
        (_BPF_RET | _BPF_K, 0, 0, 0xFFFFFFFF),  # accept the whole packet
        (_BPF_RET | _BPF_K, 0, 0, 0),           # drop
    ]
    # A load past the packet's end makes the program return 0: a short packet is dropped.
    return b"".join(_SOCK_FILTER.pack(*insn) for insn in program)


def echo6_reply_filter(ident: int) -> bytes:
    """The same for a raw ICMPv6 socket, whose filter sees the ICMPv6 message
    from its first byte (no IP header): echo reply (type 129, code 0) with
    identifier `ident`."""
    program = [
        (_BPF_LD | _BPF_H | _BPF_ABS, 0, 0, 0),                          # A = type and code
        (_BPF_JMP | _BPF_JEQ | _BPF_K, 0, 3, ICMPV6_ECHO_REPLY << 8),    # else drop
        (_BPF_LD | _BPF_H | _BPF_ABS, 0, 0, 4),                          # A = the identifier
        (_BPF_JMP | _BPF_JEQ | _BPF_K, 0, 1, ident & 0xFFFF),            # else drop
        (_BPF_RET | _BPF_K, 0, 0, 0xFFFFFFFF),
        (_BPF_RET | _BPF_K, 0, 0, 0),
    ]
    return b"".join(_SOCK_FILTER.pack(*insn) for insn in program)


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF program (an array of struct sock_filter) to the
    socket (SO_ATTACH_FILTER). Raises OSError if the kernel refuses it."""
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }, in
    # the native layout; array's buffer_info() gives the instructions' address
    # (the kernel copies them during the call, which `code` outlives).
    code = array.array("B", program)
    address, _ = code.buffer_info()
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("@HP", len(program) // _SOCK_FILTER.size, address))


# -- the socket ----------------------------------------------------------------


def open_socket(slave: str, ident: int, source: str | None = None,
                family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """A raw ICMP (or, for AF_INET6, ICMPv6) socket bound to `slave` (and to
    the IPv4 `source`, if given) that receives only echo replies with
    identifier `ident`.

    Raises OSError naming the slave and what failed."""
    v6 = family == socket.AF_INET6
    what = "ICMPv6" if v6 else "ICMP"
    try:
        sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    except OSError as e:
        hint = " (needs CAP_NET_RAW)" if e.errno in (errno.EPERM, errno.EACCES) else ""
        raise OSError(e.errno, f"{slave}: cannot open a raw {what} socket: {e.strerror}{hint}") from e
    try:
        # The filter first, so that the socket's queue holds almost nothing foreign.
        step = "attach its BPF filter"
        attach_filter(sock, echo6_reply_filter(ident) if v6 else echo_reply_filter(ident))
        step = f"bind to device {slave}"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, slave.encode())
        if source is not None and not v6:
            step = f"bind to source address {source}"
            sock.bind((source, 0))
        # Only echo replies wake us: not the host's unreachables, redirects or echo requests.
        if v6:
            step = "set ICMP6_FILTER"
            blocked = [0xFFFFFFFF] * 8
            blocked[ICMPV6_ECHO_REPLY >> 5] &= ~(1 << (ICMPV6_ECHO_REPLY & 31)) & 0xFFFFFFFF
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *blocked))
        else:
            step = "set ICMP_FILTER"
            sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", ~(1 << ICMP_ECHOREPLY) & 0xFFFFFFFF))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"{slave}: cannot {step}: {e.strerror}") from e
    return sock


# -- the prober ----------------------------------------------------------------


def _new_ident() -> int:
    """A random identifier that no live prober of this process has: one that
    is guessed or shared only lets replies through the BPF filter, where the
    nonce still rejects them."""
    if len(_live_idents) > 0x8000:
        raise RuntimeError("too many probers in one process")
    while (ident := secrets.randbits(16)) in _live_idents:
        pass
    _live_idents.add(ident)
    return ident


class Prober:
    """Sends a round of echo requests to every target each `interval` through
    `slave`, and calls `on_round` with each round's verdict, in order: once
    every target has answered, else `timeout` after the round was sent (rounds
    overlap when timeout > interval).

    `sock_factory` returns a socket ready to use (the default opens a raw ICMP
    socket bound to the slave); tests pass a fake. A socket is bound to the
    slave's ifindex: if the slave is deleted and created again, every round
    fails with ENODEV until the owner restarts the prober.
    """

    def __init__(self, slave: str, settings: ProbeSettings, on_round: Callable[[RoundResult], None], *,
                 sock_factory: Callable[[], socket.socket] | None = None,
                 sock6_factory: Callable[[], socket.socket] | None = None) -> None:
        self.slave = slave
        self.settings = settings
        self.on_round = on_round
        self.clock = time.monotonic  # the event loop's clock: it also places rounds on the grid
        self.ident = _new_ident()
        weakref.finalize(self, _live_idents.discard, self.ident)
        self.ignored = 0
        # One socket per IP version among the targets; the same identifier on both.
        self._families = {t: socket.AF_INET6 if ":" in t else socket.AF_INET for t in settings.targets}
        self._factories = {
            socket.AF_INET: sock_factory or functools.partial(open_socket, slave, self.ident, settings.source),
            socket.AF_INET6: sock6_factory or functools.partial(open_socket, slave, self.ident,
                                                                family=socket.AF_INET6),
        }
        self._socks: dict[int, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Random at first, then kept across stop/start: a late reply to an old
        # round cannot match a new one (its nonce would not either).
        self._seq = secrets.randbits(16)
        self._rounds: dict[int, _Round] = {}  # outstanding, oldest first
        self._slot = 0  # the next round is due at self._slot * interval on the loop's clock
        self._tick_handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return bool(self._socks)

    def start(self) -> None:
        """Open the socket and send the first round now, then one every
        `interval` on the shared grid (see `next_grid_point`), on the running
        loop. Raises OSError naming the slave if the socket cannot be opened
        or bound."""
        if self._socks:
            raise RuntimeError(f"{self.slave}: the prober is already running")
        loop = asyncio.get_running_loop()
        socks: dict[int, socket.socket] = {}
        try:
            for family in sorted(set(self._families.values())):
                sock = socks[family] = self._factories[family]()
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._read, family)
        except BaseException:
            for sock in socks.values():
                loop.remove_reader(sock.fileno())
                sock.close()
            raise
        self._loop, self._socks = loop, socks
        now = self.clock()
        self._send_round(now, now)
        self._slot, at = next_grid_point(now, self.settings.interval)
        self._tick_handle = loop.call_at(at, self._tick)

    def stop(self) -> None:
        """Close the socket and cancel every timer: no on_round after this. Idempotent."""
        socks, loop = self._socks, self._loop
        if not socks or loop is None:
            return
        self._socks = {}
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for rnd in self._rounds.values():
            if rnd.judge is not None:
                rnd.judge.cancel()
        self._rounds.clear()
        for sock in socks.values():
            loop.remove_reader(sock.fileno())
            sock.close()

    # -- rounds ------------------------------------------------------------------

    def _tick(self) -> None:
        assert self._loop is not None
        interval = self.settings.interval
        # One clock read per round (in UML each one is a system call, ~55 µs):
        # it stamps the round's requests and tells whether the loop stalled.
        now = self.clock()
        self._send_round(self._slot * interval, now)
        # A fixed schedule, so rounds do not drift by the loop's latency; after a
        # stall the missed rounds are skipped rather than sent in a burst.
        self._slot = max(self._slot + 1, math.floor(now / interval) + 1)
        self._tick_handle = self._loop.call_at(self._slot * interval, self._tick)

    def _send_round(self, due: float, now: float) -> None:
        """Send a round that was due at `due` (and is sent at `now`). Its judge
        falls due `timeout` after `due`, with every other prober's of the slot,
        unless the loop was late: then the round keeps its whole timeout."""
        assert self._socks and self._loop is not None
        seq, self._seq = self._seq, (self._seq + 1) & 0xFFFF
        rnd = _Round(seq, now)
        targets = self.settings.targets
        nonces = secrets.token_bytes(NONCE_SIZE * len(targets))  # one system call per round
        for i, target in enumerate(targets):
            payload = MAGIC + nonces[i * NONCE_SIZE:(i + 1) * NONCE_SIZE]
            rnd.payloads[target] = payload
            v6 = self._families[target] == socket.AF_INET6
            try:
                # An IPv6 link-local target is reached on the bound device (sk_bound_dev_if).
                self._socks[self._families[target]].sendto(
                    (build_echo6 if v6 else build_echo)(self.ident, seq, payload), (target, 0))
            except OSError as e:  # the round still waits for its timeout, so verdicts keep their pace
                rnd.error = rnd.error or f"sendto {target}: {e.strerror or e}"
                continue
            rnd.pending[target] = now
        start = due if now - due <= _SLOT_SLACK else now
        rnd.judge = self._loop.call_at(start + self.settings.timeout, self._timeout, seq)
        self._rounds[seq] = rnd

    def _timeout(self, seq: int) -> None:
        # Replies already queued on the socket arrived in time, even if the
        # loop has not read them yet.
        for family in list(self._socks):
            self._read(family)
        if not self._socks or seq not in self._rounds:
            return
        # Rounds are judged in order: an older one still outstanding times out
        # no later than this one (same timeout, sent earlier), so it is judged
        # first; judge it here in case its timer has not run yet this turn.
        while self._socks and self._rounds:
            oldest = next(iter(self._rounds))
            self._judge(oldest)
            if oldest == seq:
                break
        self._judge_completed()

    def _judge_completed(self) -> None:
        """Judge the oldest rounds while they are complete."""
        while self._socks and self._rounds:
            oldest = next(iter(self._rounds.values()))
            if not oldest.complete:
                return
            self._judge(oldest.seq)

    def _judge(self, seq: int) -> None:
        rnd = self._rounds.pop(seq)
        if rnd.judge is not None:
            rnd.judge.cancel()
        lost = tuple(t for t in self.settings.targets if t not in rnd.rtts)
        ok = rnd.error is None and len(rnd.rtts) >= self.settings.min_targets
        self.on_round(RoundResult(self.slave, seq, rnd.sent_at, dict(rnd.rtts), lost, ok, rnd.error))

    # -- replies -----------------------------------------------------------------

    def _read(self, family: int = socket.AF_INET) -> None:
        now: float | None = None  # one clock read per wake-up, not per reply
        for _ in range(_READ_BATCH):
            sock = self._socks.get(family)
            if sock is None:
                return
            try:
                if family == socket.AF_INET6:
                    # A raw ICMPv6 socket gives the message alone: the source comes beside it.
                    message, address = sock.recvfrom(_RECV_SIZE)
                    parsed = parse_echo6_reply(message, address[0])
                else:
                    parsed = parse_echo_reply(sock.recv(_RECV_SIZE))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error about one of our requests, reported once (sk_err)
                self.ignored += 1
                continue
            if now is None:
                now = self.clock()
            self._reply(parsed, now, family)

    def _reply(self, parsed: EchoReply | None, now: float, family: int = socket.AF_INET) -> None:
        # Cheapest checks first: identifier, sequence, source; then the nonce; the checksum last.
        rnd = self._rounds.get(parsed.seq) if parsed is not None and parsed.ident == self.ident else None
        if parsed is None or rnd is None or parsed.source not in rnd.pending:
            self.ignored += 1  # not ours, not a target of that round, late, or a duplicate
            return
        # The nonce proves the reply answers this very echo: not a forgery, not
        # a replay of a reply to an earlier round with the same sequence number.
        # (The kernel checked an ICMPv6 checksum already: it covers a pseudo-header.)
        if not hmac.compare_digest(parsed.message[8:], rnd.payloads[parsed.source]) \
                or (family == socket.AF_INET and not checksum_ok(parsed.message)):
            self.ignored += 1
            return
        source, seq = parsed.source, parsed.seq
        rtt = now - rnd.pending.pop(source)
        if self.settings.max_rtt is None or rtt <= self.settings.max_rtt:
            rnd.rtts[source] = rtt  # else it answered too slowly: lost, and a duplicate stays ignored
        if rnd.complete and next(iter(self._rounds)) == seq:
            self._judge_completed()
