"""Security properties that hold by construction: no shell on the daemon's paths,
a config file only root may write, metrics on loopback by default."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from wanbalanced.cli import main
from wanbalanced.config import DaemonConfig, unsafe_reason

SRC = Path(__file__).resolve().parents[2] / "src" / "wanbalanced"


def test_no_subprocess_or_shell_anywhere_in_the_daemon() -> None:
    banned_modules = {"subprocess", "pty", "shlex"}
    banned_calls = {"system", "popen", "execv", "execve", "execvp", "spawnv", "spawnl", "posix_spawn"}
    found = []
    for path in SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names if a.name.split(".")[0] in banned_modules]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in banned_modules:
                found.append(f"{path.name}: from {node.module} import")
            elif isinstance(node, ast.Attribute) and node.attr in banned_calls:
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.keyword) and node.arg == "shell":
                found.append(f"{path.name}:{node.lineno}: shell=")
    assert not found, found


def test_metrics_listen_on_loopback_by_default() -> None:
    assert DaemonConfig().metrics_listen.startswith("127.0.0.1:")


def stat_of(path: Path) -> os.stat_result:
    return os.stat(path)


def test_unsafe_config_files_are_named(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("")
    f.chmod(0o644)
    assert unsafe_reason(stat_of(f)) is None
    f.chmod(0o664)
    assert unsafe_reason(stat_of(f)) == "writable by its group (mode 0664); chmod go-w it"
    f.chmod(0o646)
    assert unsafe_reason(stat_of(f)) == "writable by everyone (mode 0646); chmod go-w it"
    os.chown(f, 1000, 0)
    f.chmod(0o644)
    assert unsafe_reason(stat_of(f)) == "owned by uid 1000, not root"


def test_run_refuses_a_writable_config_before_touching_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[daemon]\nmetrics_listen = ""\ncontrol_socket = ""\n[equalizers.teql0]\nslaves = ["wan0"]\n')
    f.chmod(0o666)
    assert main(["run", "--config", str(f)]) == 1
    err = capsys.readouterr().err
    assert "refused: the file is writable by its group and everyone (mode 0666)" in err
    assert "--allow-insecure-config" in err
    # check-config still reads it: it changes nothing.
    assert main(["check-config", "--config", str(f)]) == 0
