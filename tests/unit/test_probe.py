"""ICMP probes: packet building and parsing, and reply matching on a real
asyncio loop with a fake socket (no privileges needed).

The fake is one end of an AF_UNIX datagram pair: each request the prober
sends reaches the test, prefixed with its target's address, and the test
writes back whole IPv4 packets as a raw socket would receive them. The BPF
filter of the real raw socket is tested at the end, in a network namespace of
its own (needs root, else skipped).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import random
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import wanbalanced.probe as probe
from wanbalanced.probe import (MAGIC, NONCE_SIZE, ProbeSettings, Prober, RoundResult, build_echo, checksum_ok,
                               next_grid_point, open_socket, parse_echo_reply)

T1, T2 = "192.0.2.1", "198.51.100.1"
LOCAL = "10.0.0.0"
WAIT = 2.0  # generous bound on waits for something that must happen


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (no pytest plugin needed)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))
    return wrapper


def checksum(data: bytes) -> int:
    """RFC 1071, written independently of the module's."""
    data += b"\0" * (len(data) % 2)
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp(type_: int, code: int, ident: int, seq: int, payload: bytes = b"", *, bad_checksum: bool = False) -> bytes:
    header = struct.pack("!BBHHH", type_, code, 0, ident, seq)
    csum = checksum(header + payload) ^ (0x0100 if bad_checksum else 0)
    return struct.pack("!BBHHH", type_, code, csum, ident, seq) + payload


def ipv4(src: str, dst: str, body: bytes, *, options: bytes = b"", frag: int = 0, proto: int = 1) -> bytes:
    ihl = (20 + len(options)) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(body), 0x1234, frag, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst)) + options
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + body


def reply(src: str, ident: int, seq: int, payload: bytes = b"x") -> bytes:
    return ipv4(src, LOCAL, icmp(0, 0, ident, seq, payload))


# -- packets -----------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"wanb12345678", b"odd"])
def test_build_echo(payload: bytes) -> None:
    packet = build_echo(0xBEEF, 0x1234, payload)
    assert checksum(packet) == 0
    assert packet[:2] == b"\x08\x00" and packet[4:8] == b"\xbe\xef\x12\x34" and packet[8:] == payload


def test_build_echo_wraps_identifier_and_sequence() -> None:
    assert build_echo(0x1FFFF, 0x10002, b"")[4:8] == b"\xff\xff\x00\x02"


def test_parse_echo_reply() -> None:
    assert parse_echo_reply(reply(T1, 0xBEEF, 7, b"pay")) == (T1, 0xBEEF, 7, icmp(0, 0, 0xBEEF, 7, b"pay"))
    # The ICMP header starts after IHL words, not at a fixed 20 bytes.
    with_options = ipv4(T2, LOCAL, icmp(0, 0, 1, 2, b"p"), options=b"\x01\x01\x01\x00")
    assert parse_echo_reply(with_options) == (T2, 1, 2, icmp(0, 0, 1, 2, b"p"))
    # Bytes past the IP total length are not part of the ICMP message.
    assert parse_echo_reply(reply(T1, 1, 2) + b"\0\0") == (T1, 1, 2, icmp(0, 0, 1, 2, b"x"))


def test_checksum_is_left_to_the_caller() -> None:
    # parse_echo_reply does not checksum (the prober does, last); checksum_ok does.
    good, bad = icmp(0, 0, 1, 2, b"payload"), icmp(0, 0, 1, 2, b"payload", bad_checksum=True)
    parsed = parse_echo_reply(ipv4(T1, LOCAL, bad))
    assert parsed is not None and parsed.message == bad
    assert checksum_ok(good) and not checksum_ok(bad)


GOOD = reply(T1, 1, 2, b"payload")
BAD_PACKETS = {
    "empty": b"",
    "garbage": b"\xde\xad\xbe\xef" * 3,
    "ipv6": b"\x60" + GOOD[1:],
    "ihl too small": b"\x44" + GOOD[1:],
    "not icmp": ipv4(T1, LOCAL, icmp(0, 0, 1, 2), proto=17),
    "fragment": ipv4(T1, LOCAL, icmp(0, 0, 1, 2), frag=0x2000),
    "truncated ip header": GOOD[:19],
    "truncated icmp header": GOOD[:27],
    "truncated payload": GOOD[:-1],  # shorter than the IP total length
    "echo request": ipv4(T1, LOCAL, icmp(8, 0, 1, 2)),
    "unreachable": ipv4(T1, LOCAL, icmp(3, 1, 1, 2) + GOOD[:28]),
    "code not 0": ipv4(T1, LOCAL, icmp(0, 1, 1, 2)),
}


@pytest.mark.parametrize("name", BAD_PACKETS)
def test_parse_rejects(name: str) -> None:
    assert parse_echo_reply(BAD_PACKETS[name]) is None


def test_parse_never_raises() -> None:
    # Truncated, extended and mangled replies: the parser returns a reply or
    # None, never raises, and what it returns is really in the packet.
    rng = random.Random(4)
    accepted = rejected = 0
    for _ in range(5000):
        base = rng.choice([GOOD, b""])
        packet = bytearray(base[:rng.randrange(len(base) + 1)] + rng.randbytes(rng.randrange(40)))
        if packet and rng.random() < 0.5:
            packet[0] = 0x40 | rng.randrange(16)
        data = bytes(packet)
        parsed = parse_echo_reply(data)
        if data.startswith(GOOD):  # the whole reply, with trailing bytes beyond its total length
            assert parsed is not None and (parsed.source, parsed.ident, parsed.seq) == (T1, 1, 2)
            assert parsed.message == GOOD[20:]
        if len(data) < 28 or data[0] >> 4 != 4:  # no IPv4 header and ICMP header in it
            assert parsed is None
        if parsed is None:
            rejected += 1
        else:
            accepted += 1
            assert parsed.message[0] == 0 and len(parsed.message) >= 8 and parsed.message in data
            assert socket.inet_aton(parsed.source) == data[12:16]
    assert accepted > 100 and rejected > 100  # both paths were taken, many times


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"targets": ()}, "targets"),
    ({"targets": (T1, T1)}, "targets"),
    ({"targets": ("example.org",)}, "IP address"),
    ({"min_targets": 2}, "min_targets"),
    ({"min_targets": 0}, "min_targets"),
    ({"interval": 0.0}, "positive"),
    ({"max_rtt": -1.0}, "positive"),
    ({"source": "::1"}, "IPv4"),
    ({"timeout": 1e6}, "too long"),
])
def test_settings_refused(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ProbeSettings(**{"targets": (T1,), "interval": 0.1, "timeout": 0.1, **kwargs})


# -- the prober with a fake socket --------------------------------------------------


class FakeRaw(socket.socket):
    """Stands in for the raw socket; `fail` makes sendto raise that errno."""

    fail: int | None = None

    def sendto(self, data: Any, address: Any, /) -> int:  # type: ignore[override]
        if self.fail is not None:
            raise OSError(self.fail, os.strerror(self.fail))
        return self.send(socket.inet_aton(address[0]) + bytes(data))


class Harness:
    def __init__(self, *targets: str, interval: float = 10.0, timeout: float = 0.1, fail: int | None = None,
                 **kwargs: Any) -> None:
        self.fail = fail
        self.settings = ProbeSettings(targets or (T1,), interval, timeout, **kwargs)
        self.results: asyncio.Queue[RoundResult] = asyncio.Queue()
        self.fake: FakeRaw | None = None
        self.peer: socket.socket | None = None
        self.prober = Prober("wan0", self.settings, self.results.put_nowait, sock_factory=self._factory)
        self.first = self.prober._seq  # the first round's (random) sequence number

    def _factory(self) -> socket.socket:
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        peer.setblocking(False)
        self.fake, self.peer = FakeRaw(fileno=ours.detach()), peer
        self.fake.fail = self.fail
        return self.fake

    async def request(self) -> tuple[str, int, int, bytes]:
        """The next echo request sent: (target, ident, seq, whole ICMP message)."""
        assert self.peer is not None
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.peer, 4096), WAIT)
        message = data[4:]
        assert message[0] == 8 and checksum(message) == 0
        ident, seq = struct.unpack_from("!HH", message, 4)
        return socket.inet_ntoa(data[:4]), ident, seq, message

    def answer(self, request: tuple[str, int, int, bytes], *, src: str | None = None, ident: int | None = None,
               seq: int | None = None, payload: bytes | None = None) -> None:
        """Reply as the target would (echoing the payload), or with one field changed."""
        target, rid, rseq, message = request
        assert self.peer is not None
        self.peer.send(reply(src or target, rid if ident is None else ident, rseq if seq is None else seq,
                             message[8:] if payload is None else payload))

    async def result(self) -> RoundResult:
        return await asyncio.wait_for(self.results.get(), WAIT)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.001)


@run_async
async def test_answered_round_is_ok() -> None:
    h = Harness(timeout=0.2)
    h.prober.start()
    assert h.prober.running
    req = await h.request()
    assert req[:3] == (T1, h.prober.ident, h.first) and req[3][8:12] == b"wanb"
    h.answer(req)
    result = await h.result()
    h.prober.stop()
    assert result.slave == "wan0" and result.seq == h.first and result.ok and result.error is None
    assert set(result.rtts) == {T1} and result.rtts[T1] >= 0 and result.lost == ()
    assert h.prober.ignored == 0


@run_async
async def test_missing_reply_is_lost_after_timeout() -> None:
    h = Harness()
    h.prober.start()
    await h.request()
    result = await h.result()
    h.prober.stop()
    assert not result.ok and result.rtts == {} and result.lost == (T1,) and result.error is None


@run_async
async def test_late_reply_is_ignored() -> None:
    h = Harness(interval=0.2, timeout=0.02)
    h.prober.start()
    req = await h.request()
    first = await h.result()
    h.answer(req)  # round 0 was already judged
    await until(lambda: h.prober.ignored == 1)
    second_req = await h.request()
    assert second_req[2] == (h.first + 1) & 0xFFFF
    h.answer(req)  # still round 0's sequence: must not count for round 1
    await until(lambda: h.prober.ignored == 2)
    second = await h.result()
    h.prober.stop()
    assert not first.ok and not second.ok and second.seq == second_req[2] and second.lost == (T1,)


@run_async
async def test_duplicate_reply_is_ignored() -> None:
    h = Harness(timeout=0.2)
    h.prober.start()
    req = await h.request()
    h.answer(req)
    h.answer(req)
    result = await h.result()
    h.prober.stop()
    assert result.ok and set(result.rtts) == {T1}
    assert h.prober.ignored == 1


@run_async
async def test_foreign_and_bad_replies_are_ignored() -> None:
    h = Harness(timeout=0.3)
    h.prober.start()
    req = await h.request()
    target, ident, seq, message = req
    h.answer(req, ident=ident ^ 1)   # another prober's (or ping's) reply
    h.answer(req, seq=seq + 1)       # a sequence not outstanding
    h.answer(req, src=T2)            # from an address we did not probe
    assert h.peer is not None
    for bad in BAD_PACKETS.values():
        h.peer.send(bad or b"\0")    # (an empty datagram would read as b"" too)
    h.peer.send(ipv4(target, LOCAL, icmp(0, 0, ident, seq, message[8:], bad_checksum=True)))
    expected = 3 + len(BAD_PACKETS) + 1
    await until(lambda: h.prober.ignored == expected)
    assert h.prober.running
    h.answer(req)                    # the real answer still counts
    result = await h.result()
    h.prober.stop()
    assert result.ok and set(result.rtts) == {T1}
    assert h.prober.ignored == expected


@run_async
async def test_wrong_identifier_only_is_lost() -> None:
    h = Harness()
    h.prober.start()
    req = await h.request()
    h.answer(req, ident=req[1] ^ 0x8000)
    result = await h.result()
    h.prober.stop()
    assert not result.ok and result.lost == (T1,) and h.prober.ignored == 1


@pytest.mark.parametrize(("min_targets", "ok"), [(1, True), (2, False)])
@run_async
async def test_min_targets(min_targets: int, ok: bool) -> None:
    h = Harness(T1, T2, timeout=0.2, min_targets=min_targets)
    h.prober.start()
    requests = {r[0]: r for r in [await h.request(), await h.request()]}
    assert set(requests) == {T1, T2} and {r[2] for r in requests.values()} == {h.first}
    h.answer(requests[T2])
    result = await h.result()
    h.prober.stop()
    assert result.ok is ok and set(result.rtts) == {T2} and result.lost == (T1,)


@run_async
async def test_reply_slower_than_max_rtt_is_lost() -> None:
    h = Harness(timeout=0.5, max_rtt=0.01)
    h.prober.start()
    req = await h.request()
    await asyncio.sleep(0.05)
    h.answer(req)
    h.answer(req)  # its duplicate is still a duplicate
    result = await h.result()
    h.prober.stop()
    assert not result.ok and result.rtts == {} and result.lost == (T1,)
    assert h.prober.ignored == 1


@run_async
async def test_overlapping_rounds_each_judged_once_in_order() -> None:
    h = Harness(interval=0.01, timeout=0.2)
    h.prober._seq = 0xFFFE  # also crosses the 16-bit wrap

    async def echo() -> None:
        while True:
            h.answer(await h.request())

    h.prober.start()
    echoer = asyncio.create_task(echo())
    results = [await h.result() for _ in range(5)]
    h.prober.stop()
    echoer.cancel()
    assert [r.seq for r in results] == [0xFFFE, 0xFFFF, 0, 1, 2]
    assert all(r.ok for r in results)
    assert [b.sent_at > a.sent_at for a, b in zip(results, results[1:])] == [True] * 4


@run_async
async def test_stop_prevents_further_callbacks() -> None:
    h = Harness(interval=0.01, timeout=0.03)
    h.prober.start()
    await h.request()
    await asyncio.sleep(0.02)  # a few rounds outstanding
    h.prober.stop()
    h.prober.stop()  # idempotent
    judged = h.results.qsize()
    assert not h.prober.running
    assert h.fake is not None and h.fake.fileno() == -1  # closed
    await asyncio.sleep(0.1)
    assert h.results.qsize() == judged


@run_async
async def test_stop_from_the_callback() -> None:
    h = Harness(interval=0.01, timeout=0.05)
    seen: list[RoundResult] = []

    def on_round(result: RoundResult) -> None:
        seen.append(result)
        h.prober.stop()

    h.prober.on_round = on_round
    h.prober.start()
    await until(lambda: bool(seen))
    await asyncio.sleep(0.1)
    assert [r.seq for r in seen] == [h.first] and not h.prober.running


@run_async
async def test_restart_keeps_sequence() -> None:
    h = Harness(timeout=0.01)
    h.prober.start()
    await h.request()
    await h.result()
    h.prober.stop()
    h.prober.start()
    req = await h.request()
    h.prober.stop()
    assert req[2] == (h.first + 1) & 0xFFFF  # a late reply to the old round cannot answer the new one


@run_async
async def test_sendto_error_fails_the_round() -> None:
    h = Harness(T1, T2, min_targets=1, fail=errno.ENETUNREACH)
    h.prober.start()
    result = await h.result()
    h.prober.stop()
    assert not result.ok and result.rtts == {} and result.lost == (T1, T2)
    assert result.error is not None and "Network is unreachable" in result.error and T1 in result.error
    assert h.peer is not None
    with pytest.raises(BlockingIOError):  # no echo left: every sendto failed
        h.peer.recv(4096)


@run_async
async def test_probers_have_distinct_identifiers() -> None:
    settings = ProbeSettings((T1,), 0.1, 0.1)
    probers = [Prober(f"wan{i}", settings, lambda r: None) for i in range(300)]
    idents = {p.ident for p in probers}
    assert len(idents) == 300 and all(0 <= i <= 0xFFFF for i in idents)


def test_identifiers_and_first_sequences_are_random() -> None:
    # Neither is derived from the pid or a counter, nor does every prober
    # start at sequence 0: an off-path forger has 32 bits to guess before the
    # nonce. (With random values, 64 probers sharing one high byte of the
    # identifier, or one first sequence, happens with probability ~2^-500.)
    settings = ProbeSettings((T1,), 0.1, 0.1)
    probers = [Prober(f"wan{i}", settings, lambda r: None) for i in range(64)]
    assert len({p.ident >> 8 for p in probers}) > 1
    assert len({p.ident & 0xFF for p in probers}) > 1
    assert len({p._seq for p in probers}) > 1


def test_a_dead_probers_identifier_can_be_reused() -> None:
    settings = ProbeSettings((T1,), 0.1, 0.1)
    prober = Prober("wan0", settings, lambda r: None)
    ident = prober.ident
    assert ident in probe._live_idents
    del prober
    assert ident not in probe._live_idents


@run_async
async def test_start_fails_naming_the_slave() -> None:
    # Without CAP_NET_RAW the raw socket is refused; with it, the device does not exist.
    prober = Prober("nosuchwan9", ProbeSettings((T1,), 0.1, 0.1), lambda r: None)
    with pytest.raises(OSError, match="nosuchwan9"):
        prober.start()
    assert not prober.running


@run_async
async def test_answered_round_is_judged_at_once() -> None:
    h = Harness(T1, T2, timeout=30.0)  # far beyond WAIT: only an early verdict arrives in time
    h.prober.start()
    for _ in range(2):
        h.answer(await h.request())
    result = await h.result()
    h.prober.stop()
    assert result.ok and set(result.rtts) == {T1, T2} and result.lost == ()


@run_async
async def test_partly_answered_round_waits_for_its_timeout() -> None:
    # One target answered is enough for the verdict, but the other may still
    # answer in time: its loss is only known at the timeout.
    h = Harness(T1, T2, timeout=0.3)
    h.prober.start()
    requests = {r[0]: r for r in [await h.request(), await h.request()]}
    h.answer(requests[T2])
    await asyncio.sleep(0.1)
    assert h.results.empty()
    h.answer(requests[T1])
    result = await h.result()
    h.prober.stop()
    assert result.ok and set(result.rtts) == {T1, T2} and result.lost == ()


@run_async
async def test_rounds_are_judged_in_order_when_a_later_one_completes_first() -> None:
    h = Harness(interval=0.05, timeout=30.0)
    h.prober.start()
    first, second = await h.request(), await h.request()
    assert (first[2], second[2]) == (h.first, (h.first + 1) & 0xFFFF)
    h.answer(second)
    await asyncio.sleep(0.02)
    assert h.results.empty()  # the second round is complete, but the first is still outstanding
    h.answer(first)
    results = [await h.result(), await h.result()]
    h.prober.stop()
    assert [r.seq for r in results] == [first[2], second[2]] and all(r.ok for r in results)


@pytest.mark.parametrize("interval", [0.01, 0.1, 0.3, 1.0, 2.5])
def test_next_grid_point(interval: float) -> None:
    rng = random.Random(7)
    for _ in range(1000):
        now = rng.uniform(0, 1e6)
        k, at = next_grid_point(now, interval)
        assert at == k * interval
        assert 0.5 * interval - 1e-6 <= at - now < 1.5 * interval + 1e-6


@run_async
async def test_probers_started_apart_send_and_judge_together() -> None:
    a, b = Harness(interval=0.1, timeout=0.08), Harness(interval=0.1, timeout=0.08)
    loop = asyncio.get_running_loop()
    for _ in range(10):
        # Start early enough in a slot that b, started 13 to 40 ms later, is
        # still in it (the grid point moves on when now / interval + 0.5
        # crosses an integer); retry if the machine was too slow for that.
        while (loop.time() / 0.1 + 0.5) % 1 > 0.5:
            await asyncio.sleep(0.005)
        began = loop.time()
        a.prober.start()
        await asyncio.sleep(0.013)
        b.prober.start()
        if loop.time() - began < 0.04:
            break
        a.prober.stop()
        b.prober.stop()
    handles = [p.prober._tick_handle for p in (a, b)]
    assert handles[0] is not None and handles[1] is not None
    assert handles[0].when() == handles[1].when()
    assert abs(handles[0].when() / 0.1 - round(handles[0].when() / 0.1)) < 1e-6  # on the grid
    # Their second rounds' judges (unanswered) fall due in the same turn of the loop too.
    second = [p.prober._seq for p in (a, b)]
    await until(lambda: a.prober._seq == second[0] + 1 and b.prober._seq == second[1] + 1)
    judges = [p.prober._rounds[seq].judge for p, seq in zip((a, b), second)]
    a.prober.stop()
    b.prober.stop()
    assert judges[0] is not None and judges[1] is not None and judges[0].when() == judges[1].when()


@run_async
async def test_a_round_sent_late_keeps_its_whole_timeout() -> None:
    h = Harness(interval=0.1, timeout=0.08)
    h.prober.start()
    await h.request()
    handle = h.prober._tick_handle
    assert handle is not None
    slot = handle.when()
    # The loop is 50 ms late for the next slot (as under load): the judge of
    # that round must still give replies the whole 80 ms from the send.
    handle.cancel()
    await asyncio.sleep(max(0.0, slot + 0.05 - asyncio.get_running_loop().time()))
    h.prober._tick()
    sent_at = asyncio.get_running_loop().time()
    seq = h.prober._seq - 1
    judge = h.prober._rounds[seq].judge
    h.prober.stop()
    assert judge is not None and judge.when() >= sent_at + 0.08 - 1e-3


# -- nonces: forged and replayed replies ------------------------------------------


@run_async
async def test_payload_is_a_fresh_nonce_without_clock() -> None:
    h = Harness(T1, T2, interval=0.01, timeout=0.005)
    readings: list[float] = []
    loop_time = asyncio.get_running_loop().time

    def clock() -> float:  # the loop's clock, with every reading kept to look for
        readings.append(loop_time())
        return readings[-1]

    h.prober.clock = clock
    h.prober.start()
    requests = [await h.request() for _ in range(6)]  # three rounds, two targets
    h.prober.stop()
    payloads = [r[3][8:] for r in requests]
    assert all(len(p) == len(MAGIC) + NONCE_SIZE and p.startswith(MAGIC) for p in payloads)
    assert len(set(payloads)) == 6  # per echo: per target and per round
    assert readings
    for p in payloads:
        for t in readings:
            for stamp in (struct.pack("!d", t), struct.pack("=d", t), struct.pack("!f", t), struct.pack("!Q", int(t))):
                assert stamp not in p


@run_async
async def test_reply_with_the_wrong_nonce_is_ignored() -> None:
    h = Harness(timeout=0.3)
    h.prober.start()
    req = await h.request()
    nonce = req[3][8:]
    forged = [
        MAGIC + bytes(NONCE_SIZE),                     # right id, seq, source; guessed nonce
        nonce[:-1] + bytes([nonce[-1] ^ 1]),           # one bit off
        nonce[:-1],                                    # truncated
        nonce + b"\0",                                 # padded
        b"",
    ]
    for payload in forged:
        h.answer(req, payload=payload)
    await until(lambda: h.prober.ignored == len(forged))
    assert h.results.empty()
    h.answer(req)  # the true reply still counts
    result = await h.result()
    h.prober.stop()
    assert result.ok and set(result.rtts) == {T1} and h.prober.ignored == len(forged)


@run_async
async def test_wrong_nonce_only_is_lost() -> None:
    h = Harness()
    h.prober.start()
    req = await h.request()
    h.answer(req, payload=MAGIC + bytes(NONCE_SIZE))
    result = await h.result()
    h.prober.stop()
    assert not result.ok and result.lost == (T1,) and h.prober.ignored == 1


@run_async
async def test_replayed_reply_is_ignored_when_its_sequence_comes_round_again() -> None:
    # A recorded reply to round s, replayed when the 16-bit sequence has
    # wrapped back to s (2^16 rounds later; here the counter is set back).
    h = Harness(interval=10.0, timeout=0.05)
    h.prober.start()
    old = await h.request()
    h.answer(old)
    assert (await h.result()).ok
    h.prober.stop()
    h.prober._seq = old[2]
    h.prober.start()
    new = await h.request()
    assert new[2] == old[2] and new[3][8:] != old[3][8:]
    h.answer(old)  # the recording: same identifier, sequence and source, old nonce
    result = await h.result()
    h.prober.stop()
    assert not result.ok and result.lost == (T1,) and h.prober.ignored == 1


@run_async
async def test_checksum_is_computed_only_for_a_reply_that_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(T1, T2, timeout=0.3)
    h.prober.start()
    req = await h.request()
    await h.request()
    calls: list[bytes] = []
    real = probe._checksum

    def counting(data: bytes) -> int:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(probe, "_checksum", counting)
    h.answer(req, ident=req[1] ^ 1)
    h.answer(req, seq=(req[2] + 7) & 0xFFFF)
    h.answer(req, src="203.0.113.9")
    h.answer(req, payload=MAGIC + bytes(NONCE_SIZE))
    await until(lambda: h.prober.ignored == 4)
    assert calls == []  # rejected on identifier, sequence, source or nonce: no checksum
    h.answer(req)
    await until(lambda: len(calls) == 1)
    h.prober.stop()
    assert calls == [icmp(0, 0, req[1], req[2], req[3][8:])]


# -- the BPF filter on a real raw socket -------------------------------------------

CLONE_NEWNET = 0x40000000


def _in_new_netns(body: Callable[[], Any]) -> Any:
    """Run `body` in a thread moved to a fresh network namespace (a network
    namespace is per thread), with lo up; return its result or raise its error."""
    import ctypes
    import threading

    from pyroute2 import IPRoute

    out: dict[str, Any] = {}

    def thread() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            out["result"] = body()
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            out["error"] = e

    t = threading.Thread(target=thread)
    t.start()
    t.join(WAIT * 5)
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: raw sockets and a network namespace")
def test_bpf_filter_passes_only_our_echo_replies() -> None:
    ident = 0x5A17

    def body() -> list[bytes]:
        receiver = open_socket("lo", ident)
        sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
        try:
            local = "127.0.0.1"
            packets = [
                ipv4(local, local, icmp(0, 0, ident ^ 1, 1, b"foreign")),
                ipv4(local, local, icmp(0, 0, ident ^ 0x8000, 2, b"foreign")),
                ipv4(local, local, icmp(0, 0, ident ^ 0x0100, 3, b"foreign")),
                ipv4(local, local, icmp(0, 1, ident, 4, b"code 1")),  # ICMP_FILTER passes it, BPF must not
                ipv4(local, local, icmp(0, 0, ident, 5, b"ours")),
                # IP options move the ICMP header: the filter reads it at 4 * IHL.
                ipv4(local, local, icmp(0, 0, ident, 6, b"ours, options"), options=b"\x01\x01\x01\x00"),
                ipv4(local, local, icmp(0, 0, 0xFFFF - ident, 7, b"foreign")),
            ] + [ipv4(local, local, icmp(0, 0, (ident + 1 + i) & 0xFFFF, 100 + i, b"flood")) for i in range(200)] \
              + [ipv4(local, local, icmp(0, 0, ident, 8, b"ours, after the flood"))]
            for packet in packets:
                sender.sendto(packet, (local, 0))
            receiver.settimeout(0.2)
            got = []
            while True:
                try:
                    got.append(receiver.recv(2048))
                except (TimeoutError, socket.timeout):
                    return got
        finally:
            receiver.close()
            sender.close()

    # (type, code, identifier, sequence) of each packet delivered, read at 4 * IHL.
    got = [struct.unpack_from("!BBxxHH", p, (p[0] & 0x0F) * 4) for p in _in_new_netns(body)]
    assert got == [(0, 0, ident, 5), (0, 0, ident, 6), (0, 0, ident, 8)]
