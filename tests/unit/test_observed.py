"""The observed-state cache: lookups and the name index."""

from __future__ import annotations

from kernelstate import master, slave

from wanbalanced.defaults import is_teql_name, teql_number
from wanbalanced.observed import Snapshot


def test_links_are_found_by_their_current_name() -> None:
    snap = Snapshot()
    snap.put_link(slave(10, "wan0"))
    snap.put_link(slave(11, "wan1"))
    snap.put_link(slave(10, "old0"))  # ip link set wan0 name old0
    assert snap.link("wan0") is None and snap.link("old0") is snap.links[10]
    snap.drop_link(11)
    snap.put_link(slave(42, "wan1"))  # recreated under the same name
    assert snap.link("wan1") is snap.links[42]
    snap.drop_link(42)
    assert snap.link("wan1") is None


def test_a_name_briefly_on_two_devices_stays_found() -> None:
    # A rename and the arrival of another device under the old name can be
    # seen in either order; whichever device still has the name is found.
    snap = Snapshot()
    snap.put_link(slave(10, "wan0"))
    snap.put_link(slave(11, "wan0"))
    snap.put_link(slave(11, "wan9"))
    assert snap.link("wan0") is snap.links[10]
    snap.put_link(slave(12, "wan0"))
    snap.drop_link(12)
    assert snap.link("wan0") is snap.links[10]


def test_teql_names_follow_sch_teql() -> None:
    assert [teql_number(n) for n in ("teql0", "teql12", "teql", "teqlx", "eth0")] == [0, 12, None, None, None]
    assert is_teql_name("teql3") and not is_teql_name("wan0")
    snap = Snapshot()
    for index, name in ((2, "teql10"), (3, "teql2"), (4, "wan0")):
        snap.put_link(master(index, name))
    assert snap.teql_devices() == ["teql2", "teql10"]
