"""The lab fixtures' own behaviour, run outside the lab (no daemon started)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[2]


def test_wb_prints_the_daemons_log_when_the_test_fails(pytester: pytest.Pytester,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "tests" / "lab" / "conftest.py", pytester.path / "conftest.py")
    pytester.makepyfile(test_x="""
        def test_fails(wb):
            wb.log_path.write_text("the daemon said XYZZY\\n")
            assert False

        def test_passes(wb):
            wb.log_path.write_text("the daemon said PLUGH\\n")
    """)
    monkeypatch.setenv("WB_IN_LAB", "1")  # the fixtures run; nothing here needs the kernel
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "test_x.py::test_fails: the daemon's log" in out and "the daemon said XYZZY" in out
    assert "PLUGH" not in out
