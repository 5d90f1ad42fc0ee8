"""The Debian package end to end, in a booted Debian 12 with real systemd.

``make e2e`` builds three packages with ``make deb`` (the checkout's version,
a newer build of the same code, a build of newer code) and runs this on the
host.  The ``deb_e2e`` fixture (conftest.py) boots a fresh guest; the guest
script ``guest_deb.py`` installs, configures, upgrades twice and purges the
package offline, and each test here asserts on one check's result.  The
guest's logs stay in ``.lab/e2e-deb/``.
"""

from __future__ import annotations

import pytest
from checks import DEB_CHECKS, DEB_DESCRIPTIONS
from conftest import E2ERun, assert_check, assert_finished


@pytest.mark.parametrize("name", [name for name, _ in DEB_CHECKS])
def test_deb_check(deb_e2e: E2ERun, name: str) -> None:
    assert_check(deb_e2e, name, DEB_DESCRIPTIONS)


def test_deb_guest_finished(deb_e2e: E2ERun) -> None:
    """The guest ran the script to its end and powered off by itself."""
    assert_finished(deb_e2e, DEB_DESCRIPTIONS)
