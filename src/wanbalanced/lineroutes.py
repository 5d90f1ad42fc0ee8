"""The planner of the routes through single lines ([[slaves.<name>.routes]]).

A slave's routes are in the kernel while it is attached to its equalizer and
withdrawn in the same plan as its detach, whatever the cause (carrier lost,
found dead by probes, held down, renamed or removed from the configuration).
What is wanbalanced's is told by the protocol number alone
(`observed.RTPROT_WANBALANCED`): a route of ours that no planner wants is a
stray and is withdrawn; a route of anyone else is never touched, even to the
same destination (ours is added without replace, so the kernel refuses,
EEXIST, rather than overwrite another's of the same destination, table and
metric). On restart the routes found are adopted as they are.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from .actions import Action, AddLineRoute, AddLineRule, DeleteDefaultRoute, DeleteLineRoute, DeleteLineRule
from .config import Config
from .defaults import is_teql_name
from .observed import RTN_UNICAST, Route, Rule, Snapshot


def identity(route: Route) -> tuple[object, ...]:
    """What makes two routes of ours the same one (the scope is the kernel's
    business: IPv6 reports every route as universe)."""
    return (route.table, route.dst, route.priority, route.oif, route.gateway, route.type)


def _wanted(config: Config, name: str, index: int, reason: str) -> list[AddLineRoute]:
    return [AddLineRoute(reason, name, index, r.to, str(r.via) if r.via is not None else None, r.kernel_metric,
                         r.table) for r in config.slave(name).routes]


def installed(config: Config, name: str, snap: Snapshot) -> int:
    """How many of a slave's configured routes are in the kernel now."""
    link = snap.link(name)
    if link is None:
        return 0
    ours = {identity(r) for r in snap.our_routes()}
    return sum(identity(a.as_route()) in ours for a in _wanted(config, name, link.index, ""))


def plan_line_routes(config: Config, eq_name: str, attached: Collection[str], snap: Snapshot,
                     actions: list[Action], wants: dict[tuple[str, str], object], kept: set[Route]) -> None:
    """Add the missing routes of the slaves of `eq_name` that are (about to be)
    attached, note the present ones as kept; record what is wanted, for drift."""
    ours = {identity(r): r for r in snap.our_routes()}
    for name in config.equalizers[eq_name].slaves:
        link = snap.link(name)
        if not config.slave(name).routes or link is None:
            continue
        on = name in attached
        adds = _wanted(config, name, link.index, f"{name} attached")
        wants[("line_route", name)] = (link.index, on, tuple(identity(a.as_route()) for a in adds))
        if not on:
            continue  # its routes, if any, are strays now
        for add in adds:
            present = ours.get(identity(add.as_route()))
            if present is not None:
                kept.add(present)
            else:
                actions.append(add)
                kept.add(add.as_route())


def plan_stray_routes(snap: Snapshot, kept: Iterable[Route], actions: list[Action]) -> None:
    """Withdraw every route with wanbalanced's protocol that no planner kept."""
    keep = {identity(r) for r in kept}
    live = {r.oif for r in kept}  # devices some of whose routes are wanted: attached
    for route in sorted(snap.our_routes(), key=lambda r: (r.table, str(r.dst), r.priority)):
        link = snap.links.get(route.oif) if route.oif is not None else None
        if identity(route) in keep or (link is not None and is_teql_name(link.name)):
            continue  # an equalizer's route is its default-route planner's (and reconfigure's)
        if route.type != RTN_UNICAST:
            # An all_down stand-in the settings no longer want (it has no device).
            actions.append(DeleteDefaultRoute("no longer wanted", "-", 0, route.priority, route.table, route.type,
                                              route.dst))
        elif link is not None:
            why = "not in the configuration" if route.oif in live else f"{link.name} is not attached"
            actions.append(DeleteLineRoute(why, link.name, link.index, route.dst,
                                           route.gateway, route.priority, route.table, scope=route.scope))


def plan_line_rules(config: Config, eq_name: str, attached: Collection[str], snap: Snapshot,
                    actions: list[Action], wants: dict[tuple[str, str], object], kept: set[Rule]) -> None:
    """The policy rules of [[slaves.<name>.rules]]: like the slave's routes,
    in the kernel while it is attached."""
    for name in config.equalizers[eq_name].slaves:
        link = snap.link(name)
        rules = [Rule(r.source, r.table, r.priority) for r in config.slave(name).rules]
        if not rules or link is None:
            continue
        on = name in attached
        wants[("line_rule", name)] = (on, tuple(rules))
        if not on:
            continue
        for rule in rules:
            kept.add(rule)
            if rule not in snap.rules:
                actions.append(AddLineRule(f"{name} attached", name, link.index, rule))


def plan_stray_rules(config: Config, snap: Snapshot, kept: Collection[Rule], actions: list[Action]) -> None:
    """Withdraw every rule with wanbalanced's protocol that no slave wants now,
    named after the slave that configures it (if any still does)."""
    owner = {Rule(r.source, r.table, r.priority): name for name, s in config.slaves.items() for r in s.rules}
    for rule in sorted(snap.rules - set(kept), key=lambda r: (r.priority, str(r.src), r.table)):
        name = owner.get(rule)
        link = snap.link(name) if name is not None else None
        why = f"{name} is not attached" if name is not None else "not in the configuration"
        actions.append(DeleteLineRule(why, name or "-", link.index if link is not None else 0, rule))
