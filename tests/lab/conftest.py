"""Fixtures for the lab tests: they run inside the UML guest (real sch_teql).

Outside the lab every test in tests/lab is skipped; `make test` boots the
guest (``python -m lab.uml -- .venv/bin/python -m pytest tests/lab``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from lab.daemon import Wanbalanced  # noqa: E402
from lab.topo import Lab, reset_teql  # noqa: E402

#: Each phase's report (setup, call, teardown), for fixtures that act on failure.
PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()

IN_LAB = os.path.isdir("/sys/module/sch_teql") or os.environ.get("WB_IN_LAB") == "1"
SKIP_REASON = "needs the UML lab (real sch_teql): run `make test`, which boots it"


def pytest_report_header(config: pytest.Config) -> str | None:
    """The guest's kernel, first in the output: the suite must pass on more
    than one (docs/lab.md, "Which kernel")."""
    if not IN_LAB:
        return None
    origin = os.environ.get("WB_LAB_KERNEL_ORIGIN", "unknown origin")
    return f"lab kernel: {os.uname().release} ({origin}), modules {os.environ.get('WB_MODULES_DIR', '?')}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lab_setup(n_slaves=2, up=True, attach=False, ipv6=False, kinds='veth'): "
        "arguments for Lab.setup() in the `lab` fixture (kinds: veth, ppp, pppoe)",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so that a fixture's teardown
    knows whether the test failed."""
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report  # type: ignore[index]
    return report


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if IN_LAB:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        # This hook sees the whole session's items: only touch ours.
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh topology: sch_teql reloaded (clean teql0), router B and two
    lines wan0/wan1 up, not attached.  Torn down afterwards.

    Override with ``@pytest.mark.lab_setup(n_slaves=3, attach=True)``.
    """
    marker = request.node.get_closest_marker("lab_setup")
    kwargs = dict(marker.kwargs) if marker else {}
    the_lab = Lab()
    the_lab.teardown()  # leftovers of an aborted test
    reset_teql()
    try:
        the_lab.setup(**kwargs)
        yield the_lab
    finally:
        the_lab.teardown()


@pytest.fixture
def wb(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Wanbalanced]:
    """The real `wanbalanced run` (not started yet) with the two-slave config;
    killed after the test, its log printed if the test failed."""
    daemon = Wanbalanced(tmp_path)
    try:
        yield daemon
    finally:
        daemon.kill()
        reports = request.node.stash.get(PHASE_REPORTS, {})
        if any(r.failed for r in reports.values()) and daemon.log_path.exists():
            text = daemon.log_path.read_text(errors="replace")
            # Past the capture: a passing teardown's captured output is never shown.
            capture = request.config.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled():
                print(f"\n----- {request.node.nodeid}: the daemon's log ({daemon.log_path}) -----\n"
                      f"{text.rstrip()}\n----- end of the daemon's log -----", flush=True)
