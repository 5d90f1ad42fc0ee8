"""Property-based tests (hypothesis): random and malformed configurations thrown
at `check-config` and at the reload of a running daemon.

Whatever a file holds, the answer is either a valid Config or a clear error that
names where the problem is: never a traceback, never a daemon that stops, never
a configuration applied halfway. Limits (interface names, addresses, durations,
route numbers) are pinned as explicit examples at the end of each section.

The documents are written by a small TOML writer of our own and read back by
tomllib, so the fuzzing needs no dependency besides hypothesis.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import math
import re
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kernelstate import master, slave, snapshot
from test_daemon import DAEMON_CONFIG, FakeKernel, start, until

from wanbalanced import probing
from wanbalanced.cli import main
from wanbalanced.config import (Config, ConfigError, DaemonConfig, DampingConfig, EqualizerConfig,
                                ProbeConfig, SlaveConfig, load_config, parse_config)
from wanbalanced.daemon import Daemon, Intent
from wanbalanced.health import Damping
from wanbalanced.defaults import is_teql_name
from wanbalanced.observed import Snapshot
from wanbalanced.probe import ProbeSettings
from wanbalanced.slave import State

Loc = tuple[str | int, ...]

# No example database: nothing is written into the work tree, and every run
# starts from the same explicit examples.
FAST = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


# --- a small TOML writer -------------------------------------------------------

@dataclass(frozen=True)
class Raw:
    """Written into the TOML text as is: numbers Python will not print
    (more than 4300 digits), or TOML spellings such as 1e400."""

    text: str


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def toml_string(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c < " " or c == "\x7f":  # TOML forbids raw control characters but tab; escape them all
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    return key if _BARE.fullmatch(key) else toml_string(key)


def toml_value(v: object) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def toml_doc(doc: dict[str, Any]) -> str:
    """Tables as [headers], everything else (arrays, values in arrays) inline."""
    lines: list[str] = []

    def table(d: dict[str, Any], path: tuple[str, ...]) -> None:
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in d.items() if not isinstance(v, dict))
        for k, v in d.items():
            if isinstance(v, dict):
                lines.append(f"\n[{'.'.join(toml_key(p) for p in (*path, k))}]")
                table(v, (*path, k))

    table(doc, ())
    return "\n".join(lines) + "\n"


# --- locations and the shape of a report ------------------------------------------

SCHEMA_KEYS = frozenset(k for model in (Config, DaemonConfig, EqualizerConfig, SlaveConfig, ProbeConfig,
                                        DampingConfig) for k in model.model_fields)


def key_part(key: str) -> str:
    return key if _BARE.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def fmt(loc: Loc) -> str:
    """A key path as the documentation says reports write it: dotted bare keys,
    other keys quoted, array indexes in brackets."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + key_part(part)
    return out


def locations(raw: object) -> tuple[set[str], set[str]]:
    """Every location of a parsed document (formatted), and the tables among them ("" is the root)."""
    existing: set[str] = set()
    tables: set[str] = set()
    stack: list[tuple[object, str]] = [(raw, "")]
    while stack:
        v, path = stack.pop()
        if isinstance(v, dict):
            tables.add(path)
            stack.extend((x, path + ("." if path else "") + key_part(k)) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, f"{path}[{i}]") for i, x in enumerate(v))
        existing.add(path)
    existing.discard("")
    return existing, tables


def names_missing_key(path: str, tables: set[str]) -> bool:
    """Whether `path` is a schema key that a table of the document lacks."""
    return any(path == k and "" in tables or path.endswith("." + k) and path[:-len(k) - 1] in tables
               for k in SCHEMA_KEYS)


def check_problems(err: ConfigError, text: str | None, bad: Sequence[Loc] = ()) -> None:
    """A report is clear: at least one problem, each a one-line message at a
    path that names a location of the document ("" for the whole file); and
    every planted bad value is reported at (or under) its own location."""
    assert err.problems, "ConfigError without problems"
    try:
        raw: object = tomllib.loads(text) if text is not None else None
    except (tomllib.TOMLDecodeError, RecursionError):
        raw = None
    except ValueError:  # numbers with more than 4300 digits: not TOML that Python reads
        raw = None
    existing, tables = locations(raw) if raw is not None else (set(), set())
    for p in err.problems:
        assert p.message.strip(), f"empty message at {p.path!r}"
        assert "errors.pydantic.dev" not in p.message and "For further information" not in p.message, p
        assert "\n" not in p.message and "\n" not in p.path, f"multi-line problem {p}"
        assert (p.path == "" or p.path in existing
                or (p.message == "required key is missing" and names_missing_key(p.path, tables))), \
            f"{p.path!r} names no location of the document ({p.message})"
    paths = [p.path for p in err.problems]
    if "" in paths:
        return  # the file as a whole is unreadable: no per-key report to expect
    for loc in bad:
        want = fmt(loc)
        assert any(p == want or p.startswith((want + ".", want + "[")) for p in paths), \
            f"nothing reported at {want}; the report:\n{err}"


IFNAME_FORBIDDEN = "/:\0"


def valid_ifname(name: str) -> bool:
    """The kernel's dev_valid_name(), independently of config.py."""
    return (0 < len(name.encode()) <= 15 and name not in (".", "..")
            and not any(c in IFNAME_FORBIDDEN or c.isspace() for c in name))


def check_invariants(cfg: Config) -> None:
    """What a Config promises the rest of the daemon, whatever the input was."""
    owner: dict[str, str] = {}
    ips: list[IPv4Address] = []
    for eq_name, eq in cfg.equalizers.items():
        assert re.fullmatch(r"teql(0|[1-9][0-9]*)", eq_name), eq_name
        assert eq.slaves and len(set(eq.slaves)) == len(eq.slaves)
        for name in eq.slaves:
            assert name not in owner, f"{name} in {owner[name]} and {eq_name}"
            owner[name] = eq_name
            assert valid_ifname(name) and not re.fullmatch(r"teql[0-9]+", name), repr(name)
        if eq.address is not None:
            assert isinstance(eq.address, IPv4Interface)
            ips.append(eq.address.ip)
        assert 0 <= eq.route_metric <= 2**32 - 1 and 1 <= eq.route_table <= 2**32 - 1 and eq.route_table != 255
        assert eq.rp_filter in (None, 0, 1, 2) and eq.default_route in (True, False)
    assert len(set(ips)) == len(ips), "two equalizers share an address"
    assert set(cfg.slaves) <= set(owner)
    for name, s in cfg.slaves.items():
        for d in (s.up_delay, s.down_delay):
            assert isinstance(d, float) and 0 <= d <= 86400
        p = s.probe
        if p is not None:
            assert 1 <= p.min_targets <= len(p.targets) <= 16 and len(set(p.targets)) == len(p.targets)
            assert 0.05 <= p.interval <= 60 and 0.01 <= p.timeout <= 60
            assert 1 <= p.down_after <= 1000 and 1 <= p.up_after <= 1000
            assert p.max_rtt is None or 0 < p.max_rtt <= 86400
            # What the prober is built from must never be refused at run time.
            ProbeSettings(targets=tuple(map(str, p.targets)), interval=p.interval, timeout=p.timeout,
                          min_targets=p.min_targets, max_rtt=p.max_rtt,
                          source=str(p.source) if p.source else None)
        dm = s.damping
        assert 0 < dm.penalty <= 1e6 and 0 < dm.reuse < dm.suppress <= 1e7, dm
        assert 0 < dm.half_life <= 86400 and 0 < dm.max_suppress <= 86400
        Damping(dm)  # what the core builds for every slave, at start and on reload
    dc = cfg.daemon
    assert dc.log_level in ("debug", "info", "notice", "warning", "error")
    assert dc.stats_interval >= 0.1 and (dc.reconcile_interval == 0 or dc.reconcile_interval >= 1)
    assert 4096 <= dc.netlink_rcvbuf <= 1 << 30
    assert dc.control_socket == "" or (dc.control_socket.startswith("/") and len(dc.control_socket.encode()) <= 107)


def lookup(cfg: Config, loc: Loc) -> object:
    node: object = cfg
    for part in loc:
        node = node[part] if isinstance(node, dict) else getattr(node, str(part))
    return node


# --- values: good ones with what they parse to, and bad ones ------------------------

Good = st.SearchStrategy[tuple[object, object]]

HUGE_INT = Raw("1" + "0" * 400)     # an integer no float can hold
ENORMOUS_INT = Raw("9" * 5000)      # more digits than Python converts by default
BAD_ANYWHERE = [datetime.date(1979, 5, 27), datetime.time(7, 32), [], {"a": 1}, ENORMOUS_INT]


def good_duration(lo: float = 0.0, hi: float = 86400.0, positive: bool = False) -> Good:
    """Durations in [lo, hi] (or (lo, hi] if positive) in every accepted spelling."""
    first = math.floor(lo) + 1 if positive and lo == math.floor(lo) else math.ceil(lo)
    ms_first = math.floor(lo * 1000) + 1 if positive else math.ceil(lo * 1000)
    forms: list[Good] = [
        st.integers(ms_first, int(hi * 1000)).map(lambda n: (f"{n}ms", n / 1000)),
        st.floats(lo, hi, exclude_min=positive).map(lambda x: (x, x)),
    ]
    if first <= int(hi):
        forms += [st.integers(first, int(hi)).map(lambda n: (n, float(n))),
                  st.integers(first, int(hi)).map(lambda n: (f"{n}s", float(n)))]
    if first < int(hi):
        forms.append(st.tuples(st.integers(first, int(hi) - 1), st.integers(0, 999))
                     .map(lambda t: (f"{t[0]}.{t[1]:03d}s", t[0] + t[1] / 1000)))
    if math.ceil(max(lo, 1e-9 if positive else 0) / 60) <= int(hi // 60):
        forms.append(st.integers(math.ceil(max(lo, 1e-9 if positive else 0) / 60), int(hi // 60))
                     .map(lambda n: (f"{n}m", n * 60.0)))
    return st.one_of(forms)


BAD_DURATIONS: list[object] = [
    "1h", "5", "s", "1e3s", "-1s", "", " 1s", "1s ", "1 s", ".5s", "5.s", "1,5s", "１s", "1S", "86401s",
    "1441m", "86400001ms", 86400.0001, 86401, -1, -0.5, math.inf, -math.inf, math.nan, True, [1], "1" + "0" * 400 + "s",
    Raw("1e400"), HUGE_INT, *BAD_ANYWHERE,
]


def bad_duration(*extra: object) -> st.SearchStrategy[object]:
    return st.sampled_from([*extra, *BAD_DURATIONS])


def good_int(lo: int, hi: int) -> Good:
    return st.one_of(st.sampled_from([lo, hi]), st.integers(lo, hi)).map(lambda n: (n, n))


def bad_int(lo: int, hi: int) -> st.SearchStrategy[object]:
    return st.sampled_from([lo - 1, hi + 1, float(lo), True, False, str(lo), [lo], 10**30, -(10**30),
                            HUGE_INT, Raw("-" + "9" * 5000), Raw("inf"), *BAD_ANYWHERE])


def good_float(hi: float) -> Good:
    return st.one_of(st.floats(1e-3, hi), st.integers(1, int(hi))).map(lambda x: (x, float(x)))


def bad_float(hi: float) -> st.SearchStrategy[object]:
    return st.sampled_from([0, 0.0, -0.0, -1, hi * 2, math.inf, -math.inf, math.nan, "1000", True, [1.0],
                            HUGE_INT, *BAD_ANYWHERE])


def same(values: Sequence[object]) -> Good:
    return st.sampled_from([(v, v) for v in values])


def probe_target(a: IPv4Address) -> bool:
    """docs/config.md: unicast and routable; not 0/8, loopback, multicast or 255.255.255.255."""
    return not (int(a) >> 24 in (0, 127) or 224 <= int(a) >> 24 <= 239 or int(a) == 0xFFFFFFFF)


def good_ipv4() -> Good:
    return st.ip_addresses(v=4).map(lambda a: (str(a), a))


BAD_IPV4: list[object] = ["1.2.3.4/32", "::1", "256.0.0.1", "1.2.3", "", " 1.2.3.4", 16909060, True, ["1.2.3.4"]]

GOOD_SLAVE_NAMES = ["wan0", "wan1", "a", "a" * 15, "wan\x01", "wan\x7f", "ppp-0_x", "wan.0", "eth0.100",
                    "é" * 7 + "a", "€" * 5, "😀" * 3 + "abc", "teql", "teqlx", "TEQL0"]
BAD_SLAVE_NAMES: list[object] = ["", ".", "..", "a" * 16, "é" * 8, "€" * 5 + "a", "😀" * 4, "wan/0", "wan:0",
                                 "wan 0", "wan\t0", "wan\0", "wan\n0", "wan\u00a00", "\u3000", "teql0", "teql01",
                                 "teql99", 5, True, ["wan0"], {"name": "wan0"}]
GOOD_EQ_NAMES = ["teql0", "teql1", "teql2", "teql10", "teql4294967296"]
BAD_EQ_NAMES = ["teql01", "teql123456789012", "teql", "eql0", "Teql0", "teql-1", "teql0.x", "", "teql 0", "teql0\n", "teql١"]


def slave_names() -> st.SearchStrategy[str]:
    generated = (st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="/:"),
                         min_size=1, max_size=15)
                 .map(lambda s: s.encode()[:15].decode(errors="ignore"))  # at most 15 bytes, whole characters
                 .filter(lambda s: valid_ifname(s) and not re.fullmatch(r"teql[0-9]+", s)))
    return st.one_of(st.sampled_from(GOOD_SLAVE_NAMES), generated)


def eq_names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(GOOD_EQ_NAMES), st.integers(0, 10**11 - 1).map(lambda n: f"teql{n}"))  # 15 bytes


UNKNOWN_KEYS = st.one_of(st.sampled_from(["colour", "updelay", "slave", "Probe", "log-level", "", "a.b",
                                          "metric", "targets "]),
                         st.text(max_size=8))
ANY_VALUE: st.SearchStrategy[object] = st.one_of(
    st.booleans(), st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=10),
    st.sampled_from([datetime.date(2000, 1, 1), HUGE_INT, Raw("1e400")]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


# --- documents that follow the schema's shape --------------------------------------------

@dataclass
class Generated:
    """A document, where problems must be reported, and what the good values parse to."""

    doc: dict[str, Any]
    bad: list[Loc] = field(default_factory=list)
    expect: dict[Loc, object] = field(default_factory=dict)

    def text(self) -> str:
        return toml_doc(self.doc)


class Builder:
    def __init__(self, draw: st.DrawFn, allow_bad: bool) -> None:
        self.draw = draw
        self.allow_bad = allow_bad
        self.out = Generated({})

    def spoil(self) -> bool:
        """Whether to plant a bad value here (about one in five, when allowed)."""
        return self.allow_bad and self.draw(st.integers(0, 4)) == 4

    def leaf(self, table: dict[str, Any], loc: Loc, key: str, good: Good, bad: st.SearchStrategy[object],
             optional: bool = True) -> object:
        """Maybe set table[key]; returns what it parses to (None: omitted or bad)."""
        if optional and self.draw(st.integers(0, 2)) == 0:
            return None
        if self.spoil():
            table[key] = self.draw(bad)
            self.out.bad.append((*loc, key))
            return None
        value, parsed = self.draw(good)
        table[key] = value
        self.out.expect[(*loc, key)] = parsed
        return parsed

    def unknown(self, table: dict[str, Any], loc: Loc) -> None:
        if self.spoil():
            key = self.draw(UNKNOWN_KEYS.filter(lambda k: k not in SCHEMA_KEYS and k not in table))
            table[key] = self.draw(ANY_VALUE)
            self.out.bad.append((*loc, key))

    def table(self, parent: dict[str, Any], loc: Loc, key: str) -> dict[str, Any] | None:
        """A sub-table, or (planted) something else where the table belongs."""
        if self.spoil():
            parent[key] = self.draw(st.sampled_from([5, "table", True, [1], [{"a": 1}], datetime.date(2000, 1, 1)]))
            self.out.bad.append((*loc, key))
            return None
        sub: dict[str, Any] = {}
        parent[key] = sub
        return sub


def build_daemon(b: Builder, doc: dict[str, Any]) -> None:
    t = b.table(doc, (), "daemon")
    if t is None:
        return
    loc: Loc = ("daemon",)
    b.leaf(t, loc, "metrics_listen", same(["", "127.0.0.1:9783", "[::1]:9783", "localhost:1", "0.0.0.0:65535"]),
           st.sampled_from(["127.0.0.1", ":9783", "[::1:9783", "::1:9783", "host:65536", "a b:80", 9783]))
    b.leaf(t, loc, "log_level", same(["debug", "info", "notice", "warning", "error"]),
           st.sampled_from(["loud", "INFO", "", 1, True]))
    b.leaf(t, loc, "control_socket", same(["", "/run/wanbalanced/control.sock", "/" + "a" * 106]),
           st.sampled_from(["relative.sock", "/" + "a" * 107, 5]))
    b.leaf(t, loc, "stats_interval", good_duration(0.1), bad_duration("99ms", 0.05, 0))
    b.leaf(t, loc, "reconcile_interval", st.one_of(same([0]).map(lambda v: (v[0], 0.0)), good_duration(1.0)),
           bad_duration(0.5, "999ms", "1ms"))
    b.leaf(t, loc, "netlink_rcvbuf", good_int(4096, 1 << 30), bad_int(4096, 1 << 30))
    b.unknown(t, loc)


def build_equalizers(b: Builder, doc: dict[str, Any], names: st.SearchStrategy[str],
                     eqs: st.SearchStrategy[str]) -> list[str]:
    """Returns the slaves listed (good or not), in order."""
    t = b.table(doc, (), "equalizers")
    if t is None:
        return []
    draw = b.draw
    eq_list = draw(st.lists(eqs, min_size=1, max_size=3, unique=True))
    slaves = draw(st.lists(names, min_size=len(eq_list), max_size=len(eq_list) + 4, unique=True))
    groups: list[list[object]] = [[s] for s in slaves[:len(eq_list)]]
    for s in slaves[len(eq_list):]:
        groups[draw(st.integers(0, len(groups) - 1))].append(s)
    ips: set[IPv4Address] = set()
    listed: list[str] = []
    for i, (eq, group) in enumerate(zip(eq_list, groups)):
        if b.spoil():
            eq = draw(st.sampled_from(BAD_EQ_NAMES).filter(lambda n: n not in t))
            b.out.bad.append(("equalizers", eq))
        loc: Loc = ("equalizers", eq)
        e: dict[str, Any] = {}
        t[eq] = e
        kind = draw(st.integers(0, 4)) if b.spoil() else None
        if kind == 0:
            e["slaves"] = []
        elif kind == 1:
            e["slaves"] = group[0]  # a string, not an array
        elif kind == 3:  # a bad name
            at = draw(st.integers(0, len(group)))
            group.insert(at, draw(st.sampled_from(BAD_SLAVE_NAMES)))
            b.out.bad.append((*loc, "slaves", at))
        elif kind == 4:  # listed twice, or a slave of an earlier equalizer
            group.append(draw(st.sampled_from(listed)) if listed else group[0])
            b.out.bad.append((*loc, "slaves", len(group) - 1))
        if kind in (0, 1, 2):  # 2: missing
            b.out.bad.append((*loc, "slaves"))
        else:
            e["slaves"] = group
            if kind is None:
                b.out.expect[(*loc, "slaves")] = tuple(group)
            listed += [s for s in group if isinstance(s, str)]
        address = draw(st.one_of(st.sampled_from(["10.0.0.0/31", "0.0.0.0/0", "255.255.255.255/32", "192.0.2.7/24"]),
                                 st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}")))
        if IPv4Interface(address).ip not in ips:
            parsed = b.leaf(e, loc, "address", st.just((address, IPv4Interface(address))),
                            st.sampled_from(["10.0.0.256/31", "10.0.0.0/33", "10.0.0.0", "::1/128", "10.0.0.0/-1",
                                             "", "fe80::1/64", "10.0.0.0/31 ", 10, True, ["10.0.0.0/31"]]))
            if parsed is not None:
                ips.add(IPv4Interface(address).ip)
        b.leaf(e, loc, "default_route", same([True, False]), st.sampled_from([1, 0, "true", "yes", [True]]))
        b.leaf(e, loc, "route_metric", good_int(0, 2**32 - 1), bad_int(0, 2**32 - 1))
        b.leaf(e, loc, "route_table", st.one_of(same([254, 253, 100]), good_int(1, 254), good_int(256, 2**32 - 1)),
               st.one_of(bad_int(1, 2**32 - 1), st.just(255)))
        b.leaf(e, loc, "rp_filter", st.one_of(same([0, 1, 2]), st.just(("unmanaged", None))),
               st.sampled_from([3, -1, True, "0", "none", "", 1.0]))
        b.unknown(e, loc)
    keys = list(t)
    firsts = [k for k in keys if ("equalizers", k, "address") in b.out.expect]
    if firsts and keys.index(firsts[0]) + 1 < len(keys) and b.spoil():
        # An address used twice: reported at the later equalizer.
        later = draw(st.sampled_from(keys[keys.index(firsts[0]) + 1:]))
        t[later]["address"] = t[firsts[0]]["address"]
        b.out.bad.append(("equalizers", later, "address"))
        b.out.expect.pop(("equalizers", later, "address"), None)
    return listed


def build_probe(b: Builder, s: dict[str, Any], loc: Loc) -> None:
    p = b.table(s, loc, "probe")
    if p is None:
        return
    loc = (*loc, "probe")
    draw = b.draw
    n = None
    if b.spoil():
        p["targets"] = draw(st.sampled_from([[], "192.0.2.1", [f"192.0.2.{i}" for i in range(17)],
                                             ["192.0.2.1", "192.0.2.1"], ["192.0.2.1", "192.0.2.1/32"], ["::1"],
                                             [1], [["192.0.2.1"]], ["0.0.0.0"], ["127.0.0.1"], ["224.0.0.5"],
                                             ["192.0.2.1", "255.255.255.255"]]))
        b.out.bad.append((*loc, "targets"))
    elif b.allow_bad and draw(st.integers(0, 9)) == 0:
        b.out.bad.append((*loc, "targets"))  # missing
    else:
        targets = draw(st.lists(st.ip_addresses(v=4).filter(probe_target), min_size=1, max_size=16, unique=True))
        p["targets"] = [str(a) for a in targets]
        b.out.expect[(*loc, "targets")] = tuple(targets)
        n = len(targets)
    b.leaf(p, loc, "interval", good_duration(0.05, 60.0), bad_duration("49ms", 0.049, 0, "60001ms", 60.5, "2m"))
    b.leaf(p, loc, "timeout", good_duration(0.01, 60.0), bad_duration("9ms", 0.0099, 0, "61s"))
    b.leaf(p, loc, "down_after", good_int(1, 1000), bad_int(1, 1000))
    b.leaf(p, loc, "up_after", good_int(1, 1000), bad_int(1, 1000))
    if n is not None and b.spoil():
        p["min_targets"] = n + 1  # more than the targets: reported at the probe table
        b.out.bad.append(loc if n < 16 else (*loc, "min_targets"))
    else:
        b.leaf(p, loc, "min_targets", good_int(1, n or 1), bad_int(1, 16))
    b.leaf(p, loc, "max_rtt", good_duration(positive=True), bad_duration(0, "0ms", 0.0))
    b.leaf(p, loc, "source", good_ipv4(), st.sampled_from(BAD_IPV4))
    b.unknown(p, loc)


def build_damping(b: Builder, s: dict[str, Any], loc: Loc) -> None:
    d = b.table(s, loc, "damping")
    if d is None:
        return
    loc = (*loc, "damping")
    b.leaf(d, loc, "enabled", same([True, False]), st.sampled_from([1, "yes", "true", [True]]))
    b.leaf(d, loc, "penalty", good_float(1e6), bad_float(1e6))
    suppress = b.leaf(d, loc, "suppress", good_float(1e7), bad_float(1e7))
    limit = suppress if isinstance(suppress, float) else 2500.0
    if (*loc, "suppress") not in b.out.bad and b.spoil():
        d["reuse"] = limit  # not below suppress: reported at the damping table
        b.out.bad.append(loc)
        reuse = None
    else:
        reuse = b.leaf(d, loc, "reuse", st.floats(0, limit, exclude_min=True, exclude_max=True).map(lambda x: (x, x)),
                       bad_float(1e7), optional=limit > 800)
    half_life = b.leaf(d, loc, "half_life", good_duration(positive=True), bad_duration(0, "0s", "0ms", -0.0))
    max_suppress = b.leaf(d, loc, "max_suppress", good_duration(positive=True), bad_duration(0, "0s"))
    keys = ("suppress", "reuse", "half_life", "max_suppress")
    if loc not in b.out.bad and not any((*loc, k) in b.out.bad for k in keys):
        # The table is checked as a whole once its fields are good: a penalty
        # capped below suppress (the defaults where omitted) is refused there.
        ceiling = (reuse if isinstance(reuse, float) else 800.0) * 2 ** min(
            (max_suppress if isinstance(max_suppress, float) else 600.0)
            / (half_life if isinstance(half_life, float) else 60.0), 1000.0)
        if ceiling < limit:
            b.out.bad.append(loc)
    b.unknown(d, loc)


def build_slaves(b: Builder, doc: dict[str, Any], listed: list[str]) -> None:
    draw = b.draw
    names = draw(st.lists(st.sampled_from(listed), unique=True, max_size=3)) if listed else []
    stranger = draw(st.sampled_from(["wan99", "eth9", "teql0", "wan 0"]).filter(lambda n: n not in listed))
    if b.spoil():
        names.append(stranger)  # a table for a slave of no equalizer
    if not names:
        return
    t = b.table(doc, (), "slaves")
    if t is None:
        return
    for name in names:
        s = b.table(t, ("slaves",), name)
        if name == stranger and s is not None:
            b.out.bad.append(("slaves", name))
        if s is None:
            continue
        loc: Loc = ("slaves", name)
        b.leaf(s, loc, "up_delay", good_duration(), bad_duration())
        b.leaf(s, loc, "down_delay", good_duration(), bad_duration())
        if draw(st.booleans()):
            build_probe(b, s, loc)
        if draw(st.booleans()):
            build_damping(b, s, loc)
        b.unknown(s, loc)


@st.composite
def documents(draw: st.DrawFn, names: st.SearchStrategy[str] | None = None,
              eqs: st.SearchStrategy[str] | None = None, allow_bad: bool | None = None) -> Generated:
    b = Builder(draw, draw(st.booleans()) if allow_bad is None else allow_bad)
    doc = b.out.doc
    if draw(st.booleans()):
        build_daemon(b, doc)
    listed = build_equalizers(b, doc, slave_names() if names is None else names,
                              eq_names() if eqs is None else eqs)
    build_slaves(b, doc, listed)
    b.unknown(doc, ())
    if draw(st.integers(0, 3)) == 0:  # keys in another order than the file's usual one
        keys = draw(st.permutations(list(doc)))
        b.out.doc = {k: doc[k] for k in keys}
    return b.out


# Anything at all, with the schema's keys among random ones.
WILD_KEYS = st.one_of(st.sampled_from(sorted(SCHEMA_KEYS) + ["teql0", "teql1", "teql01", "wan0", "wan1", "[key]"]),
                      st.text(max_size=6))
WILD_LEAVES: st.SearchStrategy[object] = st.one_of(
    ANY_VALUE, st.sampled_from(BAD_DURATIONS + BAD_SLAVE_NAMES + GOOD_SLAVE_NAMES + ["10.0.0.0/31", "250ms", "unmanaged"]),
    st.datetimes(), st.times())
WILD: st.SearchStrategy[object] = st.recursive(
    WILD_LEAVES, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(WILD_KEYS, kids, max_size=4)),
    max_leaves=25)


@st.composite
def wild_documents(draw: st.DrawFn) -> dict[str, Any]:
    base = draw(documents()).doc if draw(st.booleans()) else {}
    for _ in range(draw(st.integers(0, 4))):  # graft random values anywhere in the tree
        node: dict[str, Any] = base
        while True:
            tables = [k for k, v in node.items() if isinstance(v, dict)]
            if not tables or draw(st.booleans()):
                break
            node = node[draw(st.sampled_from(tables))]
        node[draw(WILD_KEYS)] = draw(WILD)
    return base


# --- 0. the writer itself -----------------------------------------------------------

def plain(v: object) -> object:
    """A written value as tomllib reads it back (nan made comparable)."""
    if isinstance(v, Raw):
        return plain(tomllib.loads(f"x = {v.text}")["x"])
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


@FAST
@given(st.one_of(documents().map(lambda g: g.doc), wild_documents()))
def test_toml_writer_round_trips(doc: dict[str, Any]) -> None:
    text = toml_doc(doc)
    if ENORMOUS_INT.text in text:
        return  # Python itself refuses to read that integer
    assert plain(tomllib.loads(text)) == plain(doc)


# --- 1. check-config on anything ---------------------------------------------------------

FRAGMENTS = ["[equalizers.teql0]", "[daemon]", "[slaves.wan0]", "[slaves.wan0.probe]", "[[equalizers]]",
             "[equalizers]", "slaves = ", '["wan0", "wan1"]', "=", '"', "'", '"""', "'''", "[", "]", "{", "}",
             ",", ".", "\n", "\r\n", "\r", "\t", " ", "\x00", "\x7f", "\ufeff", "#", "1e999", "-inf", "nan",
             "9" * 30, "9" * 5000, "1" + "0" * 400, "0x7fffffffffffffff", "1979-05-27T07:32:00Z", "07:32:00",
             "true", "up_delay = ", "address = ", "route_metric = ", '"10.0.0.0/31"', '"250ms"', "\\u0000",
             "\\", "é", "😀", "\u2028", "teql0", "wan0", "a.b.c"]


def nested(opener: str, depth: int) -> str:
    closer = {"[": "]", "{a=": "}", "{a=[": "]}", "[{a=": "}]"}[opener]
    inner = '"x"' if opener.endswith("=") else ""
    return opener * depth + inner + closer * depth


def nesting(depth: int) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(["[", "{a=", "{a=[", "[{a="]), st.integers(1, depth),
                     st.sampled_from(["x = {}\n", "[daemon]\nlog_level = {}\n",
                                      "[equalizers.teql0]\nslaves = {}\n", "[slaves.wan0]\nup_delay = {}\n"])).map(
        lambda t: t[2].format(nested(t[0], t[1])) + '[equalizers.teql9]\nslaves = ["x0"]\n')


RANDOM_FILES: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400).map(lambda s: s.encode()),
    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(lambda parts: "".join(parts).encode()),
    documents().map(lambda g: g.text().encode()),
    st.tuples(documents(), st.integers(0, 10**6), st.binary(max_size=6), st.integers(0, 6)).map(
        lambda t: (lambda b, i: b[:i] + t[2] + b[i + t[3]:])(t[0].text().encode(), t[1] % (len(t[0].text()) + 1))),
    nesting(600).map(lambda s: s.encode()),
    st.integers(1, 400).map(lambda n: ("a." * n + "a = 1\n").encode()),
    st.integers(1, 400).map(lambda n: ("[" + "a." * n + "a]\n").encode()),
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_config(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(["check-config", "--config", str(path)])
    return rc, out.getvalue(), err.getvalue()


def assert_check_config_clear(path: Path) -> int:
    """Run check-config on a file: 0 or 1, never an exception, and a well-formed report."""
    rc, out, err = check_config(path)
    assert rc in (0, 1)
    assert "Traceback" not in out + err
    if rc == 0:
        assert err == "" and out.endswith(f"{path}: OK\n")
        check_invariants(load_config(path))
        return rc
    assert out == ""
    lines = err.rstrip("\n").split("\n")
    n = len(lines) - 1
    assert n >= 1 and lines[0] == f"{path}: {n} problem{'' if n == 1 else 's'}", err
    for line in lines[1:]:
        assert line.startswith("  ") and line[2:3].strip(), f"not '  <path>: <message>' nor '  <message>': {line!r}"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == n
    text: str | None
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        text = None
    if text is None:
        assert [p.path for p in info.value.problems] == [""]
    check_problems(info.value, text)
    return rc


@FAST
@given(RANDOM_FILES)
@example(b"")
@example(b"\xff\xfe\x00")
@example(b'[slaves.w\xe4n0]\n')
@example(b"\xc0\xaf\xed\xa0\x80")
@example(b"\xef\xbb\xbf" + DAEMON_CONFIG.encode())
@example(DAEMON_CONFIG.encode().replace(b"rp_filter = 0", b"rp_filter = 0\x00"))
@example(("x = " + "[" * 100_000 + "]" * 100_000).encode())
@example(("[daemon]\nlog_level = " + nested("[", 490) + "\n").encode())
@example(DAEMON_CONFIG.encode() + b"route_metric = " + b"9" * 30 + b"\n")
@example(DAEMON_CONFIG.encode() + b"route_metric = " + b"9" * 5000 + b"\n")  # tomllib: > 4300 digits
@example(DAEMON_CONFIG.encode() + b"[slaves.wan0]\nup_delay = 1" + b"0" * 400 + b"\n")  # no float holds it
def test_check_config_never_crashes(workdir: Path, data: bytes) -> None:
    path = workdir / "config.toml"
    path.write_bytes(data)
    assert_check_config_clear(path)


# --- 2. parse_config on documents of the schema's shape ------------------------------------

def check_parse(text: str, bad: Sequence[Loc] = (), expect: dict[Loc, object] | None = None) -> Config | None:
    """parse_config returns a Config (then its invariants hold) or raises a clear
    ConfigError. With `expect`, the document is meant to be valid unless `bad`
    names something: then it must be accepted with these values."""
    try:
        cfg = parse_config(text)
    except ConfigError as e:
        check_problems(e, text, bad)
        assert bad or expect is None, f"a valid document was refused:\n{e}\n---\n{text}"
        return None
    assert not bad, f"accepted, although these are bad: {[fmt(b) for b in bad]}\n---\n{text}"
    check_invariants(cfg)
    for loc, want in (expect or {}).items():
        got = lookup(cfg, loc)
        if isinstance(want, float):
            assert isinstance(got, float) and math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-15), (loc, got, want)
        else:
            assert got == want, (loc, got, want)
    return cfg


@FAST
@given(documents())
@example(Generated({"daemon": {"a.b": 1}, "equalizers": {"teql0": {"slaves": ["wan0"]}}}, bad=[("daemon", "a.b")]))
@example(Generated({"equalizers": {"teql0": {"slaves": ["wan0"]}}, "slaves": {"wan0": {"up_delay": HUGE_INT}}},
                   bad=[("slaves", "wan0", "up_delay")]))
@example(Generated({"equalizers": {"teql0": {"slaves": ["wan0"], "route_metric": ENORMOUS_INT}}},
                   bad=[("equalizers", "teql0", "route_metric")]))
@example(Generated({"equalizers": {"teql0": {"slaves": ["wan0"]}},
                    "slaves": {"wan0": {"probe": {"targets": ["192.0.2.1"], "max_rtt": "0ms"}}}},
                   bad=[("slaves", "wan0", "probe", "max_rtt")]))
@example(Generated({"equalizers": {"teql0": {"slaves": ["wan0"]}},
                    "slaves": {"wan0": {"damping": {"max_suppress": "1440m"}}}}))
@example(Generated({"equalizers": {"teql0\n": {"slaves": ["wan0"], "address": "10.0.0.0/31"},
                                   "teql1": {"slaves": ["wan1"], "address": "10.0.0.0/31"}}},
                   bad=[("equalizers", "teql0\n"), ("equalizers", "teql1", "address")]))
@example(Generated({"equalizers": {"teql0\n": {"slaves": ["wan0"]}, "teql1": {"slaves": ["wan0"]}}},
                   bad=[("equalizers", "teql0\n"), ("equalizers", "teql1", "slaves", 0)]))
def test_structured_documents(g: Generated) -> None:
    check_parse(g.text(), g.bad, g.expect)


@FAST
@given(wild_documents())
def test_wild_documents(doc: dict[str, Any]) -> None:
    check_parse(toml_doc(doc))


# --- 3. limits ------------------------------------------------------------------------

def one_slave(extra: dict[str, Any]) -> dict[str, Any]:
    return {"equalizers": {"teql0": {"slaves": ["wan0"]}}, "slaves": {"wan0": extra}}


def verdict(doc: dict[str, Any], ok: bool, where: Loc, workdir: Path) -> Config | None:
    """The document is accepted (ok) or refused with a problem at `where`; check-config agrees."""
    text = toml_doc(doc)
    path = workdir / "limit.toml"
    path.write_text(text, encoding="utf-8")
    assert assert_check_config_clear(path) == (0 if ok else 1)
    cfg = check_parse(text, () if ok else [where])
    assert (cfg is not None) == ok
    return cfg


@pytest.mark.parametrize(("name", "ok"), [
    ("a", True), ("a" * 15, True), ("a" * 16, False), ("", False), (".", False), ("..", False),
    ("wan/0", False), ("wan:0", False), ("wan 0", False), ("wan\t0", False), ("wan\0", False),
    ("é" * 7 + "a", True), ("é" * 8, False), ("€" * 5, True), ("€" * 5 + "a", False),
    ("😀" * 3 + "abc", True), ("😀" * 4, False), ("...", True), (".wan", True),
])
def test_interface_name_limits(workdir: Path, name: str, ok: bool) -> None:
    doc = {"equalizers": {"teql0": {"slaves": ["wan9", name]}}}
    cfg = verdict(doc, ok, ("equalizers", "teql0", "slaves", 1), workdir)
    assert cfg is None or cfg.equalizers["teql0"].slaves == ("wan9", name)


@pytest.mark.parametrize(("address", "ok"), [
    ("10.0.0.0/31", True), ("0.0.0.0/0", True), ("255.255.255.255/32", True), ("10.0.0.256/31", False),
    ("10.0.0.0/33", False), ("10.0.0.0", False), ("::1/128", False), ("10.0.0.0/-1", False),
    ("10.0.0.0/", False), ("/31", False), ("10.0.0.0/31/1", False),
])
def test_address_limits(workdir: Path, address: str, ok: bool) -> None:
    doc = {"equalizers": {"teql0": {"slaves": ["wan0"], "address": address}}}
    cfg = verdict(doc, ok, ("equalizers", "teql0", "address"), workdir)
    assert cfg is None or cfg.equalizers["teql0"].address == IPv4Interface(address)


@pytest.mark.parametrize(("written", "seconds"), [
    (0, 0.0), ("0ms", 0.0), ("86400s", 86400.0), ("1440m", 86400.0), ("86400000ms", 86400.0), (86400, 86400.0),
    (86400.0, 86400.0), ("1.5ms", 0.0015), (-0.0, 0.0),
    (86400.0001, None), ("86401s", None), ("1441m", None), ("86400001ms", None), (-1, None), ("1e3s", None),
    ("5", None), ("s", None), ("1h", None), ("", None), (Raw("1e400"), None), (math.inf, None), (math.nan, None),
    ("1" + "0" * 400 + "s", None), (HUGE_INT, None), (ENORMOUS_INT, None),
])
@pytest.mark.parametrize("key", ["up_delay", "down_delay"])
def test_duration_limits(workdir: Path, key: str, written: object, seconds: float | None) -> None:
    cfg = verdict(one_slave({key: written}), seconds is not None, ("slaves", "wan0", key), workdir)
    assert cfg is None or getattr(cfg.slave("wan0"), key) == seconds


@pytest.mark.parametrize(("key", "value", "ok"), [
    ("route_metric", 0, True), ("route_metric", 4294967295, True), ("route_metric", 4294967296, False),
    ("route_metric", -1, False), ("route_table", 1, True), ("route_table", 0, False),
    ("route_table", 4294967295, True), ("route_table", 4294967296, False), ("route_metric", 10**30, False),
    ("route_metric", ENORMOUS_INT, False), ("route_metric", 1.0, False), ("route_metric", True, False),
])
def test_route_number_limits(workdir: Path, key: str, value: object, ok: bool) -> None:
    cfg = verdict({"equalizers": {"teql0": {"slaves": ["wan0"], key: value}}}, ok, ("equalizers", "teql0", key),
                  workdir)
    assert cfg is None or getattr(cfg.equalizers["teql0"], key) == value


@pytest.mark.parametrize(("key", "value", "ok"), [
    ("interval", "50ms", True), ("interval", "49ms", False), ("interval", 0.05, True), ("interval", 0.0499, False),
    ("interval", "60s", True), ("interval", "60001ms", False), ("interval", "1m", True),
    ("timeout", "10ms", True), ("timeout", "9ms", False), ("timeout", "60s", True), ("timeout", 60.001, False),
])
def test_probe_timing_limits(workdir: Path, key: str, value: object, ok: bool) -> None:
    verdict(one_slave({"probe": {"targets": ["192.0.2.1"], key: value}}), ok, ("slaves", "wan0", "probe", key),
            workdir)


def test_unknown_key_named_like_pydantics_marker_is_reported_where_it_is(workdir: Path) -> None:
    # pydantic marks an invalid dict key with a "[key]" location part; a key
    # really called "[key]" must still be reported at its own path.
    verdict({"daemon": {"[key]": 1}, "equalizers": {"teql0": {"slaves": ["wan0"]}}}, False,
            ("daemon", "[key]"), workdir)


# --- 4. reloading a running daemon --------------------------------------------------

KERNEL_SLAVES = ["wan0", "wan1", "wan2", "wan3"]


def kernel_truth() -> Snapshot:
    """teql0 and teql1 exist (teql2 does not); wan3 has no carrier."""
    return snapshot(master(2, "teql0"), master(3, "teql1"), slave(10, "wan0"), slave(11, "wan1"),
                    slave(12, "wan2"), slave(13, "wan3", carrier=False))


class IdleProber:
    """Stands in for the raw-socket prober: never sends, so a probed slave stays unproven."""

    def __init__(self, slave: str, settings: ProbeSettings, on_round: Callable[..., None]) -> None:
        self.slave = slave

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def check_kernel(d: Daemon, truth: Snapshot) -> None:
    """The kernel holds what the configuration in effect wants, and nothing a
    previous configuration made that this one does not."""
    cfg = d.config
    plan = d.core.plan(d.snap)
    assert not plan.actions, f"not converged: {[a.command() for a in plan.actions]}"
    assert d.snap == truth, "the daemon's view differs from the kernel's truth"
    for dev in truth.links.values():
        if dev.qdisc is not None and is_teql_name(dev.qdisc.kind):
            eq = cfg.equalizers.get(dev.qdisc.kind)
            assert eq is not None and dev.name in eq.slaves, f"{dev.name} left attached to {dev.qdisc.kind}"
            assert dev.has_carrier, f"{dev.name} attached without carrier"
        if is_teql_name(dev.name):
            eq = cfg.equalizers.get(dev.name)
            addresses = {a.interface for a in truth.addresses_of(dev.index)}
            assert addresses <= ({eq.address} if eq is not None and eq.address is not None else set()), \
                f"{dev.name} keeps {addresses}"
            for r in truth.routes_via(dev.index):
                if r.is_default:
                    assert eq is not None and eq.default_route and (r.table, r.priority) == (
                        eq.route_table, eq.route_metric), f"stale default route {r}"
    for eq_name, eq_cfg in cfg.equalizers.items():
        m = truth.link(eq_name)
        attached = False
        for name in eq_cfg.slaves:
            link = truth.link(name)
            if link is None:
                continue
            if eq_cfg.rp_filter is not None:
                assert link.rp_filter == eq_cfg.rp_filter, f"{name}: rp_filter {link.rp_filter}"
            s = cfg.slave(name)
            state = d.core.machines[name].state
            # (An up_delay running when it was shortened still runs out: timers carry over a reload.)
            if m is not None and link.has_carrier and s.probe is None and s.up_delay == 0 and state is not State.UP_DELAY:
                assert link.attached_to(eq_name), f"{name} should be attached to {eq_name} ({state})"
            attached |= link.attached_to(eq_name)
        if m is not None and eq_cfg.address is not None:
            assert eq_cfg.address in {a.interface for a in truth.addresses_of(m.index)}, f"{eq_name} lacks its address"
        if m is not None and attached:
            assert m.admin_up, f"{eq_name} has slaves but is down"
            if eq_cfg.default_route:  # ours, or another one with the same metric (a fault the daemon reports)
                assert any(r.priority == eq_cfg.route_metric for r in truth.default_routes(eq_cfg.route_table)), \
                    f"no default route via {eq_name}"


async def reload_once(d: Daemon, task: asyncio.Task[int], kernel: FakeKernel, path: Path, data: bytes) -> None:
    old = d.config
    path.write_bytes(data)
    try:
        expected: Config | None = load_config(path)
    except ConfigError:
        expected = None
    ok = await d.reload()
    assert ok is (expected is not None)
    if expected is None:
        assert d.config is old, "a refused file changed the configuration"
    else:
        assert d.config == expected
    assert d.core.config is d.config and d.report.config is d.config, "configuration applied halfway"
    assert d.counters.reload_successful is ok
    assert d.status is not None and d.status.reload_successful is ok
    assert not task.done(), "the daemon loop stopped"
    # Let the loop reconcile from a fresh dump, as its safety net does.
    dumps = kernel.dumps
    d._queue.put_nowait(Intent.RECONCILE)
    await until(lambda: kernel.dumps > dumps or task.done())
    await asyncio.sleep(0)
    assert not task.done(), f"the daemon loop stopped: {task.exception() if not task.cancelled() else 'cancelled'}"
    check_kernel(d, kernel.truth)


async def reload_scenario(contents: Sequence[bytes]) -> None:
    logger = logging.getLogger("wanbalanced")
    level = logger.level
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(DAEMON_CONFIG)
        kernel = FakeKernel(kernel_truth())
        d, task = await start(kernel, str(path))
        try:
            for data in contents:
                await reload_once(d, task, kernel, path, data)
        finally:
            logger.setLevel(level)
            if not task.done():
                d._queue.put_nowait(Intent.STOP)
                await asyncio.wait_for(task, 2.0)
            elif not task.cancelled():
                task.exception()  # retrieved: reported by the assertion above


RELOAD_DOCS = documents(names=st.sampled_from(KERNEL_SLAVES + ["wan9"]),
                        eqs=st.sampled_from(["teql0", "teql0", "teql1", "teql2"]))
RELOAD_FILES: st.SearchStrategy[bytes] = st.one_of(
    RELOAD_DOCS.map(lambda g: g.text().encode()),
    RELOAD_DOCS.map(lambda g: g.text().encode()),
    wild_documents().map(lambda doc: toml_doc(doc).encode()),
    st.binary(max_size=100),
    st.tuples(RELOAD_DOCS, st.integers(0, 10**6), st.binary(max_size=4)).map(
        lambda t: (lambda b, i: b[:i] + t[2] + b[i:])(t[0].text().encode(), t[1] % (len(t[0].text()) + 1))),
)

MOVE_AND_RETABLE = toml_doc({"equalizers": {"teql1": {"slaves": ["wan1", "wan2"], "address": "10.0.0.2/31",
                                                       "route_table": 100, "route_metric": 7}}}).encode()


@settings(FAST, max_examples=60)
@given(st.lists(RELOAD_FILES, min_size=1, max_size=4))
@example([MOVE_AND_RETABLE, b"[", DAEMON_CONFIG.encode()])
@example([DAEMON_CONFIG.encode() + b"route_metric = " + b"9" * 5000 + b"\n", MOVE_AND_RETABLE])
@example([DAEMON_CONFIG.encode() + b"[slaves.wan0]\nup_delay = 1" + b"0" * 400 + b"\n"])
@example([toml_doc({"equalizers": {"teql" + "9" * 4400: {"slaves": ["wan2"]}}}).encode()])
@example([DAEMON_CONFIG.replace("rp_filter = 0", "route_table = 255").encode()])
@example([DAEMON_CONFIG.encode() + b'[slaves.wan0.probe]\ntargets = ["192.0.2.1"]\nmax_rtt = "0ms"\n'])
@example([DAEMON_CONFIG.encode() + b'[slaves.wan0.damping]\nmax_suppress = "1440m"\n'])
def test_reload_keeps_or_applies_whole_configs(contents: list[bytes]) -> None:
    with mock.patch.object(probing, "Prober", IdleProber):
        asyncio.run(reload_scenario(contents))
