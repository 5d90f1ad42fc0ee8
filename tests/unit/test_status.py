"""The control socket, over real unix sockets (no kernel involved)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kernelstate import config, converged

from wanbalanced import status
from wanbalanced.cli import main
from wanbalanced.core import Core


def published() -> status.Status:
    core = Core(config(), 0.0)
    snap = converged()
    core.observe(snap, 0.0)
    return status.build(config(), core, snap, version="test", done={}, faults=(),
                        reload_successful=True, reload_success_time=0.0, resyncs=0, mono_now=0.0, wall_now=0.0)


def ask(path: Path) -> dict[str, Any]:
    return status.query(str(path), timeout=2.0)


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


def test_starting_daemon_answers_starting(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"

    async def main_() -> dict[str, Any]:
        server = await status.serve(str(sock), lambda: None)
        try:
            answer: dict[str, Any] = await in_thread(lambda: ask(sock))
            return answer
        finally:
            server.close()

    answer = asyncio.run(main_())
    assert status.starting(answer) and isinstance(answer["pid"], int)


def test_published_status_is_answered(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    st = published()

    async def main_() -> dict[str, Any]:
        server = await status.serve(str(sock), lambda: st)
        try:
            answer: dict[str, Any] = await in_thread(lambda: ask(sock))
            return answer
        finally:
            server.close()

    answer = asyncio.run(main_())
    assert not status.starting(answer)
    assert [s["slave"] for s in answer["slaves"]] == ["wan0", "wan1"]


def test_second_daemon_refuses_while_the_first_is_starting(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"

    async def main_() -> None:
        first = await status.serve(str(sock), lambda: None)
        try:
            with pytest.raises(status.AlreadyRunning):
                await status.serve(str(sock), lambda: None)
            assert sock.exists(), "the first daemon's socket was unlinked"
        finally:
            first.close()

    asyncio.run(main_())


@pytest.mark.parametrize("reply", [b"", b"garbage\n", b"[1, 2]\n", b'{"error": "busy"}\n'])
def test_any_listener_counts_as_a_running_daemon(tmp_path: Path, reply: bytes) -> None:
    sock = tmp_path / "control.sock"

    async def main_() -> None:
        async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(reply)
            await writer.drain()
            writer.close()

        other = await asyncio.start_unix_server(odd, str(sock))
        try:
            with pytest.raises(status.AlreadyRunning):
                await status.serve(str(sock), lambda: None)
        finally:
            other.close()

    asyncio.run(main_())


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens: a daemon that died

    async def main_() -> dict[str, Any]:
        server = await status.serve(str(sock), lambda: None)
        try:
            answer: dict[str, Any] = await in_thread(lambda: ask(sock))
            return answer
        finally:
            server.close()

    assert status.starting(asyncio.run(main_()))


def cli_beside_a_starting_daemon(sock: Path, argv: list[str]) -> int:
    """main(argv) while a daemon that has published no status yet listens on `sock`."""
    async def main_() -> int:
        server = await status.serve(str(sock), lambda: None)
        try:
            code: int = await in_thread(lambda: main(argv))
            return code
        finally:
            server.close()

    return asyncio.run(main_())


def test_status_cli_says_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "control.sock"
    assert cli_beside_a_starting_daemon(sock, ["status", "--socket", str(sock)]) == 4
    assert "is starting: no status yet" in capsys.readouterr().err
    assert cli_beside_a_starting_daemon(sock, ["status", "--socket", str(sock), "--json"]) == 4
    assert json.loads(capsys.readouterr().out)["state"] == "starting"


def test_status_cli_without_daemon_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == 3
    assert "does not exist" in capsys.readouterr().err


def test_oversized_request_gets_a_clear_error_and_the_server_goes_on(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    st = published()

    def oversized() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(10)
            c.connect(str(sock))
            with contextlib.suppress(ConnectionError):  # the server may close while we still send
                c.sendall(b"x" * (100 * 1024) + b"\n")
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            return data  # recv() returned b"": the server closed the connection

    async def main_() -> tuple[bytes, dict[str, Any]]:
        server = await status.serve(str(sock), lambda: st)
        try:
            got: bytes = await in_thread(oversized)
            answer: dict[str, Any] = await in_thread(lambda: ask(sock))
            return got, answer
        finally:
            server.close()

    got, answer = asyncio.run(main_())
    assert json.loads(got) == {"error": f"request longer than {status.MAX_REQUEST} bytes"}
    assert answer["slaves"], "the next client is answered as usual"


class Huge:
    """A status whose answer cannot fit in the socket buffers."""

    def to_json(self) -> dict[str, Any]:
        return {"padding": "x" * (8 << 20)}


def test_a_client_that_never_reads_cannot_hold_a_handler(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"

    def stuck_client() -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(sock))
            c.sendall(b"status\n")
            # Never read; wait for the server to give up on us (a hang guard,
            # far above the server's io_timeout, not a measurement).
            p = select.poll()
            p.register(c, select.POLLRDHUP)
            return any(ev & (select.POLLRDHUP | select.POLLHUP) for _, ev in p.poll(15_000))

    async def main_() -> bool:
        server = await status.serve(str(sock), Huge, io_timeout=0.2)
        try:
            hung_up: bool = await in_thread(stuck_client)
            return hung_up
        finally:
            server.close()

    assert asyncio.run(main_()), "the handler still holds the client"


def test_clients_beyond_the_cap_are_told_and_closed(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    st = published()

    async def main_() -> tuple[dict[str, Any], dict[str, Any]]:
        server = await status.serve(str(sock), lambda: st, max_clients=2)
        idle = []
        try:
            for _ in range(2):  # connected, sending nothing: each holds a handler
                r, w = await asyncio.open_unix_connection(str(sock))
                idle.append(w)
            await asyncio.sleep(0)  # let the server accept them
            r, w = await asyncio.open_unix_connection(str(sock))
            w.write(b"status\n")
            refused = json.loads(await r.readline())
            assert await r.read() == b"", "closed after the refusal"
            for w in idle:
                w.close()
            while True:  # the idle clients' handlers end; then a client is served
                try:
                    answer: dict[str, Any] = await in_thread(lambda: ask(sock))
                    return refused, answer
                except status.ControlError as e:
                    assert "too many clients" in str(e)
                    await asyncio.sleep(0.01)
        finally:
            server.close()

    refused, answer = asyncio.run(main_())
    assert "too many clients" in refused["error"]
    assert answer["slaves"]


def test_status_finds_the_socket_in_a_config_that_is_invalid_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An operator half-way through editing the file still gets the status.
    sock = tmp_path / "control.sock"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\n[equalizers.teql0]\nslaves = "not a list"\n')
    assert cli_beside_a_starting_daemon(sock, ["status", "--config", str(cfg)]) == 4  # it reached the daemon
    assert "is starting" in capsys.readouterr().err


@pytest.mark.parametrize("text, error", [
    ('[daemon]\ncontrol_socket = "relative.sock"\n', "daemon.control_socket: must be an absolute path"),
    ("[daemon]\ncontrol_socket = 3\n", "daemon.control_socket: must be a string"),
    ("[daemon\n", "Expected ']'"),
])
def test_status_with_a_bad_socket_in_the_given_config_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, error: str
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    assert main(["status", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{cfg}: ") and error in err
    assert main(["status", "--config", str(tmp_path / "missing.toml")]) == 1
    assert "No such file or directory" in capsys.readouterr().err
