"""The systemd unit end to end, in a booted Debian 12 with real systemd.

``make e2e`` runs this on the host.  The ``e2e`` fixture (conftest.py) boots
the guest once; ``guest_e2e.py`` runs every check of ``checks.CHECKS`` in it
(installing wanbalanced exactly as the README's "Install into a virtual environment"
section says), and each test here asserts on one check's result.  The guest's
output is streamed while it runs; its logs stay in ``.lab/e2e/``.
"""

from __future__ import annotations

import pytest
from checks import CHECKS, DESCRIPTIONS
from conftest import E2ERun, assert_check, assert_finished


@pytest.mark.parametrize("name", [name for name, _ in CHECKS])
def test_check(e2e: E2ERun, name: str) -> None:
    assert_check(e2e, name, DESCRIPTIONS)


def test_guest_finished(e2e: E2ERun) -> None:
    """The guest ran the script to its end and powered off by itself."""
    assert_finished(e2e, DESCRIPTIONS)
