"""The end-to-end tests' boots of the systemd guest (host side).

One Debian 12 guest is booted for the whole module ``test_systemd.py``: the
guest script (``guest_e2e.py``) runs every check in it, and each test asserts
on one check's result.  The guest's output is streamed to the terminal while
it runs (pytest's capture is suspended for it); its files stay in
``.lab/e2e/`` of the checkout: console.log, output.log, checks.json,
journal.txt, wanbalanced-journal.json, metrics.txt, security.txt.

Another, fresh guest is booted for ``test_deb.py`` (``guest_deb.py``: the
Debian package's install, upgrades and purge), with the packages that
``make deb`` built (``$WB_DEBS``: three file names in ``$WB_DEB_DIR``, by
default build/deb); its files stay in ``.lab/e2e-deb/``.

The tests are skipped only where the lab cannot run at all (no UML kernel or
modules, no mmdebstrap), or inside the UML lab guest itself.  ``make e2e``
(and so ``make test``) installs what they need, so in CI they run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lab.systemd.boot import GuestRun, Mount, console_tail, run_job  # noqa: E402
from lab.systemd.rootfs import ensure_root, ensure_wheelhouse, unavailable  # noqa: E402
from readme import install_doc  # noqa: E402

RESULTS = REPO / ".lab" / "e2e"
DEB_RESULTS = REPO / ".lab" / "e2e-deb"
GUEST_TIMEOUT = float(os.environ.get("WB_E2E_TIMEOUT", "420"))
#: The guest's Python, which the wheelhouse must match.
GUEST_PYTHON = (3, 11)


@dataclass
class E2ERun:
    run: GuestRun
    checks: dict[str, dict[str, Any]]
    facts: dict[str, Any]
    timings: dict[str, Any] = field(default_factory=dict)

    def failure_context(self) -> str:
        return (f"guest exit status {self.run.rc}{' (timed out)' if self.run.timed_out else ''};"
                f" results in {self.run.results}\nlast console lines:\n{console_tail(self.run)}")


def assert_check(run: E2ERun, name: str, descriptions: dict[str, str]) -> None:
    """Fail unless the guest recorded check ``name`` as passed."""
    result = run.checks.get(name)
    if result is None:
        pytest.fail(f"{descriptions[name]}: not reached in the guest; {run.failure_context()}")
    if result["status"] != "pass":
        pytest.fail(f"{descriptions[name]}: {result['status'].upper()}\n{result['detail']}",
                    pytrace=False)


def assert_finished(run: E2ERun, descriptions: dict[str, str]) -> None:
    """The guest ran its script to the end (every check recorded) and
    powered off by itself."""
    assert not run.run.timed_out, run.failure_context()
    assert set(run.checks) == set(descriptions), run.failure_context()


TIMINGS = pytest.StashKey[dict[str, Any]]()


def pytest_report_header(config: pytest.Config) -> str | None:
    """The kernel the guest boots, first in the output (lab/kernel.py)."""
    if os.environ.get("WB_IN_LAB") == "1":
        return None
    from lab import kernel as lab_kernel
    try:
        return "lab " + lab_kernel.select(log=lambda _line: None).line().removeprefix("lab: ")
    except lab_kernel.NoKernel as exc:
        return str(exc)


def skip_reason() -> str | None:
    if os.environ.get("WB_IN_LAB") == "1":
        return "inside the UML lab guest: run `make e2e` on the host"
    reason = unavailable()
    if reason is not None:
        return f"needs the systemd lab: {reason}; `make e2e` installs it"
    return None


def _require_lab() -> None:
    reason = skip_reason()
    if reason is not None:
        # `make e2e` (and so CI) must not pass by skipping.
        if os.environ.get("WB_LAB_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def _boot(request: pytest.FixtureRequest, label: str, script: str, results: Path,
          mounts: list[Mount], prepare: Any = None, env: dict[str, str] | None = None,
          disable: tuple[str, ...] = ()) -> E2ERun:
    """Boot a fresh guest and run ``script`` in it; ``prepare()``, if given,
    runs first (with the output shown) and returns more mounts.  Timings go
    to the summary under ``label``."""
    timings: dict[str, Any] = {}
    request.config.stash.setdefault(TIMINGS, {})[label] = timings
    capture = request.config.pluginmanager.getplugin("capturemanager")
    t0 = time.monotonic()
    with capture.global_and_fixture_disabled():
        print(flush=True)
        root = ensure_root()
        timings["root (build or cache hit)"] = time.monotonic() - t0
        if prepare is not None:
            mounts = mounts + prepare(timings)
        if results.exists():
            shutil.rmtree(results)
        run = run_job(
            root,
            f"python3 {script}",
            results=results,
            mounts=[Mount(REPO, "/mnt/wanbalanced"), *mounts],
            cwd="/mnt/wanbalanced",
            env=env or {},
            disable=disable,
            timeout=GUEST_TIMEOUT,
            echo=lambda line: print(f"  guest| {line}", flush=True),
        )
    timings["private root (overlay or copy)"] = run.prepare_seconds
    if run.driver_seconds is not None:
        timings["linux.uml start to driver (boot)"] = run.driver_seconds
    timings["linux.uml, whole run"] = run.seconds
    timings["fixture total"] = time.monotonic() - t0
    try:
        data = json.loads((results / "checks.json").read_text())
    except (OSError, ValueError):
        data = {"checks": {}, "facts": {}}
    facts = data.get("facts", {})
    timings["facts"] = facts
    timings["boot"] = run.boot
    timings["results"] = str(results)
    return E2ERun(run=run, checks=data.get("checks", {}), facts=facts, timings=timings)


@pytest.fixture(scope="session")
def e2e(request: pytest.FixtureRequest) -> Iterator[E2ERun]:
    _require_lab()
    if sys.version_info[:2] != GUEST_PYTHON:
        pytest.fail(f"the wheelhouse is made with this Python ({platform.python_version()}),"
                    f" which must be the guest's {GUEST_PYTHON[0]}.{GUEST_PYTHON[1]}")

    def wheelhouse(timings: dict[str, Any]) -> list[Mount]:
        t1 = time.monotonic()
        doc = install_doc(REPO / "README.md")
        # The README's own download command, with this venv's python3 and pip.
        made = ensure_wheelhouse(
            doc.wheelhouse,
            env={"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"},
            key_extra=f"python{GUEST_PYTHON[0]}.{GUEST_PYTHON[1]} {platform.machine()}",
        )
        timings["wheelhouse (download or cache hit)"] = time.monotonic() - t1
        return [Mount(made, "/mnt/wheelhouse")]

    # The driver configures Prometheus and starts it itself.
    yield _boot(request, "README install (test_systemd.py)", "tests/e2e/guest_e2e.py", RESULTS,
                [], prepare=wheelhouse, disable=("prometheus.service",))


@pytest.fixture(scope="session")
def deb_e2e(request: pytest.FixtureRequest) -> Iterator[E2ERun]:
    _require_lab()
    debs = os.environ.get("WB_DEBS", "").split()
    where = Path(os.environ.get("WB_DEB_DIR") or REPO / "build" / "deb")
    missing = [d for d in debs if not (where / d).is_file()]
    if len(debs) != 3 or missing:
        reason = (f"needs three packages from `make deb` in {where}, named by $WB_DEBS"
                  f" (got {debs}, missing {missing}); `make e2e` builds them")
        if os.environ.get("WB_LAB_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    yield _boot(request, "Debian package (test_deb.py)", "tests/e2e/guest_deb.py", DEB_RESULTS,
                [Mount(where, "/mnt/debs")], env={"WB_DEBS": " ".join(debs)},
                disable=("prometheus.service",))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    runs = config.stash.get(TIMINGS, None)
    if not runs:
        return
    tr = terminalreporter
    for label, timings in runs.items():
        tr.section(f"systemd e2e: timings, {label}")
        for name, value in timings.items():
            if isinstance(value, float):
                tr.write_line(f"{name:40s} {value:7.1f}s")
        boot = timings.get("boot") or {}
        if boot.get("analyze_time"):
            tr.write_line(f"guest: {boot['analyze_time'].splitlines()[0]}")
        facts = timings.get("facts") or {}
        for key, value in facts.items():
            if key.endswith("_s") and isinstance(value, (int, float)):
                tr.write_line(f"guest {key:34s} {value:7.1f}s")
        for unit, level in (facts.get("exposure") or {}).items():
            tr.write_line(f"systemd-analyze security {unit}: {level}")
        tr.write_line(f"results: {timings.get('results')}")
