"""What each command imports: the daemon's start-up cost is mostly imports.

Each check runs a fresh interpreter, since this test process has long
imported everything."""

from __future__ import annotations

import json
import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_the_netlink_edge_loads_only_pyroute2s_rtnetlink_part() -> None:
    mods = _modules_after("import wanbalanced.netlink")
    assert "pyroute2.iproute.linux" in mods
    # pyroute2's package __init__ would load all of these.
    for heavy in ("pyroute2.ndb.main", "pyroute2.ipdb", "pyroute2.conntrack", "pyroute2.ipset", "sqlite3"):
        assert heavy not in mods


def test_the_whole_pyroute2_is_still_there_for_who_asks() -> None:
    mods = _modules_after("import wanbalanced.netlink\nfrom pyroute2 import IPRoute, NDB\n"
                          "import pyroute2\nassert pyroute2.IPRoute is IPRoute and pyroute2.__version__")
    assert "pyroute2.ndb.main" in mods


def test_check_config_and_status_need_no_event_loop_nor_core() -> None:
    # What `wanbalanced check-config` and `wanbalanced status` import.
    mods = _modules_after("import wanbalanced.cli, wanbalanced.status")
    for heavy in ("asyncio", "wanbalanced.core", "wanbalanced.netlink", "pyroute2", "prometheus_client"):
        assert heavy not in mods


def test_status_loads_no_configuration_models() -> None:
    # `status` reads only daemon.control_socket (defaults.control_socket);
    # `check-config` is the command that loads the models.
    mods = _modules_after("from wanbalanced.cli import main\n"
                          "assert main(['status', '--socket', '/nonexistent/control.sock']) == 3")
    assert "pydantic" not in mods and "wanbalanced.config" not in mods
    mods = _modules_after("from wanbalanced.cli import main\nassert main(['check-config', '-c', '/nonexistent']) == 1")
    assert "pydantic" in mods


def test_the_daemon_loads_prometheus_client_only_to_render() -> None:
    # The loop records into its own histograms; the library is loaded when
    # the endpoint opens or the registry is first asked for, not before.
    code = ("import sys; from wanbalanced.daemon import Daemon; from wanbalanced.metrics import Metrics\n"
            "m = Metrics(lambda: None); m.failover.observe(('detach',), 0.001)\n"
            "before = 'prometheus_client' in sys.modules\n"
            "m.registry\n"
            "print(before, 'prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
