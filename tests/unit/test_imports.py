"""What each command imports: the daemon's start-up cost is mostly imports.

Each check runs a fresh interpreter, since this test process has long
imported everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


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


def _plugin_on_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An installed pydantic plugin (a distribution with a `pydantic` entry
    point) whose import leaves a mark: the environment that puts it on the path."""
    site = tmp_path / "site"
    dist = site / "markplugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: markplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pydantic]\nmark = markplugin:plugin\n")
    mark = tmp_path / "imported"
    (site / "markplugin.py").write_text(
        f"open({str(mark)!r}, 'w').close()\n"
        "class Plugin:\n    def new_schema_validator(self, *args, **kwargs):\n        return None, None, None\n"
        "plugin = Plugin()\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *sys.path]))
    env.pop("PYDANTIC_DISABLE_PLUGINS", None)
    return env, mark


def test_no_pydantic_plugin_runs_in_the_daemon_nor_is_looked_for(tmp_path: Path) -> None:
    env, mark = _plugin_on_path(tmp_path)
    # Beside plain pydantic, the plugin is found and imported: the test can fail.
    subprocess.run([sys.executable, "-c", "from pydantic import BaseModel\nclass M(BaseModel):\n    x: int\n"],
                   env=env, check=True)
    assert mark.exists()
    mark.unlink()
    code = ("import sys\nfrom wanbalanced.config import parse_config\n"
            "cfg = parse_config('[equalizers.teql0]\\nslaves = [\"wan0\"]\\n')\n"
            "assert list(cfg.equalizers['teql0'].slaves) == ['wan0']\n"
            "print('importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]  # not even the import that looks for plugins
    assert not mark.exists()


def test_the_rest_of_pydantics_plugin_loader_is_its_own() -> None:
    code = ("import wanbalanced.config\nimport pydantic.plugin._loader as loader\n"
            "print(list(loader.get_plugins()), loader.PYDANTIC_ENTRY_POINT_GROUP, list(loader.get_plugins()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "pydantic", "[]"]
