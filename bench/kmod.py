"""Loading the guest kernel's extra modules (guest side).

``lab/init.sh`` loads what every lab job needs (sch_teql, veth, sch_netem,
vrf). The benchmarks also need the other contenders' drivers (bonding, team
and its round-robin mode) and, to drop a line's traffic in both directions on
router B, ifb with the ingress qdisc, matchall and mirred. They are loaded like
init.sh does it: ``insmod`` by path, dependencies first, from ``modules.dep``.
"""

from __future__ import annotations

from lab.topo import load_module

#: name -> (path under the modules directory, parameters)
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    # max_bonds=0 and numifbs=0: no bond0 or ifb0 made behind our back.
    "bonding": ("kernel/drivers/net/bonding/bonding.ko", ("max_bonds=0",)),
    "team": ("kernel/drivers/net/team/team.ko", ()),
    "team_mode_roundrobin": ("kernel/drivers/net/team/team_mode_roundrobin.ko", ()),
    "ifb": ("kernel/drivers/net/ifb.ko", ("numifbs=0",)),
    "sch_ingress": ("kernel/net/sched/sch_ingress.ko", ()),
    "cls_matchall": ("kernel/net/sched/cls_matchall.ko", ()),
    "act_mirred": ("kernel/net/sched/act_mirred.ko", ()),
}


def load(name: str) -> str | None:
    """Load module ``name`` and its dependencies; None, or why it failed."""
    rel, params = MODULES[name]
    try:
        load_module(rel, *params)
    except OSError as e:
        return str(e)
    return None


def load_all() -> dict[str, str | None]:
    """Load every module in MODULES; name -> None or the reason it failed."""
    return {name: load(name) for name in MODULES}
