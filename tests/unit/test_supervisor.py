"""The supervisor of the daemon's background tasks."""

from __future__ import annotations

import asyncio
import logging

import pytest

from wanbalanced.supervisor import Supervisor


def test_a_task_that_raises_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    fatal: list[str] = []

    async def main() -> None:
        sup = Supervisor(fatal.append, budget=5)
        done = asyncio.Event()

        async def flaky() -> None:
            runs.append(1)
            if len(runs) < 3:
                raise RuntimeError("boom")
            done.set()
            await asyncio.Event().wait()  # then lives on

        sup.start("flaky", flaky)
        await asyncio.wait_for(done.wait(), 2)
        assert sup.alive("flaky")
        sup.cancel_all()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert len(runs) == 3 and not fatal
    died = [r for r in caplog.records if "task flaky died" in r.getMessage()]
    assert len(died) == 2 and died[0].exc_info is not None


def test_crashes_beyond_the_budget_are_fatal() -> None:
    fatal: list[str] = []

    async def main() -> None:
        sup = Supervisor(fatal.append, budget=3, window=60.0)

        async def broken() -> None:
            raise ValueError("always")

        sup.start("broken", broken)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not sup.alive("broken")

    asyncio.run(main())
    assert fatal == ["broken"]


def test_custom_recovery_and_clean_ends() -> None:
    recovered: list[str] = []

    async def main() -> None:
        sup = Supervisor(lambda _n: None)

        async def crash() -> None:
            raise OSError("gone")

        async def finish() -> None:
            return None

        sup.start("reader", crash, on_crash=lambda: recovered.append("resync"))
        sup.start("oneshot", finish)
        for _ in range(5):
            await asyncio.sleep(0)
        assert not sup.alive("reader") and not sup.alive("oneshot")

    asyncio.run(main())
    assert recovered == ["resync"], "a clean end or a cancel is not a crash"
