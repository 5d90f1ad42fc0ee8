"""Tests for wanbalanced.config: parsing, validation and the error report."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from guards import fail_if_blocked
from pydantic import ValidationError

from wanbalanced.config import (MAX_CONFIG_SIZE, Config, ConfigError, DaemonConfig, DampingConfig, EqualizerConfig,
                                Problem, SlaveConfig, load_config, parse_config)

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """\
[daemon]
metrics_listen = "127.0.0.1:9783"   # used by the operations issue; "" disables

[equalizers.teql0]
slaves = ["wan0", "wan1"]
address = "10.0.0.0/31"   # the seed's arbitrary local address; its connected route is removed
default_route = true      # default dev teql0 while at least one slave is attached
rp_filter = 0             # applied to every slave, re-applied when a slave is recreated

[slaves.wan1]             # optional per-slave settings
up_delay = "2s"           # carrier must stay up this long before re-slaving (default 0)
down_delay = "0s"         # carrier must stay down this long before detaching (default 0)
"""

BASE = '[equalizers.teql0]\nslaves = ["wan0", "wan1"]\n'


def problems(text: str) -> dict[str, str]:
    """Parse text that must fail; return {path: message}."""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return {p.path: p.message for p in info.value.problems}


def only_problem(text: str) -> Problem:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert len(info.value.problems) == 1, str(info.value)
    return info.value.problems[0]


# --- the documented example -------------------------------------------------

def test_minimal_example_values() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.daemon == DaemonConfig(metrics_listen="127.0.0.1:9783", log_level="info")
    assert list(cfg.equalizers) == ["teql0"]
    eq = cfg.equalizers["teql0"]
    assert eq.slaves == ("wan0", "wan1")
    assert eq.address == IPv4Interface("10.0.0.0/31")
    assert eq.default_route is True
    assert eq.rp_filter == 0
    assert (eq.route_metric, eq.route_table) == (0, 254)
    assert cfg.slave("wan1") == SlaveConfig(up_delay=2.0, down_delay=0.0)
    assert cfg.slave("wan0") == SlaveConfig(up_delay=0.0, down_delay=0.0)
    assert cfg.equalizer_of("wan1") == "teql0"
    assert cfg.equalizer_of("eth0") is None


def test_repo_example_file_parses() -> None:
    cfg = load_config(REPO / "config.example.toml")
    assert cfg.equalizers["teql0"].slaves == ("wan0", "wan1")
    assert cfg.slave("wan1").up_delay == 2.0


def test_repo_example_commented_keys_parse_when_uncommented() -> None:
    # Every "# key = value" line must be valid as written (it documents a default).
    text = (REPO / "config.example.toml").read_text()
    commented = re.compile(r"# (\[[a-z0-9.]+\]|[a-z_]+ = )")
    lines = [line[2:] if commented.match(line) else line for line in text.splitlines()]
    cfg = parse_config("\n".join(lines))
    assert cfg.daemon.log_level == "info"
    assert cfg.equalizers["teql0"].route_table == 254
    assert cfg.equalizers["teql1"].slaves == ("wan2", "wan3")


def test_defaults() -> None:
    cfg = parse_config(BASE)
    assert cfg.daemon.metrics_listen == "127.0.0.1:9783"
    eq = cfg.equalizers["teql0"]
    assert (eq.address, eq.default_route, eq.rp_filter) == (None, True, 0)
    assert cfg.slaves == {}


def test_models_are_frozen() -> None:
    cfg = parse_config(BASE)
    with pytest.raises(ValidationError):
        cfg.daemon = DaemonConfig()


# --- durations --------------------------------------------------------------

@pytest.mark.parametrize(("written", "seconds"), [
    ('"250ms"', 0.25), ('"2s"', 2.0), ('"1.5s"', 1.5), ('"1m"', 60.0), ('"0s"', 0.0),
    ("3", 3.0), ("0.5", 0.5), ("0", 0.0), ("86400", 86400.0),
])
def test_duration_accepted(written: str, seconds: float) -> None:
    cfg = parse_config(BASE + f"[slaves.wan0]\nup_delay = {written}\n")
    assert cfg.slave("wan0").up_delay == pytest.approx(seconds)
    assert isinstance(cfg.slave("wan0").up_delay, float)


@pytest.mark.parametrize("written", [
    '"5x"', '""', '"2"', '"s"', '"-1s"', '"2 s"', '"1h"', "-1", "-0.5", "nan", "inf",
    "true", "[1]", '"86401s"', "86401", '"1441m"',
])
def test_duration_rejected(written: str) -> None:
    p = only_problem(BASE + f"[slaves.wan0]\nup_delay = {written}\n")
    assert p.path == "slaves.wan0.up_delay"
    assert "duration" in p.message


def test_duration_message_names_accepted_forms() -> None:
    p = only_problem(BASE + '[slaves.wan0]\ndown_delay = "3 sec"\n')
    assert p.message == ('invalid duration "3 sec": expected a duration such as "250ms", '
                         '"2s", "1.5s", "1m", or a number of seconds')


# --- field validation -------------------------------------------------------

def test_strict_types_not_coerced() -> None:
    found = problems('[daemon]\nlog_level = 1\n[equalizers.teql0]\nslaves = ["wan0"]\n'
                     'default_route = "yes"\nroute_metric = "1"\nroute_table = 1.0\n')
    assert found == {
        "daemon.log_level": 'must be one of "debug", "info", "notice", "warning" or "error", not 1',
        "equalizers.teql0.default_route": "expected true or false, got a string",
        "equalizers.teql0.route_metric": "expected an integer, got a string",
        "equalizers.teql0.route_table": "expected an integer, got a float",
    }


def test_unknown_keys_rejected_with_path() -> None:
    found = problems('colour = 1\n[daemon]\nlog_levl = "info"\n' + BASE + "metric = 5\n"
                     '[slaves.wan0]\nupdelay = "1s"\n')
    assert found == {"colour": "unknown key", "daemon.log_levl": "unknown key",
                     "equalizers.teql0.metric": "unknown key",
                     "slaves.wan0.updelay": "unknown key"}


def test_required_keys() -> None:
    assert only_problem("") == Problem("equalizers", "required key is missing")
    assert only_problem("[equalizers]\n") == Problem("equalizers", "must not be empty")
    assert only_problem("[equalizers.teql0]\n") == Problem("equalizers.teql0.slaves",
                                                          "required key is missing")
    assert only_problem("[equalizers.teql0]\nslaves = []\n") == Problem(
        "equalizers.teql0.slaves", "must not be empty")
    assert only_problem('[equalizers.teql0]\nslaves = "wan0"\n') == Problem(
        "equalizers.teql0.slaves", "expected an array, got a string")


@pytest.mark.parametrize(("value", "expected"), [
    ("0", 0), ("1", 1), ("2", 2), ('"unmanaged"', None),
])
def test_rp_filter_accepted(value: str, expected: int | None) -> None:
    assert parse_config(BASE + f"rp_filter = {value}\n").equalizers["teql0"].rp_filter == expected


@pytest.mark.parametrize("value", ["3", "-1", "true", '"0"', '"none"'])
def test_rp_filter_rejected(value: str) -> None:
    p = only_problem(BASE + f"rp_filter = {value}\n")
    assert p.path == "equalizers.teql0.rp_filter"
    assert '"unmanaged"' in p.message


@pytest.mark.parametrize(("key", "value", "path_ok"), [
    ("route_metric", "4294967295", True), ("route_metric", "4294967296", False),
    ("route_metric", "-1", False), ("route_table", "1", True), ("route_table", "0", False),
    ("route_table", "4294967295", True), ("route_table", "4294967296", False),
])
def test_route_ranges(key: str, value: str, path_ok: bool) -> None:
    text = BASE + f"{key} = {value}\n"
    if path_ok:
        assert getattr(parse_config(text).equalizers["teql0"], key) == int(value)
    else:
        assert only_problem(text).path == f"equalizers.teql0.{key}"


@pytest.mark.parametrize("value", ['"10.0.0.0/31"', '"192.0.2.7/24"', '"10.0.0.1/32"'])
def test_address_accepted(value: str) -> None:
    addr = parse_config(BASE + f"address = {value}\n").equalizers["teql0"].address
    assert addr == IPv4Interface(value.strip('"'))


@pytest.mark.parametrize(("value", "fragment"), [
    ('"10.0.0.0"', "no prefix length"), ('"10.0.0.0/33"', "not an address with prefix"),
    ('"fe80::1/64"', "not an IPv4 address"), ('"teql"', "no prefix length"),
    ("10", "got an integer"),
])
def test_address_rejected(value: str, fragment: str) -> None:
    p = only_problem(BASE + f"address = {value}\n")
    assert p.path == "equalizers.teql0.address"
    assert fragment in p.message


@pytest.mark.parametrize("value", ["127.0.0.1:9783", "[::1]:9783", "[::]:1", "0.0.0.0:65535",
                                   "localhost:9783", ""])
def test_metrics_listen_accepted(value: str) -> None:
    assert parse_config(f'[daemon]\nmetrics_listen = "{value}"\n' + BASE).daemon.metrics_listen == value


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", ":9783",
                                   "::1:9783", "[::1:9783", "[nope]:9783", "host:port",
                                   "a b:80", "127.0.0.1:+80"])
def test_metrics_listen_rejected(value: str) -> None:
    assert only_problem(f'[daemon]\nmetrics_listen = "{value}"\n' + BASE).path == "daemon.metrics_listen"


# --- interface names --------------------------------------------------------

@pytest.mark.parametrize("name", ["a" * 15, "wan0", "ppp-0_x", "é" * 7 + "a", "wan.0"])
def test_interface_name_accepted(name: str) -> None:
    cfg = parse_config(f'[equalizers.teql0]\nslaves = ["{name}"]\n')
    assert cfg.equalizers["teql0"].slaves == (name,)


@pytest.mark.parametrize(("name", "fragment"), [
    ("a" * 16, "16 bytes"), ("é" * 8, "16 bytes"), ("", "empty"), (".", "not a valid"),
    ("..", "not a valid"), ("wan/0", "forbids"), ("wan:0", "forbids"), ("wan 0", "forbids"),
    ("wan\\t0", "forbids"), ("wan\\u00000", "forbids"),
])
def test_interface_name_rejected(name: str, fragment: str) -> None:
    p = only_problem(f'[equalizers.teql0]\nslaves = ["wan0", "{name}"]\n')
    assert p.path == "equalizers.teql0.slaves[1]"
    assert fragment in p.message


# --- cross-checks -----------------------------------------------------------

@pytest.mark.parametrize("name", ["teql1", "teql10", "teql4294967296"])
def test_equalizer_name_accepted(name: str) -> None:
    assert list(parse_config(f'[equalizers.{name}]\nslaves = ["wan0"]\n').equalizers) == [name]


@pytest.mark.parametrize(("name", "path"), [
    ("teql01", "equalizers.teql01"), ("teql", "equalizers.teql"), ("eql0", "equalizers.eql0"),
    ("teql-1", "equalizers.teql-1"), ('"teql0.x"', 'equalizers."teql0.x"'),
    ("Teql0", "equalizers.Teql0"),
])
def test_equalizer_name_rejected(name: str, path: str) -> None:
    p = only_problem(f'[equalizers.{name}]\nslaves = ["wan0"]\n')
    assert p.path == path
    assert "teql0, teql1" in p.message


def test_slave_in_two_equalizers_reported_at_second() -> None:
    text = ('[equalizers.teql0]\nslaves = ["wan0", "wan1"]\n'
            '[equalizers.teql1]\nslaves = ["wan2", "wan1"]\n')
    assert only_problem(text) == Problem(
        "equalizers.teql1.slaves[1]",
        '"wan1" is already a slave of teql0; a slave can belong to one equalizer only')


def test_slave_listed_twice_in_one_equalizer() -> None:
    assert only_problem('[equalizers.teql0]\nslaves = ["wan0", "wan1", "wan0"]\n') == Problem(
        "equalizers.teql0.slaves[2]", '"wan0" is already listed at slaves[0]')


@pytest.mark.parametrize("name", ["teql0", "teql1", "teql01"])
def test_slave_named_like_teql_device(name: str) -> None:
    p = only_problem(f'[equalizers.teql0]\nslaves = ["wan0", "{name}"]\n')
    assert p.path == "equalizers.teql0.slaves[1]"
    assert "named like a teql device" in p.message


def test_slave_table_for_unknown_slave() -> None:
    assert only_problem(BASE + '[slaves.wan9]\nup_delay = "1s"\n') == Problem(
        "slaves.wan9", '"wan9" is not a slave of any equalizer')


def test_duplicate_address() -> None:
    text = ('[equalizers.teql0]\nslaves = ["wan0"]\naddress = "10.0.0.0/31"\n'
            '[equalizers.teql1]\nslaves = ["wan1"]\naddress = "10.0.0.0/30"\n')
    assert only_problem(text) == Problem("equalizers.teql1.address",
                                         "10.0.0.0 is also the address of teql0")


def test_cross_checks_apply_to_models_built_directly() -> None:
    with pytest.raises(ValidationError, match="already a slave of teql0"):
        Config(equalizers={"teql0": EqualizerConfig(slaves=("wan0",)),
                           "teql1": EqualizerConfig(slaves=("wan0",))})
    with pytest.raises(ValidationError, match="more than once"):
        EqualizerConfig(slaves=("wan0", "wan0"))


# --- reporting --------------------------------------------------------------

BROKEN = """\
[daemon]
metrics_listen = "::1:9783"
log_level = "loud"

[equalizers.teql0]
slaves = ["wan0", "wan/1", "wan0"]
default_route = "yes"
rp_filter = 3

[equalizers.teql01]
slaves = ["wan0", 5]

[slaves."wan.0"]
up_delay = "2x"

[slaves.wan0]
down_delay = -1
colour = "red"
"""


def test_all_problems_reported_at_once_in_file_order() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BROKEN, "broken.toml")
    err = info.value
    assert err.source == "broken.toml"
    assert [p.path for p in err.problems] == [
        "daemon.metrics_listen",
        "daemon.log_level",
        "equalizers.teql0.slaves[1]",
        "equalizers.teql0.slaves[2]",
        "equalizers.teql0.default_route",
        "equalizers.teql0.rp_filter",
        "equalizers.teql01",
        "equalizers.teql01.slaves[0]",
        "equalizers.teql01.slaves[1]",
        'slaves."wan.0"',
        'slaves."wan.0".up_delay',
        "slaves.wan0.down_delay",
        "slaves.wan0.colour",
    ]
    report = str(err)
    lines = report.splitlines()
    assert lines[0] == "broken.toml: 13 problems"
    assert lines[1] == ('  daemon.metrics_listen: "::1:9783": an IPv6 address must be in '
                        'brackets, like "[::1]:9783"')
    assert len(lines) == 14
    assert all(line.startswith("  ") for line in lines[1:])
    for noise in ("pydantic", "Value error", "http", "Traceback", "[key]"):
        assert noise not in report


def test_single_problem_report() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + "default_route = 1\n", "x.toml")
    assert str(info.value) == ("x.toml: 1 problem\n"
                               "  equalizers.teql0.default_route: expected true or false, "
                               "got an integer")


def test_syntax_error_has_line_and_column() -> None:
    p = only_problem('[daemon]\nlog_level = "info\n')
    assert p.path == ""
    assert p.message.startswith("TOML syntax error: ")
    assert "line 2" in p.message and "column" in p.message


def test_deep_nesting_is_a_problem_not_a_crash() -> None:
    p = only_problem("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "nested too deeply" in p.message


def test_odd_values_never_raise_anything_else() -> None:
    # Dates, inline tables and arrays of tables where scalars belong.
    text = ('[daemon]\nlog_level = 1979-05-27\nmetrics_listen = {a = 1}\n'
            '[[equalizers]]\nslaves = ["wan0"]\n[slaves]\nwan0 = 07:32:00\n')
    found = problems(text)
    assert found["equalizers"] == "expected a table, got an array"
    assert found["daemon.log_level"].endswith('not "1979-05-27"')
    assert found["slaves.wan0"] == "expected a table, got a date/time"


def test_report_shown_in_docs_is_current() -> None:
    doc = (REPO / "docs" / "config.md").read_text()
    section = doc.split("## Validation and error reports", 1)[1]
    toml_text = section.split("```toml\n", 1)[1].split("```", 1)[0]
    shown = section.split("```text\n", 1)[1].split("```", 1)[0]
    with pytest.raises(ConfigError) as info:
        parse_config(toml_text, "/etc/wanbalanced/config.toml")
    assert str(info.value) + "\n" == shown


# --- files ------------------------------------------------------------------

def test_load_config_file(tmp_path: Path) -> None:
    path = tmp_path / "wanbalanced.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    assert load_config(path) == parse_config(MINIMAL)
    assert load_config(str(path)) == parse_config(MINIMAL)


def test_load_config_reports_source(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BASE + "route_table = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines()[0] == f"{path}: 1 problem"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.problems == (Problem("", "file not found"),)
    assert str(info.value) == f"{path}: 1 problem\n  file not found"


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.problems[0].message.startswith("cannot read the file: ")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(BASE)
    path.chmod(0)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "Permission denied" in info.value.problems[0].message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE.encode() + b'[slaves.w\xe4n0]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (Problem("", f"not UTF-8 text (bad byte at offset {len(BASE) + 9})"),)


# -- the file itself: what is opened, how much is read, where it lives ------------


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Opening a FIFO the blocking way would hang the test: fail it instead."""
    with fail_if_blocked("load_config", 10):
        yield


def problem_of(path: Path, secure: bool = False) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, secure)
    assert len(info.value.problems) == 1
    return info.value.problems[0].message


def test_fifo_is_refused_without_blocking(tmp_path: Path, no_hang: None) -> None:
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    assert problem_of(fifo) == "cannot read the file: it is a FIFO, not a regular file"
    assert problem_of(fifo, secure=True) == "cannot read the file: it is a FIFO, not a regular file"


def test_symlink_to_a_fifo_or_a_device_is_refused(tmp_path: Path, no_hang: None) -> None:
    link = tmp_path / "config.toml"
    link.symlink_to("/dev/zero")  # would otherwise be read forever
    assert problem_of(link) == "cannot read the file: it is a character device, not a regular file"


def test_huge_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    with open(path, "wb") as f:
        f.truncate(4 << 30)  # sparse: 4 GiB that would all be read
    assert problem_of(path) == f"the file is {4 << 30} bytes long; at most {MAX_CONFIG_SIZE} (1 MiB) are read"


def test_file_of_exactly_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    text = BASE + "#" * (MAX_CONFIG_SIZE - len(BASE) - 1) + "\n"
    path.write_text(text)
    assert load_config(path).equalizers["teql0"].slaves == ("wan0", "wan1")
    path.write_text(text + "\n")
    assert problem_of(path).startswith(f"the file is {MAX_CONFIG_SIZE + 1} bytes long")


@pytest.mark.parametrize(("mode", "who"), [(0o775, "its group"), (0o757, "everyone"), (0o1777, "its group and everyone")])
def test_writable_directory_is_refused_when_secure(tmp_path: Path, mode: int, who: str) -> None:
    d = tmp_path / "etc"
    d.mkdir()
    path = d / "config.toml"
    path.write_text(BASE)
    path.chmod(0o644)
    d.chmod(mode)
    message = problem_of(path, secure=True)
    assert message.startswith(f"refused: the file is in the directory {d}, which is writable by {who}"), message
    assert "chmod go-w that directory" in message and "--allow-insecure-config" in message
    assert load_config(path).equalizers  # check-config and --allow-insecure-config still read it
    d.chmod(0o755)
    assert load_config(path, secure=True).equalizers


def test_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    path = d / "config.toml"
    path.write_text(BASE)
    path.chmod(0o644)
    os.chown(d, 1000, 0)
    assert problem_of(path, secure=True).startswith(f"refused: the file is in the directory {d}, "
                                                    "which is owned by uid 1000, not root")


def test_symlinked_config_is_followed_and_its_target_checked(tmp_path: Path) -> None:
    etc, store = tmp_path / "etc", tmp_path / "store"
    etc.mkdir(mode=0o755)
    store.mkdir(mode=0o755)
    target = store / "wanbalanced.toml"
    target.write_text(BASE)
    target.chmod(0o644)
    link = etc / "config.toml"
    link.symlink_to(target)
    assert load_config(link, secure=True).equalizers  # as operators do (etckeeper, config management)
    target.chmod(0o666)
    assert problem_of(link, secure=True).startswith("refused: the file is writable by its group and everyone")
    target.chmod(0o644)
    store.chmod(0o777)
    assert problem_of(link, secure=True).startswith(f"refused: the file is in the directory {store}, ")


# -- probe targets ---------------------------------------------------------------


def probe_targets(*targets: str) -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    return BASE + f"[slaves.wan0.probe]\ntargets = [{listed}]\n"


@pytest.mark.parametrize(("target", "why"), [
    ("0.0.0.0", "is unspecified"),
    ("0.1.2.3", "is unspecified"),
    ("127.0.0.1", "is a loopback address"),
    ("127.255.0.9", "is a loopback address"),
    ("224.0.0.1", "is a multicast address"),
    ("239.255.255.250", "is a multicast address"),
    ("255.255.255.255", "is the limited broadcast address"),
])
def test_unusable_probe_targets_are_refused_with_their_path(target: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(probe_targets("192.0.2.1", target))
    (problem,) = info.value.problems
    assert problem.path == "slaves.wan0.probe.targets[1]"
    assert problem.message.startswith(f"{target} {why}")
    assert problem.message.endswith("; a probe target must be a unicast address reachable through the slave")


@pytest.mark.parametrize("target", ["192.0.2.1", "198.51.100.7", "203.0.113.9", "8.8.8.8", "10.1.2.3",
                                    "192.168.100.1", "169.254.1.1", "100.64.0.1"])
def test_unicast_probe_targets_are_accepted(target: str) -> None:
    # TEST-NETs (the lab's), private, CGNAT and link-local: a modem or a PPP
    # peer on the line is a fine target, and the echo is bound to the slave.
    probe = parse_config(probe_targets(target)).slave("wan0").probe
    assert probe is not None and [str(t) for t in probe.targets] == [target]


# --- per-line routes and all_down ---------------------------------------------

def test_line_routes_parsed() -> None:
    cfg = parse_config(BASE + """
[[slaves.wan0.routes]]
to = "198.51.100.0/24"
via = "10.1.0.1"
table = 100
metric = 10
[[slaves.wan0.routes]]
to = "default"
table = 100
[[slaves.wan1.routes]]
to = "2001:db8::/32"
""")
    wan0 = cfg.slave("wan0").routes
    assert [(str(r.to), str(r.via), r.table, r.metric) for r in wan0] == [
        ("198.51.100.0/24", "10.1.0.1", 100, 10), ("0.0.0.0/0", "None", 100, 0)]
    v6 = cfg.slave("wan1").routes[0]
    assert v6.kernel_metric == 1024, "the kernel's metric for an IPv6 route with none"
    assert cfg.equalizers["teql0"].all_down == "withdraw"


@pytest.mark.parametrize("route, fragment", [
    ('to = "198.51.100.1/24"', 'has host bits set; the prefix is "198.51.100.0/24"'),
    ('to = "198.51.100.0/33"', "is not a prefix"),
    ('to = 5', "expected a prefix"),
    ('to = "198.51.100.0/24"\nvia = "224.0.0.1"', "is a multicast address"),
    ('to = "198.51.100.0/24"\nvia = "0.0.0.0"', "is unspecified"),
    ('to = "198.51.100.0/24"\nvia = "255.255.255.255"', "limited broadcast"),
    ('to = "198.51.100.0/24"\nvia = "127.0.0.1"', "loopback"),
    ('to = "198.51.100.0/24"\nvia = "2001:db8::1"', "is IPv6 but to 198.51.100.0/24 is IPv4"),
    ('to = "198.51.100.0/24"\ntable = 255', "local table"),
    ('via = "10.1.0.1"', "required key is missing"),
    ('to = "198.51.100.0/24"\ndev = "wan1"', "unknown key"),
])
def test_line_route_rejected(route: str, fragment: str) -> None:
    p = only_problem(BASE + f"[[slaves.wan0.routes]]\n{route}\n")
    assert p.path.startswith("slaves.wan0.routes[0]") and fragment in p.message, p


def test_duplicate_routes_rejected_within_and_across_slaves() -> None:
    found = problems(BASE + """
[[slaves.wan0.routes]]
to = "198.51.100.0/24"
metric = 3
[[slaves.wan0.routes]]
to = "198.51.100.0/24"
metric = 3
[[slaves.wan0.routes]]
to = "198.51.100.0/24"
via = "nonsense"
[[slaves.wan1.routes]]
to = "198.51.100.0/24"
metric = 3
[[slaves.wan1.routes]]
to = "default"
""")
    assert found["slaves.wan0.routes[1]"].startswith("same destination, table and metric as slaves.wan0.routes[0]")
    assert "not an IP address" in found["slaves.wan0.routes[2].via"]
    assert "as slaves.wan0.routes[0]" in found["slaves.wan1.routes[0]"]
    assert "as the default route of teql0" in found["slaves.wan1.routes[1]"]


def test_duplicate_routes_rejected_when_built_directly() -> None:
    with pytest.raises(ValidationError, match="duplicates routes"):
        SlaveConfig.model_validate({"routes": [{"to": "default", "table": 5}, {"to": "0.0.0.0/0", "table": 5}]})


@pytest.mark.parametrize("value", ["withdraw", "unreachable", "blackhole"])
def test_all_down_accepted(value: str) -> None:
    assert parse_config(BASE + f'all_down = "{value}"\n').equalizers["teql0"].all_down == value


def test_all_down_rejected() -> None:
    p = only_problem(BASE + 'all_down = "prohibit"\n')
    assert p.path == "equalizers.teql0.all_down" and '"withdraw"' in p.message


def test_address6() -> None:
    cfg = parse_config(BASE + 'address6 = "2001:db8:ff::a/128"\n')
    assert str(cfg.equalizers["teql0"].address6) == "2001:db8:ff::a/128"
    for value, fragment in (('"fe80::1/64"', "global or unique-local"), ('"10.0.0.0/31"', "goes in `address`"),
                            ('"2001:db8::1"', "no prefix length"), ('"ff02::1/128"', "global or unique-local")):
        p = only_problem(BASE + f"address6 = {value}\n")
        assert p.path == "equalizers.teql0.address6" and fragment in p.message, p
    assert "goes in `address6`" in only_problem(BASE + 'address = "2001:db8::1/64"\n').message


def test_line_rules() -> None:
    cfg = parse_config(BASE + '[[slaves.wan0.rules]]\nfrom = "198.51.100.7/32"\ntable = 100\n')
    rule = cfg.slave("wan0").rules[0]
    assert (str(rule.source), rule.table, rule.priority) == ("198.51.100.7/32", 100, 32000)
    found = problems(BASE + """
[[slaves.wan0.rules]]
from = "198.51.100.7/24"
table = 100
[[slaves.wan0.rules]]
table = 255
from = "default"
[[slaves.wan0.rules]]
from = "default"
""")
    assert "host bits" in found["slaves.wan0.rules[0].from"]
    assert "local table" in found["slaves.wan0.rules[1].table"]
    assert found["slaves.wan0.rules[2].table"] == "required key is missing"


def test_damping_that_could_never_hold_a_slave_down_is_refused() -> None:
    # max_suppress caps the penalty at reuse x 2^(max_suppress / half_life):
    # 800 x 2^1 = 1600 here, which never reaches suppress (2500).
    p = only_problem(BASE + '[slaves.wan1.damping]\nhalf_life = "10m"\nmax_suppress = "10m"\n')
    assert p.path == "slaves.wan1.damping"
    assert p.message == ("max_suppress (600s) and half_life (600s) cap the penalty at 1600 (reuse x 2^(max_suppress "
                         "/ half_life)), below suppress (2500): no slave would ever be held down; raise max_suppress "
                         "or shorten half_life")
    # A longer max_suppress lets the same half-life suppress; so do the defaults.
    cfg = parse_config(BASE + '[slaves.wan1.damping]\nhalf_life = "10m"\nmax_suppress = "60m"\n')
    assert cfg.slaves["wan1"].damping.ceiling == 800 * 2 ** 6
    assert DampingConfig().ceiling == 800 * 2 ** 10
