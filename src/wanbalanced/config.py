"""Configuration: a TOML file validated into frozen pydantic models.

Every problem in a file is reported at once, each with its TOML key path, so an
operator can fix a file in one pass; no input ever produces a traceback.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from ipaddress import (IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_address,
                       ip_interface, ip_network)
from typing import Annotated, Any, Iterable, Literal

from . import _pydantic  # noqa: F401 - first: pydantic without its plugin loader's import
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator,
                      ValidationError, ValidationInfo, model_validator)

from .defaults import (DEFAULT_CONTROL_SOCKET, DEFAULT_NETLINK_RCVBUF, LOG_LEVELS, TEQL_LIKE, LogLevel, check_socket_path,
                       teql_number)

__all__ = ["DEFAULT_CONTROL_SOCKET", "DEFAULT_NETLINK_RCVBUF", "LOG_LEVELS", "AllDown", "Config", "ConfigError",
           "DaemonConfig", "DampingConfig", "Duration", "EqualizerConfig", "LineRouteConfig", "LineRuleConfig",
           "ProbeConfig", "Problem", "SlaveConfig", "load_config", "parse_config"]

Loc = tuple[str | int, ...]
_MAX_DURATION = 86400.0  # a day: anything longer is surely a typo, not a debounce
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)")
_DURATION_FORMS = 'expected a duration such as "250ms", "2s", "1.5s", "1m", or a number of seconds'
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# The MTUs a teql device accepts (sch_teql.c, teql_master_setup: min_mtu, max_mtu).
_MIN_MTU, _MAX_MTU = 68, 65535
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)



def _q(v: object) -> str:
    """Show a value roughly as TOML writes it ("a", true); dates fall back to str()."""
    return json.dumps(v, ensure_ascii=False, default=str)


def _parse_duration(v: object) -> float:
    if isinstance(v, str):
        if not (m := _DURATION_RE.fullmatch(v)):
            raise ValueError(f"invalid duration {_q(v)}: {_DURATION_FORMS}")
        seconds = float(m[1]) * _UNITS[m[2]]
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        if isinstance(v, int) and abs(v) > _MAX_DURATION:  # also ints too big for a float
            raise ValueError(f"duration {'-' if v < 0 else ''}{min(abs(v), 10**12)}"
                             f"{'...' if abs(v) > 10**12 else ''} is out of range (0 to 86400 seconds)")
        if not math.isfinite(v) or v < 0:
            what = "negative" if v < 0 else "not a finite number"
            raise ValueError(f"invalid duration {v} ({what}): {_DURATION_FORMS}")
        seconds = float(v)
    else:
        raise ValueError(f"{_DURATION_FORMS}, got {_toml_type(v)}")
    if seconds > _MAX_DURATION:
        raise ValueError(f"duration {v} is longer than the maximum of 1 day (86400s)")
    return seconds


Duration = Annotated[float, BeforeValidator(_parse_duration)]
"""Seconds, written as "250ms", "2s", "1.5s", "1m" or a plain non-negative number."""


def _check_ifname(name: str) -> str:
    # The kernel's dev_valid_name(): IFNAMSIZ is 16 bytes including the NUL.
    size = len(name.encode("utf-8"))
    if size == 0:
        raise ValueError("interface name is empty")
    if size > 15:
        raise ValueError(f"interface name {_q(name)} is {size} bytes long; Linux allows at most 15")
    if name in (".", ".."):
        raise ValueError(f"{_q(name)} is not a valid interface name")
    if any(c in "/:\0" or c.isspace() for c in name):
        raise ValueError(f"interface name {_q(name)} contains a character Linux forbids "
                         "('/', ':', whitespace or NUL)")
    return name


def _check_slave_name(name: str) -> str:
    _check_ifname(name)
    if TEQL_LIKE.fullmatch(name):
        raise ValueError(f"{_q(name)} is named like a teql device; a slave must be a real interface")
    return name


def _check_equalizer_name(name: str) -> str:
    if teql_number(name) is None or len(name) > 15:
        raise ValueError(f"equalizer name {_q(name)} is not a teql device name "
                         "(teql0, teql1, ...: the names sch_teql creates, at most 15 bytes)")
    return name


def _no_duplicates(names: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
    # parse_config's cross-check reports duplicates by index, even when other items are bad.
    if not (info.context or {}).get("cross_checked") and len(set(names)) < len(names):
        raise ValueError("a slave is listed more than once")
    return names


def _interface(v: object, kind: type[IPv4Interface] | type[IPv6Interface], example: str, other: str) -> object:
    """An address with prefix length of one IP version (`other` names the key
    for the other version)."""
    if v is None or isinstance(v, kind):
        return v
    if not isinstance(v, str):
        raise ValueError(f'expected an address with prefix such as "{example}", got {_toml_type(v)}')
    if "/" not in v:
        raise ValueError(f'{_q(v)} has no prefix length; write it like "{example}"')
    try:
        addr = ip_interface(v)
    except ValueError:
        raise ValueError(f'{_q(v)} is not an address with prefix such as "{example}"') from None
    if not isinstance(addr, kind):
        version = 4 if kind is IPv4Interface else 6
        raise ValueError(f"{_q(v)} is not an IPv{version} address; an IPv{10 - version} one goes in `{other}`")
    return addr


def _parse_address(v: object) -> object:
    return _interface(v, IPv4Interface, "10.0.0.0/31", "address6")


def _parse_address6(v: object) -> object:
    addr = _interface(v, IPv6Interface, "2001:db8::1/128", "address")
    if isinstance(addr, IPv6Interface) and (addr.ip.is_link_local or addr.ip.is_multicast or addr.ip.is_unspecified
                                            or addr.ip.is_loopback):
        raise ValueError(f"{_q(v)} must be a global or unique-local unicast address")
    return addr


def _not_local_table(v: int) -> int:
    if v == 255:
        raise ValueError("255 is the kernel's local table, which holds local and broadcast routes only")
    return v


def _parse_rp_filter(v: object) -> object:
    # TOML has no null, so "leave the sysctl alone" is spelled "unmanaged".
    if v == "unmanaged":
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v in (0, 1, 2):
        return v
    raise ValueError(f'rp_filter must be 0 (off), 1 (strict), 2 (loose) or "unmanaged", not {_q(v)}')


def _check_listen(v: str) -> str:
    if v == "":
        return v  # metrics disabled
    forms = 'expected "host:port", "[ipv6]:port", or "" to disable'
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{_q(v)}: {forms}")
    if host.startswith("["):
        try:
            IPv6Address(host[1:-1] if host.endswith("]") else "!")
        except ValueError:
            raise ValueError(f"{_q(host)} is not a bracketed IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{_q(v)}: an IPv6 address must be in brackets, like \"[::1]:9783\"")
    elif not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise ValueError(f"{_q(host)} is not a valid host name or IPv4 address")
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{_q(v)}: the port must be a number from 1 to 65535")
    return v


def _check_reconcile_interval(v: float) -> float:
    if 0 < v < 1.0:
        raise ValueError("must be 0 (off) or at least 1s")
    return v


def _check_stats_interval(v: float) -> float:
    if v < 0.1:
        raise ValueError("must be at least 100ms")
    return v


def _parse_ipv4(v: object) -> object:
    if isinstance(v, IPv4Address):
        return v
    if not isinstance(v, str):
        raise ValueError(f'expected an IPv4 address such as "192.0.2.1", got {_toml_type(v)}')
    try:
        return IPv4Address(v)
    except ValueError:
        raise ValueError(f"{_q(v)} is not an IPv4 address") from None


IPv4 = Annotated[IPv4Address, BeforeValidator(_parse_ipv4)]

_THIS_NETWORK = IPv4Network("0.0.0.0/8")
_LIMITED_BROADCAST = IPv4Address("255.255.255.255")


def _parse_target(v: object) -> IPv4Address | IPv6Address:
    if isinstance(v, (IPv4Address, IPv6Address)):
        return v
    if isinstance(v, str) and ":" in v:
        try:
            return IPv6Address(v)
        except ValueError:
            raise ValueError(f"{_q(v)} is not an IPv6 address") from None
    addr = _parse_ipv4(v)
    assert isinstance(addr, IPv4Address)
    return addr


def _check_target(addr: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    """A probe target must be a unicast address an echo can reach through the
    slave. Link-local and private addresses (a modem's, a PPP peer's, the
    TEST-NETs of the lab) are fine: the echo is bound to the slave's device.
    An IPv6 target is sent ICMPv6 echo (see probe.py for what it needs)."""
    why = _not_unicast(addr, unspecified=" (0.0.0.0/8 means this host, this network)"
                       if addr.version == 4 else "", loopback=": the echo would never leave this host")
    if why is not None:
        raise ValueError(f"{addr} {why}; a probe target must be a unicast address reachable through the slave")
    return addr


def _not_unicast(addr: IPv4Address | IPv6Address, unspecified: str = "", loopback: str = "") -> str | None:
    """Why `addr` is no unicast address another host could have, or None;
    the arguments add to the words for those two cases."""
    if addr.is_unspecified or addr in _THIS_NETWORK:
        return "is unspecified" + unspecified
    if addr.is_loopback:
        return "is a loopback address" + loopback
    if addr.is_multicast:
        return "is a multicast address"
    if addr == _LIMITED_BROADCAST:
        return "is the limited broadcast address"
    return None


# One validator, not a union of the two types: pydantic would also report
# the tuple as too short after a bad item.
ProbeTarget = Annotated[IPv4Address | IPv6Address, PlainValidator(lambda v: _check_target(_parse_target(v)))]


def _unique(targets: tuple[IPv4Address | IPv6Address, ...]) -> tuple[IPv4Address | IPv6Address, ...]:
    if len(set(targets)) != len(targets):
        raise ValueError("lists a target twice")
    return targets


class ProbeConfig(BaseModel):
    """ICMP echo probes through one slave ([slaves.<name>.probe]).

    A round sends one echo to every target; it is good when at least
    `min_targets` answer within `timeout` (and within `max_rtt`, if set).
    The defaults are conservative: about 5 s to declare a line dead, and a
    false alarm needs 5 lost rounds in a row.
    """

    model_config = _STRICT
    targets: Annotated[tuple[ProbeTarget, ...], Field(min_length=1, max_length=16), AfterValidator(_unique),
                       BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]
    interval: Annotated[Duration, Field(ge=0.05, le=60.0)] = 1.0
    timeout: Annotated[Duration, Field(ge=0.01, le=60.0)] = 1.0
    down_after: Annotated[int, Field(ge=1, le=1000)] = 5   # consecutive failed rounds: dead
    up_after: Annotated[int, Field(ge=1, le=1000)] = 5     # consecutive good rounds: healthy again
    min_targets: Annotated[int, Field(ge=1, le=16)] = 1
    max_rtt: Annotated[Duration, Field(gt=0)] | None = None  # slower replies count as lost
    source: IPv4 | None = None                            # source address of the probes

    @model_validator(mode="after")
    def _enough_targets(self) -> ProbeConfig:
        if self.min_targets > len(self.targets):
            raise ValueError(f"min_targets ({self.min_targets}) is more than the {len(self.targets)} target(s)")
        return self


class DampingConfig(BaseModel):
    """Flap damping in the spirit of RFC 2439 ([slaves.<name>.damping]).

    Each flap (the slave leaving the equalizer on a fault) adds `penalty`; the
    penalty halves every `half_life`. Past `suppress` the slave is held down
    until the penalty decays below `reuse`, never longer than `max_suppress`.
    With the defaults one or two failures never suppress; three within a
    minute or so do, for about a minute and a half.
    """

    model_config = _STRICT
    enabled: bool = True
    penalty: Annotated[float, Field(gt=0, le=1e6)] = 1000.0
    suppress: Annotated[float, Field(gt=0, le=1e7)] = 2500.0
    reuse: Annotated[float, Field(gt=0, le=1e7)] = 800.0
    half_life: Annotated[Duration, Field(gt=0)] = 60.0
    max_suppress: Annotated[Duration, Field(gt=0)] = 600.0

    @property
    def ceiling(self) -> float:
        """The highest penalty: one above it would hold the slave longer than
        max_suppress. (Past 2**1000 it would overflow a float; no flap rate
        gets near it.)"""
        return self.reuse * 2 ** min(self.max_suppress / self.half_life, 1000.0)

    @model_validator(mode="after")
    def _thresholds(self) -> DampingConfig:
        if self.reuse >= self.suppress:
            raise ValueError(f"reuse ({self.reuse:g}) must be below suppress ({self.suppress:g})")
        if self.ceiling < self.suppress:
            # Else damping is on and can never hold a slave down.
            raise ValueError(
                f"max_suppress ({self.max_suppress:g}s) and half_life ({self.half_life:g}s) cap the penalty at "
                f"{self.ceiling:.0f} (reuse x 2^(max_suppress / half_life)), below suppress ({self.suppress:g}): "
                "no slave would ever be held down; raise max_suppress or shorten half_life")
        return self


IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address
#: The kernel's metric for an IPv6 route added with none (IP6_RT_PRIO_USER).
IPV6_DEFAULT_METRIC = 1024


def _parse_destination(v: object) -> object:
    if isinstance(v, (IPv4Network, IPv6Network)):
        return v
    if not isinstance(v, str):
        raise ValueError(f'expected a prefix such as "198.51.100.0/24" or "default", got {_toml_type(v)}')
    if v == "default":
        return IPv4Network("0.0.0.0/0")
    try:
        return ip_network(v)
    except ValueError as e:
        if "host bits set" in str(e):
            net = ip_network(v, strict=False)
            raise ValueError(f"{_q(v)} has host bits set; the prefix is {_q(str(net))}") from None
        raise ValueError(f'{_q(v)} is not a prefix such as "198.51.100.0/24", "2001:db8::/32" or "default"'
                         ) from None


def _parse_gateway(v: object) -> object:
    if isinstance(v, (IPv4Address, IPv6Address)):
        return v
    if not isinstance(v, str):
        raise ValueError(f'expected a gateway address such as "192.0.2.1", got {_toml_type(v)}')
    try:
        addr = ip_address(v)
    except ValueError:
        raise ValueError(f"{_q(v)} is not an IP address") from None
    why = _not_unicast(addr)
    if why is not None:
        raise ValueError(f"{addr} {why}; a gateway must be a unicast address on the line")
    return addr


class LineRouteConfig(BaseModel):
    """A route through one slave ([[slaves.<name>.routes]]), in the kernel
    while the slave is attached to its equalizer and withdrawn with its detach."""

    model_config = _STRICT
    to: Annotated[IPNetwork, BeforeValidator(_parse_destination)]
    via: Annotated[IPAddress | None, BeforeValidator(_parse_gateway)] = None
    table: Annotated[int, Field(ge=1, le=4294967295), AfterValidator(_not_local_table)] = 254  # 254: main
    metric: Annotated[int, Field(ge=0, le=4294967295)] = 0

    @model_validator(mode="after")
    def _same_family(self) -> LineRouteConfig:
        if self.via is not None and self.via.version != self.to.version:
            raise ValueError(f"via {self.via} is IPv{self.via.version} but to {self.to} is IPv{self.to.version}")
        return self

    @property
    def kernel_metric(self) -> int:
        """The metric as the kernel stores it: an IPv6 route's 0 becomes 1024."""
        return IPV6_DEFAULT_METRIC if self.metric == 0 and self.to.version == 6 else self.metric

    @property
    def fib_key(self) -> tuple[int, str, int]:
        """What makes two routes the same to the kernel (one of each per table)."""
        return (self.table, str(self.to), self.kernel_metric)


class LineRuleConfig(BaseModel):
    """A policy rule for one slave ([[slaves.<name>.rules]]): traffic from
    `from` looks up `table`. In the kernel while the slave is attached, like
    its routes."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=False)
    source: Annotated[IPNetwork, BeforeValidator(_parse_destination), Field(alias="from")]
    table: Annotated[int, Field(ge=1, le=4294967295), AfterValidator(_not_local_table)]
    # pyroute2's and the lab's default; iproute2 would pick one below the lowest rule.
    priority: Annotated[int, Field(ge=1, le=32765)] = 32000


def _unique_rules(rules: tuple[LineRuleConfig, ...]) -> tuple[LineRuleConfig, ...]:
    seen: dict[tuple[str, int, int], int] = {}
    for i, r in enumerate(rules):
        j = seen.setdefault((str(r.source), r.table, r.priority), i)
        if j != i:
            raise ValueError(f"rules[{i}] duplicates rules[{j}]")
    return rules


def _unique_routes(routes: tuple[LineRouteConfig, ...], info: ValidationInfo) -> tuple[LineRouteConfig, ...]:
    # parse_config's cross-check (_route_clashes) reports these with paths, even beside other errors.
    if (info.context or {}).get("cross_checked"):
        return routes
    seen: dict[tuple[int, str, int], int] = {}
    for i, r in enumerate(routes):
        j = seen.setdefault(r.fib_key, i)
        if j != i:
            raise ValueError(f"routes[{i}] (to {r.to}, table {r.table}, metric {r.metric}) duplicates routes[{j}]: "
                             "the kernel holds one route per destination, table and metric")
    return routes


def _as_tuple(v: object) -> object:
    # TOML arrays arrive as lists, which strict mode refuses for a tuple.
    return tuple(v) if isinstance(v, list) else v


class SlaveConfig(BaseModel):
    """Per-slave settings ([slaves.<name>]); both delays debounce carrier flaps."""

    model_config = _STRICT
    probe: ProbeConfig | None = None
    damping: DampingConfig = DampingConfig()
    up_delay: Duration = 0.0  # carrier must stay up this long before re-slaving
    down_delay: Duration = 0.0  # carrier must stay down this long before detaching
    routes: Annotated[tuple[LineRouteConfig, ...], BeforeValidator(_as_tuple), Field(max_length=256),
                      AfterValidator(_unique_routes)] = ()
    rules: Annotated[tuple[LineRuleConfig, ...], BeforeValidator(_as_tuple), Field(max_length=64),
                     AfterValidator(_unique_rules)] = ()


AllDown = Literal["withdraw", "unreachable", "blackhole"]


class EqualizerConfig(BaseModel):
    """One teql device ([equalizers.teqlN]) and how to keep it usable."""

    model_config = _STRICT
    slaves: Annotated[tuple[Annotated[str, AfterValidator(_check_slave_name)], ...],
                      # TOML arrays arrive as lists, which strict mode refuses for a tuple.
                      BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v),
                      Field(min_length=1),
                      AfterValidator(_no_duplicates)]
    address: Annotated[IPv4Interface | None, BeforeValidator(_parse_address)] = None
    # The equalizer's IPv6 address; with it, the default route ::/0 dev teqlN
    # is kept under the same rules as IPv4's (docs/caveats.md, IPv6).
    address6: Annotated[IPv6Interface | None, BeforeValidator(_parse_address6)] = None
    default_route: bool = True
    route_metric: Annotated[int, Field(ge=0, le=4294967295)] = 0
    route_table: Annotated[int, Field(ge=1, le=4294967295), AfterValidator(_not_local_table)] = 254  # 254: main
    rp_filter: Annotated[int | None, BeforeValidator(_parse_rp_filter)] = 0  # None: unmanaged
    # The default route when no slave is attached: none (a backup route takes
    # over), or an unreachable or blackhole route in its place.
    all_down: AllDown = "withdraw"
    # teql0's MTU follows its smallest slave; `mtu` caps it, `min_mtu` refuses
    # slaves below it, and `mtu_hold` is how long a small slave that left
    # keeps teql0's MTU down (a PPP redial must not make it flap).
    mtu: Annotated[int, Field(ge=_MIN_MTU, le=_MAX_MTU)] | None = None
    min_mtu: Annotated[int, Field(ge=_MIN_MTU, le=_MAX_MTU)] | None = None
    mtu_hold: Duration = 60.0
    # A slave whose link flags differ from those of the running teql device
    # (PPP beside Ethernet): "reopen" sets the device down and up around the
    # attach, so the kernel derives flags common to all; "refuse" leaves it out.
    mixed: Literal["reopen", "refuse"] = "reopen"

    @model_validator(mode="after")
    def _mtu_floor(self) -> EqualizerConfig:
        if self.min_mtu is not None and self.mtu is not None and self.min_mtu > self.mtu:
            raise ValueError(f"min_mtu ({self.min_mtu}) is above mtu ({self.mtu}): no slave could join")
        return self


class DaemonConfig(BaseModel):
    """Daemon-wide settings ([daemon])."""

    model_config = _STRICT
    metrics_listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:9783"
    log_level: LogLevel = "info"
    # Where `wanbalanced status` asks the running daemon; "" disables it.
    control_socket: Annotated[str, AfterValidator(check_socket_path)] = DEFAULT_CONTROL_SOCKET
    # How often link counters are refreshed for the metrics (one link dump).
    stats_interval: Annotated[Duration, AfterValidator(_check_stats_interval)] = 5.0
    # A full dump and reconcile now and then, as a safety net; 0 disables it.
    reconcile_interval: Annotated[Duration, AfterValidator(_check_reconcile_interval)] = 300.0
    # Receive buffer of the netlink event socket: room for event storms.
    netlink_rcvbuf: Annotated[int, Field(ge=4096, le=1 << 30)] = DEFAULT_NETLINK_RCVBUF


class Config(BaseModel):
    """The whole file. Build it with parse_config() or load_config()."""

    model_config = _STRICT
    daemon: DaemonConfig = DaemonConfig()
    equalizers: Annotated[dict[Annotated[str, AfterValidator(_check_equalizer_name)],
                               EqualizerConfig], Field(min_length=1)]
    slaves: dict[str, SlaveConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Config:
        # parse_config already ran these checks on the raw document (with paths).
        if not (info.context or {}).get("cross_checked"):
            found = _cross_check(self.model_dump())
            if found:
                raise ValueError("; ".join(f"{_format_loc(loc)}: {msg}" for loc, msg in found))
        return self

    def slave(self, name: str) -> SlaveConfig:
        """Settings of slave `name`, or the defaults if it has no [slaves.<name>] table."""
        return self.slaves.get(name, SlaveConfig())

    def equalizer_of(self, slave: str) -> str | None:
        """Name of the equalizer that lists `slave`, or None."""
        return next((eq for eq, cfg in self.equalizers.items() if slave in cfg.slaves), None)


def _cross_check(raw: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Checks spanning several tables. Runs on the raw document, so it must
    tolerate any shape, and its findings join pydantic's instead of waiting for them."""
    found: list[tuple[Loc, str]] = []
    equalizers = raw.get("equalizers")
    owner: dict[str, str] = {}
    addresses: dict[IPv4Address, str] = {}
    for eq, table in (equalizers.items() if isinstance(equalizers, dict) else ()):
        if not isinstance(table, dict):
            continue
        slaves = table.get("slaves")
        seen: dict[str, int] = {}
        for i, name in enumerate(slaves if isinstance(slaves, (list, tuple)) else ()):
            if not isinstance(name, str):
                continue
            loc = ("equalizers", eq, "slaves", i)
            if name in seen:
                found.append((loc, f"{_q(name)} is already listed at slaves[{seen[name]}]"))
            elif owner.setdefault(name, eq) != eq:
                found.append((loc, f"{_q(name)} is already a slave of {_key(owner[name])}; "
                                   "a slave can belong to one equalizer only"))
            seen.setdefault(name, i)
        try:
            addr = _parse_address(table.get("address"))
        except ValueError:
            continue  # reported by pydantic
        if isinstance(addr, IPv4Interface):
            if addresses.setdefault(addr.ip, eq) != eq:
                found.append((("equalizers", eq, "address"),
                              f"{addr.ip} is also the address of {_key(addresses[addr.ip])}"))
    slave_tables = raw.get("slaves")
    for name in (slave_tables if isinstance(slave_tables, dict) else ()):
        if name not in owner:
            found.append((("slaves", name), f"{_q(name)} is not a slave of any equalizer"))
    found += _route_clashes(equalizers if isinstance(equalizers, dict) else {},
                            slave_tables if isinstance(slave_tables, dict) else {}, owner)
    return found


def _raw_fib_key(route: object, v6_default: int = 0) -> tuple[int, str, int] | None:
    """A raw [[slaves.X.routes]] item's (table, destination, metric), or None
    if it is malformed (pydantic reports that)."""
    if not isinstance(route, dict):
        return None
    table, metric = route.get("table", 254), route.get("metric", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (table, metric)):
        return None
    try:
        dst = _parse_destination(route.get("to"))
    except ValueError:
        return None
    assert isinstance(dst, (IPv4Network, IPv6Network))
    if dst.version == 6 and metric == 0:
        metric = IPV6_DEFAULT_METRIC
    return (table, str(dst), metric)


def _route_clashes(equalizers: dict[str, Any], slaves: dict[str, Any], owner: dict[str, str]) -> list[tuple[Loc, str]]:
    """Per-line routes that the kernel would hold as one: the same destination,
    table and metric on two slaves, or as an equalizer's default route."""
    found: list[tuple[Loc, str]] = []
    taken: dict[tuple[int, str, int], str] = {}
    for eq, table in equalizers.items():
        if isinstance(table, dict) and table.get("default_route", True) is True:
            key = _raw_fib_key({"to": "default", "table": table.get("route_table", 254),
                                "metric": table.get("route_metric", 0)})
            if key is not None:
                taken[key] = f"the default route of {_key(eq)}"
    for name, slave in slaves.items():
        routes = slave.get("routes") if isinstance(slave, dict) else None
        for i, route in enumerate(routes if isinstance(routes, list) else ()):
            key = _raw_fib_key(route)
            if key is None:
                continue
            other = taken.setdefault(key, f"slaves.{_key(name)}.routes[{i}]")
            if other != f"slaves.{_key(name)}.routes[{i}]":
                found.append((("slaves", name, "routes", i),
                              f"same destination, table and metric as {other}: the kernel holds one route "
                              "per destination, table and metric; give one of them another metric"))
    return found


@dataclass(frozen=True)
class Problem:
    """One problem in a configuration: its key path ("" for the whole file) and what is wrong."""

    path: str
    message: str


class ConfigError(Exception):
    """A configuration that cannot be used; str() is the report for the operator."""

    def __init__(self, source: str, problems: Iterable[Problem]) -> None:
        self.source = source
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(source, self.problems)

    def __str__(self) -> str:
        n = len(self.problems)
        lines = [f"{self.source}: {n} problem{'' if n == 1 else 's'}"]
        lines += [f"  {p.path}: {p.message}" if p.path else f"  {p.message}" for p in self.problems]
        return "\n".join(lines)


def _real_loc(raw: Any, loc: Loc) -> Loc:
    """pydantic's loc without its "[key]" marker (an invalid dict key: the key
    itself is the path), unless the document really has a key named so."""
    out: list[str | int] = []
    for part in loc:
        if part == "[key]" and not (isinstance(raw, dict) and part in raw):
            continue
        out.append(part)
        raw = raw.get(part) if isinstance(raw, dict) else (
            raw[part] if isinstance(raw, list) and isinstance(part, int) and part < len(raw) else None)
    return tuple(out)


def _key(name: str) -> str:
    """A key as a path shows it: bare when TOML allows it, else quoted."""
    return name if _BARE_KEY_RE.fullmatch(name) else _q(name)


def _format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _key(part)
    return out


def _toml_type(v: object) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"),
                       (str, "a string"), (list, "an array"), (dict, "a table")):
        if isinstance(v, kind):
            return name
    return "a date/time"


_EXPECTED = {"bool_type": "true or false", "int_type": "an integer", "float_type": "a number",
             "string_type": "a string", "dict_type": "a table", "model_type": "a table",
             "tuple_type": "an array", "list_type": "an array"}
_FIXED = {"missing": "required key is missing", "extra_forbidden": "unknown key",
          "too_short": "must not be empty"}


def _message(err: Any) -> str:
    """Plain English for one pydantic error: no URLs, no "Value error," prefix."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "value_error":
        return str(ctx["error"])
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_toml_type(err['input'])}"
    if kind in _FIXED:
        return _FIXED[kind]
    if kind in ("greater_than_equal", "less_than_equal"):
        least = kind == "greater_than_equal"
        return f"must be at {'least' if least else 'most'} {ctx['ge' if least else 'le']}, not {err['input']}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected'].replace(chr(39), chr(34))}, not {_q(err['input'])}"
    return str(err["msg"])


def _position(raw: Any, loc: Loc) -> list[int]:
    """Where `loc` sits in the document, so problems are listed in file order."""
    key = []
    for part in loc:
        if isinstance(raw, dict) and part in raw:
            key.append(list(raw).index(part))
            raw = raw[part]
        elif isinstance(raw, list) and isinstance(part, int) and part < len(raw):
            key.append(part)
            raw = raw[part]
        else:
            key.append(1 << 30)  # missing keys go after what is there
            raw = None
    return key


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate TOML text; raises ConfigError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [Problem("", f"TOML syntax error: {e}")]) from None
    except RecursionError:
        raise ConfigError(source, [Problem("", "TOML syntax error: nested too deeply")]) from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise ConfigError(source, [Problem("", f"unreadable value: {e}")]) from None
    found = _cross_check(raw)
    try:
        config = Config.model_validate(raw, context={"cross_checked": True})
        if not found:
            return config
    except ValidationError as e:
        found += [(_real_loc(raw, tuple(err["loc"])), _message(err)) for err in e.errors()]
    found.sort(key=lambda f: _position(raw, f[0]))
    problems = dict.fromkeys(Problem(_format_loc(loc), msg) for loc, msg in found)
    raise ConfigError(source, problems)


def unsafe_reason(st: os.stat_result) -> str | None:
    """Why a file with this status must not configure a daemon that rewrites
    routes as root: only root may be able to write it."""
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        who = " and ".join(w for bit, w in ((0o020, "its group"), (0o002, "everyone")) if st.st_mode & bit)
        return f"writable by {who} (mode {st.st_mode & 0o7777:04o}); chmod go-w it"
    return None


#: Largest configuration file read; a real one is a few KiB.
MAX_CONFIG_SIZE = 1 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def unsafe_directory(path: str) -> str | None:
    """Why the directories holding a configuration file must not be trusted:
    whoever may write one may replace the file (or the symlink) in it. Both
    the directory of the path as given and that of its target are checked."""
    dirs = dict.fromkeys([os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.realpath(path))])
    for d in dirs:
        try:
            why = unsafe_reason(os.stat(d))
        except OSError as e:
            return f"its directory {d} cannot be checked: {e.strerror or e}"
        if why is not None:
            return f"in the directory {d}, which is {why.replace('chmod go-w it', 'chmod go-w that directory')}"
    return None


def load_config(path: str | os.PathLike[str], secure: bool = False) -> Config:
    """Read, parse and validate a configuration file; raises only ConfigError.

    Only a regular file of at most MAX_CONFIG_SIZE bytes is read; a symlink
    is followed and its target checked. It is opened without blocking, so a
    FIFO put in its place cannot stall the daemon. With `secure`, a file that
    anyone but root may write, or that sits in a directory anyone but root
    may write, is refused (the daemon's `--allow-insecure-config` turns that
    off)."""
    source = os.fspath(path)

    def fail(message: str) -> ConfigError:
        return ConfigError(source, [Problem("", message)])

    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
        # writer. It changes nothing for a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise fail("file not found") from None
    except OSError as e:
        raise fail(f"cannot read the file: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)  # the file opened, not what the path names by now
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"cannot read the file: it is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > MAX_CONFIG_SIZE:
            raise fail(f"the file is {st.st_size} bytes long; at most {MAX_CONFIG_SIZE} "
                       f"({MAX_CONFIG_SIZE >> 20} MiB) are read")
        if secure:
            why = unsafe_reason(st)
            if why is None:
                why = unsafe_directory(source)
            if why is not None:
                raise fail(f"refused: the file is {why} (or run with --allow-insecure-config)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG_SIZE + 1)  # it may have grown since fstat
    except OSError as e:
        raise fail(f"cannot read the file: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_SIZE:
        raise fail(f"the file is longer than {MAX_CONFIG_SIZE} bytes ({MAX_CONFIG_SIZE >> 20} MiB), "
                   "the most that is read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(f"not UTF-8 text (bad byte at offset {e.start})") from None
    return parse_config(text, source)
