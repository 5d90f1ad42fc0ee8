"""The control socket, over real unix sockets (no kernel involved)."""

from __future__ import annotations

import asyncio
import json
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
    return status.build(config(), core, snap, version="test", attaches={}, detaches={}, faults=(),
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


def test_status_cli_says_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "control.sock"

    async def main_(argv: list[str]) -> int:
        server = await status.serve(str(sock), lambda: None)
        try:
            code: int = await in_thread(lambda: main(argv))
            return code
        finally:
            server.close()

    assert asyncio.run(main_(["status", "--socket", str(sock)])) == 4
    assert "is starting: no status yet" in capsys.readouterr().err
    assert asyncio.run(main_(["status", "--socket", str(sock), "--json"])) == 4
    assert json.loads(capsys.readouterr().out)["state"] == "starting"


def test_status_cli_without_daemon_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == 3
    assert "does not exist" in capsys.readouterr().err
