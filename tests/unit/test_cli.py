"""The command line, where it needs no kernel: check-config and argument errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from wanbalanced.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(REPO / "config.example.toml")]) == 0
    out = capsys.readouterr().out
    assert "teql0: slaves wan0, wan1" in out and out.rstrip().endswith(": OK")


def test_check_config_reports_every_problem_with_key_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[equalizers.teql0]
slaves = ["wan0", "this-name-is-too-long"]
address = "10.0.0.300/31"

[equalizers.eql1]
slaves = ["wan0"]

[slaves.wan9]
up_delay = "soon"
""")
    assert main(["check-config", "--config", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    report = captured.err
    assert report.startswith(f"{bad}: ")
    for path in ("equalizers.teql0.slaves[1]", "equalizers.teql0.address", "equalizers.eql1",
                 "equalizers.eql1.slaves[0]", "slaves.wan9"):
        assert f"  {path}: " in report, f"{path} missing from:\n{report}"
    assert "Traceback" not in report


def test_missing_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["check-config", "--config", str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err
    # run and plan refuse the same way, before touching the kernel.
    assert main(["run", "--config", str(missing)]) == 1
    assert main(["plan", "--config", str(missing)]) == 1


def test_unknown_subcommand_exits_2() -> None:
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
