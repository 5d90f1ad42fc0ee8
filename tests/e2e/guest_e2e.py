"""The end-to-end test of the systemd unit, run INSIDE the booted Debian guest.

``test_systemd.py`` (on the host) boots a Debian 12 root with systemd in
User-Mode Linux (``lab/systemd``) and has its driver unit run this script with
the guest's own Python (``python3``, standard library only, plus
``lab/topo.py``).  The host's checkout is mounted read-only at
``/mnt/wanbalanced``, a wheelhouse at ``/mnt/wheelhouse``; the guest has no
network.  As an operator would, the script:

1. copies the checkout to ``/usr/local/src/wanbalanced`` (the router's clone)
   and runs the README's "Install into a virtual environment" commands there, exactly as
   written, in their offline variant (``pip install --no-index
   --find-links``);
2. builds the lab topology (``lab.topo.Lab``: router B in a netns, the lines
   wan0 and wan1 as veth pairs) and starts Debian's Prometheus, scraping the
   daemon every second;
3. runs the README's ``check-config`` and ``systemctl enable --now
   wanbalanced``, then checks the unit and the daemon under it: readiness,
   status, attached slaves, journald fields on a carrier loss, the control
   socket, metrics (promtool, Prometheus), reload (good and bad files), the
   watchdog, a clean stop, ``systemd-analyze verify`` and ``security``.

Each check of ``checks.CHECKS`` gets a result in ``$WB_RESULTS/checks.json``
(written after every check, so a crash keeps what was done): ``pass``,
``fail`` with the reason, or ``blocked`` when a check it needs failed.  The
host turns them into one test each.  The script exits 0 only if all passed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
sys.path[:0] = [str(CHECKOUT), str(HERE)]

from checks import CHECKS  # noqa: E402
from readme import install_doc  # noqa: E402

from lab.topo import Lab, default_route, root_qdisc, rp_filter, wait_until  # noqa: E402

RESULTS = Path(os.environ.get("WB_RESULTS", "/mnt/wb-results"))
WHEELHOUSE = os.environ.get("WB_WHEELHOUSE", "/mnt/wheelhouse")
SRC = Path("/usr/local/src/wanbalanced")  # the router's checkout
CONFIG = Path("/etc/wanbalanced/config.toml")
UNIT = "wanbalanced.service"
METRICS_URL = "http://127.0.0.1:9783/metrics"
PROMETHEUS = "http://127.0.0.1:9090"
PROMETHEUS_YML = """\
# Written by tests/e2e/guest_e2e.py: scrape wanbalanced every second.
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: wanbalanced
    static_configs:
      - targets: ['127.0.0.1:9783']
"""
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".lab", ".mypy_cache", ".pytest_cache", "__pycache__", "build", "*.egg-info"
)

JSON = dict[str, Any]


class CheckFailed(Exception):
    """A check found something wrong (the message says what)."""


# --------------------------------------------------------------------------
# helpers


def log(msg: str) -> None:
    print(msg, flush=True)


def sh(
    cmd: str | list[str],
    *,
    check: bool = True,
    timeout: float = 60.0,
    cwd: Path | None = None,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command (a string goes to ``sh -c``), echo it and its output."""
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    if not quiet:
        log("$ " + (cmd if isinstance(cmd, str) else " ".join(cmd)))
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False,
        stdin=subprocess.DEVNULL,
    )
    out = (proc.stdout + proc.stderr).rstrip()
    if out and not quiet:
        log(out)
    if check and proc.returncode != 0:
        raise CheckFailed(f"`{argv[-1] if isinstance(cmd, str) else ' '.join(argv)}`"
                          f" exited {proc.returncode}: {out[-1500:]}")
    return proc


def show(*props: str, unit: str = UNIT) -> dict[str, str]:
    """``systemctl show UNIT -p PROP...`` as a dict."""
    out = sh(["systemctl", "show", unit, *[f"--property={p}" for p in props]], quiet=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(since: float = 0.0, *matches: str) -> list[JSON]:
    """The unit's journal entries of this boot received after the guest's
    CLOCK_MONOTONIC time ``since`` (journald stamps entries with it)."""
    out = sh(["journalctl", "-b", "-u", UNIT, "-o", "json", "--no-pager", *matches],
             quiet=True, check=False).stdout
    entries = []
    for line in out.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if int(e.get("__MONOTONIC_TIMESTAMP", "0")) >= since * 1e6:
            entries.append(e)
    return entries


def field(entry: JSON, name: str) -> str:
    value = entry.get(name)
    if isinstance(value, list):  # a field sent more than once
        value = value[-1]
    return value if isinstance(value, str) else ""


def brief(entries: list[JSON], n: int = 12) -> str:
    keys = ("PRIORITY", "EQUALIZER", "SLAVE", "EVENT", "REASON")
    rows = [
        " ".join(f"{k}={field(e, k)}" for k in keys if field(e, k)) + " | " + field(e, "MESSAGE")
        for e in entries[-n:]
    ]
    return "\n  ".join(["(no entries)"] if not rows else rows)


def wait_entry(
    since: float, what: str, pred: Callable[[JSON], bool], timeout: float = 10.0
) -> JSON:
    deadline = time.monotonic() + timeout
    while True:
        entries = journal(since)
        for e in entries:
            if pred(e):
                return e
        if time.monotonic() > deadline:
            raise CheckFailed(f"no journal entry with {what} within {timeout:g}s; the unit's"
                              f" entries since then:\n  {brief(entries)}")
        time.sleep(0.3)


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
    return body.decode("utf-8", "replace")


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})?\s+(\S+)", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    return None


def wait_state(ifname: str, attached: bool, timeout: float = 10.0) -> None:
    want = "teql0" if attached else "not teql0"
    try:
        wait_until(lambda: (root_qdisc(ifname) == "teql0") == attached, timeout,
                   interval=0.1, what=f"{ifname} root qdisc {want}")
    except AssertionError as exc:
        raise CheckFailed(f"{exc}; now: {root_qdisc(ifname)!r}") from None


def readme_sh(script: str, *, timeout: float) -> str:
    """Run a README block with ``sh -e -x`` in the router's checkout,
    streaming its output; returns the output."""
    proc = subprocess.Popen(
        ["sh", "-e", "-x", "-c", script], cwd=SRC, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        log(lines[-1])
        if time.monotonic() > deadline:
            proc.kill()
    rc = proc.wait()
    out = "\n".join(lines)
    if rc != 0:
        raise CheckFailed(f"the README block exited {rc}:\n{out[-2500:]}")
    return out


# --------------------------------------------------------------------------
# the checks, in order; each returns a detail line or raises


class E2E:
    def __init__(self) -> None:
        self.lab = Lab()
        self.results: dict[str, JSON] = {}
        self.facts: JSON = {}
        self.pip_output = ""
        self.main_pid = ""
        self.prometheus_error = ""
        self.started_mono = 0.0
        self.wan0_config = ""  # the example without wan1 (check_reload_applies)

    def check_boot(self) -> str:
        boot = json.loads((RESULTS / "boot.json").read_text())
        self.facts["boot"] = boot
        if boot.get("system_state") != "running" or boot.get("failed_units"):
            raise CheckFailed(f"system {boot.get('system_state')!r}, failed units:"
                              f" {boot.get('failed_units')}")
        # Offline, as promised: the checkout and the wheelhouse come over
        # hostfs, and PyPI is out of reach.
        links = sorted(p.name for p in Path("/sys/class/net").iterdir())
        if links != ["lo"]:
            raise CheckFailed(f"the guest has network devices: {links}")
        return str(boot.get("analyze_time", "")).splitlines()[0] + "; network devices: lo only"

    def check_readme_install(self) -> str:
        doc = install_doc(CHECKOUT / "README.md")
        if SRC.exists():
            shutil.rmtree(SRC)
        shutil.copytree(CHECKOUT, SRC, ignore=COPY_IGNORE, symlinks=True)
        script = doc.offline_install(WHEELHOUSE)
        log("--- the README's install block, offline variant:\n" + script.rstrip())
        start = time.monotonic()
        self.pip_output = readme_sh(script, timeout=300)
        self.facts["install_s"] = round(time.monotonic() - start, 1)
        for path in ("/usr/local/bin/wanbalanced", "/etc/systemd/system/wanbalanced.service",
                     "/etc/modules-load.d/wanbalanced.conf", "/etc/modprobe.d/wanbalanced.conf",
                     str(CONFIG)):
            if not os.path.exists(path):
                raise CheckFailed(f"{path} is missing after the install")
        version = sh(["wanbalanced", "--version"]).stdout.strip()
        dropin = os.environ.get("WB_E2E_DROPIN")
        if dropin:
            # For trying a change to the unit without editing it: not used
            # by `make e2e`.
            target = Path("/etc/systemd/system/wanbalanced.service.d/e2e.conf")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dropin, target)
            log(f"--- drop-in {target} (WB_E2E_DROPIN):\n{target.read_text().rstrip()}")
            sh("systemctl daemon-reload")
        return f"installed {version} in {self.facts['install_s']}s"

    def check_systemd_python_from_debian(self) -> str:
        m = re.search(r"Requirement already satisfied: systemd-python\S* in (\S+)", self.pip_output)
        if not m:
            raise CheckFailed("pip did not report systemd-python as already satisfied by the"
                              " system site-packages")
        where = sh(["/opt/wanbalanced/bin/python", "-c",
                    "import systemd.journal, systemd.daemon; print(systemd.__file__)"]).stdout.strip()
        if not where.startswith("/usr/lib/python3/dist-packages/"):
            raise CheckFailed(f"systemd imported from {where}, not Debian's python3-systemd")
        sh(["/opt/wanbalanced/bin/pip", "check"])
        return f"satisfied in {m.group(1)}; imports {where}"

    def check_module_loaded(self) -> str:
        if not os.path.isdir("/sys/module/sch_teql"):
            raise CheckFailed("sch_teql is not loaded after restarting systemd-modules-load")
        devs = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith("teql"))
        if devs != ["teql0"]:
            raise CheckFailed(f"expected teql0 only (max_equalizers=1), found {devs}")
        # max_equalizers=1 is also the module's default: show that modprobe
        # (which systemd-modules-load uses) applies the modprobe.d file.
        how = sh(["modprobe", "--show-depends", "sch_teql"]).stdout.strip()
        if not how.endswith("max_equalizers=1"):
            raise CheckFailed(f"modprobe does not apply modprobe.d/wanbalanced.conf: {how!r}")
        return f"sch_teql loaded, teql0 only; {how}"

    def check_topology(self) -> str:
        self.lab.setup(2)
        # Not 0: the daemon must write it (config: rp_filter = 0), through
        # the unit's sandbox.
        Path("/proc/sys/net/ipv4/conf/wan1/rp_filter").write_text("2")
        self.start_prometheus()
        return "wan0, wan1 up, not attached; wan1 rp_filter=2"

    def start_prometheus(self) -> None:
        try:
            # Its storage on a tmpfs: on the guest's hostfs root, a file that a
            # non-root process creates belongs to root (hostfs creates it as
            # the UML process, host root), so Prometheus (user prometheus)
            # could not open its own WAL segments.
            sh("mount -t tmpfs -o mode=0755,uid=$(id -u prometheus),gid=$(id -g prometheus)"
               " tmpfs /var/lib/prometheus")
            Path("/etc/prometheus/prometheus.yml").write_text(PROMETHEUS_YML)
            sh("promtool check config /etc/prometheus/prometheus.yml")
            sh("systemctl restart --no-block prometheus.service")
        except Exception as exc:  # noqa: BLE001 - reported by prometheus_scrapes
            self.prometheus_error = str(exc)

    def check_started(self) -> str:
        doc = install_doc(CHECKOUT / "README.md")
        log("--- the README's start block:\n" + doc.start.rstrip())
        start = time.monotonic()
        self.started_mono = start
        readme_sh(doc.start, timeout=90)
        took = time.monotonic() - start
        self.facts["enable_now_s"] = round(took, 2)
        return f"check-config + enable --now took {took:.1f}s"

    def check_active(self) -> str:
        state = sh(["systemctl", "is-active", UNIT], check=False).stdout.strip()
        props = show("Type", "MainPID", "NRestarts", "Result")
        if state != "active":
            raise CheckFailed(f"is-active says {state!r}; {props}; journal:\n  "
                              f"{brief(journal(self.started_mono))}")
        self.main_pid = props.get("MainPID", "")
        # What the daemon may do: CAP_NET_ADMIN (bit 12) and CAP_NET_RAW
        # (bit 13, for probes) and nothing else, whatever user it runs as.
        status = Path(f"/proc/{self.main_pid}/status").read_text()
        proc = dict(re.findall(r"^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):\s*(.*)$", status, re.M))
        for cap in ("CapEff", "CapBnd"):
            if int(proc.get(cap, "0"), 16) != (1 << 12) | (1 << 13):
                raise CheckFailed(f"the daemon's {cap} is {proc.get(cap)}, not CAP_NET_ADMIN + CAP_NET_RAW")
        self.facts["daemon_process"] = proc
        return f"active, {props}, uid {proc['Uid'].split()[0]}, CapEff={proc['CapEff']}"

    def check_status_text(self) -> str:
        want = "teql0: 2/2 slaves attached"
        got = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = show("StatusText").get("StatusText", "")
            if got == want:
                return f"StatusText={got!r}"
            time.sleep(0.2)
        raise CheckFailed(f"StatusText is {got!r}, expected {want!r}")

    def check_attached(self) -> str:
        for s in ("wan0", "wan1"):
            wait_state(s, True)
        if default_route("teql0") is None:
            raise CheckFailed("no default route through teql0")
        received = self.lab.ping(3)
        if received == 0:
            raise CheckFailed("no ping reply through teql0")
        return f"wan0, wan1 attached; default dev teql0; {received}/3 pings answered"

    def check_rp_filter(self) -> str:
        try:
            wait_until(lambda: rp_filter("wan1") == 0, 5, interval=0.1, what="wan1 rp_filter 0")
        except AssertionError as exc:
            raise CheckFailed(f"{exc}; journal:\n  {brief(journal(self.started_mono))}") from None
        return "wan1 rp_filter 2 -> 0"

    def check_journal_native(self) -> str:
        entries = journal(self.started_mono)
        with_event = [e for e in entries if field(e, "EVENT")]
        if not with_event:
            raise CheckFailed(f"no entry with an EVENT field: not logging natively?\n  {brief(entries)}")
        errors = [e for e in entries if field(e, "PRIORITY") in ("0", "1", "2", "3")]
        if errors:
            raise CheckFailed(f"errors logged:\n  {brief(errors)}")
        events = sorted({field(e, "EVENT") for e in with_event})
        return f"{len(entries)} entries, events {events}, no error"

    def check_status_cli(self) -> str:
        out = sh(["wanbalanced", "status", "--json"]).stdout
        answer = json.loads(out)
        attached = sorted(s["slave"] for s in answer.get("slaves", []) if s.get("attached"))
        if attached != ["wan0", "wan1"]:
            raise CheckFailed(f"status says attached: {attached}")
        sh(["wanbalanced", "status"])
        return f"attached {attached} (pid {answer.get('pid')})"

    def check_journal_detach(self) -> str:
        since = time.monotonic()
        self.lab.far_down(0)
        e = self._wan0_logged(since, "detach", attached=False, priority="4", what="detach")
        # The README's filter on one line: only wan0's entries.
        only = journal(since, "SLAVE=wan0")
        others = [x for x in only if field(x, "SLAVE") != "wan0"]
        if not only or others:
            raise CheckFailed(f"`journalctl -u {UNIT} SLAVE=wan0` is wrong:\n  {brief(only)}")
        return f"{brief([e])}"

    def check_journal_reattach(self) -> str:
        since = time.monotonic()
        self.lab.far_up(0)
        e = self._wan0_logged(since, "attach", attached=True, priority="5", what="re-slave")
        return f"{brief([e])}"

    def _wan0_logged(self, since: float, event: str, *, attached: bool, priority: str, what: str) -> JSON:
        """wan0's journal entry EVENT=`event` after `since`, once the kernel
        agrees (attached or not), checked for its PRIORITY."""
        e = wait_entry(since, f"SLAVE=wan0 EVENT={event}",
                       lambda e: field(e, "SLAVE") == "wan0" and field(e, "EVENT") == event)
        wait_state("wan0", attached)
        if field(e, "PRIORITY") != priority:
            raise CheckFailed(f"{what} logged with PRIORITY={field(e, 'PRIORITY')}, expected {priority}:"
                              f" {brief([e])}")
        return e

    def check_probes_sandboxed(self) -> str:
        # ICMP probes need a raw socket (CAP_NET_RAW) under the unit's sandbox.
        since = time.monotonic()
        self.write_config(CONFIG.read_text() + """
[slaves.wan0.probe]
targets = ["192.0.2.1"]
interval = "100ms"
timeout = "100ms"
down_after = 3
up_after = 3
""")
        self.reload()
        wait_entry(since, "EVENT=reload", lambda e: field(e, "EVENT") == "reload")
        deadline = time.monotonic() + 10
        sent = lost = None
        while time.monotonic() < deadline:
            text = fetch(METRICS_URL)
            sent = metric_value(text, "wanbalanced_probe_sent_total", slave="wan0", target="192.0.2.1")
            lost = metric_value(text, "wanbalanced_probe_lost_total", slave="wan0", target="192.0.2.1")
            if sent is not None and sent >= 10:
                break
            time.sleep(0.2)
        errors = [e for e in journal(since) if field(e, "PRIORITY") in ("0", "1", "2", "3")]
        if errors or sent is None or sent < 10 or lost:
            raise CheckFailed(f"probes: sent={sent} lost={lost}; errors:\n  {brief(errors)}")
        wait_state("wan0", True, timeout=1)
        return f"wan0 probed through the sandbox: {sent:g} echoes sent, {lost:g} lost"

    def check_metrics_promtool(self) -> str:
        text = fetch(METRICS_URL)
        (RESULTS / "metrics.txt").write_text(text)
        proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise CheckFailed(f"promtool check metrics: {(proc.stdout + proc.stderr).strip()[-1500:]}")
        missing = [name for name, labels in (
            ("wanbalanced_slave_up", {"equalizer": "teql0", "slave": "wan0"}),
            ("wanbalanced_slave_attached", {"equalizer": "teql0", "slave": "wan1"}),
            ("wanbalanced_slave_state", {"equalizer": "teql0", "slave": "wan0"}),
            ("wanbalanced_config_last_reload_successful", {}),
            ("wanbalanced_build_info", {}),
        ) if metric_value(text, name, **labels) is None]
        if missing:
            raise CheckFailed(f"missing from /metrics: {missing}")
        up = metric_value(text, "wanbalanced_slave_up", equalizer="teql0", slave="wan0")
        return f"promtool: ok; {len(text.splitlines())} lines; slave_up{{wan0}}={up}"

    def check_prometheus_scrapes(self) -> str:
        if self.prometheus_error:
            raise CheckFailed(f"Prometheus was not started: {self.prometheus_error}")
        query = urllib.parse.urlencode({"query": "wanbalanced_slave_up"})
        last = ""
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                answer = json.loads(fetch(f"{PROMETHEUS}/api/v1/query?{query}"))
                series = answer.get("data", {}).get("result", [])
                slaves = sorted(s["metric"].get("slave", "") for s in series)
                last = f"{answer.get('status')}: {slaves}"
                if {"wan0", "wan1"} <= set(slaves):
                    return f"Prometheus sees wanbalanced_slave_up for {slaves}"
            except (OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(1)
        targets = ""
        try:
            targets = fetch(f"{PROMETHEUS}/api/v1/targets")[:800]
        except OSError as exc:
            targets = str(exc)
        status = sh("systemctl status --no-pager -n 20 prometheus.service", check=False).stdout
        raise CheckFailed(f"no wanbalanced_slave_up series for wan0 and wan1 in 40s; last: {last};"
                          f" targets: {targets}\n{status[-1500:]}")

    def write_config(self, text: str) -> None:
        CONFIG.write_text(text)
        log(f"--- {CONFIG}:\n{text.rstrip()}")

    def reload(self) -> None:
        sh(["systemctl", "reload", UNIT], timeout=60)

    def reload_metric(self) -> float | None:
        try:
            return metric_value(fetch(METRICS_URL), "wanbalanced_config_last_reload_successful")
        except OSError:
            return None

    def check_reload_applies(self) -> str:
        text = CONFIG.read_text()
        new, n = re.subn(r'^slaves = \["wan0", "wan1"\]', 'slaves = ["wan0"]', text, flags=re.M)
        if n != 1:
            raise CheckFailed('config.example.toml changed: no line `slaves = ["wan0", "wan1"]`')
        # wan1's own table must go too: it is no longer a slave of any equalizer.
        new = re.sub(r"^\[slaves\.wan1\].*\n(?:[^\[\n#].*\n)*", "", new, flags=re.M)
        probe = Path("/tmp/wan0-only.toml")
        probe.write_text(new)
        sh(["wanbalanced", "check-config", "--config", str(probe)])
        self.wan0_config = new
        since = time.monotonic()
        self.write_config(new)
        self.reload()
        wait_state("wan1", False)
        wait_state("wan0", True, timeout=1)
        wait_entry(since, "EVENT=reload", lambda e: field(e, "EVENT") == "reload")
        state = sh(["systemctl", "is-active", UNIT], check=False).stdout.strip()
        pid = show("MainPID").get("MainPID")
        if state != "active" or pid != self.main_pid:
            raise CheckFailed(f"after reload: {state}, MainPID {pid} (was {self.main_pid})")
        ok = self.reload_metric()
        if ok != 1.0:
            raise CheckFailed(f"wanbalanced_config_last_reload_successful is {ok}, expected 1")
        return f"wan1 detached, wan0 attached, same pid {pid}, {show('StatusText')}"

    def check_reload_bad_config(self) -> str:
        since = time.monotonic()
        self.write_config(self.wan0_config + "\n[equalizers.teql0\nthis is not TOML\n")
        self.reload()
        e = wait_entry(since, "EVENT=reload at PRIORITY<=3",
                       lambda e: field(e, "EVENT") == "reload"
                       and field(e, "PRIORITY") in ("0", "1", "2", "3"))
        time.sleep(0.5)
        state = sh(["systemctl", "is-active", UNIT], check=False).stdout.strip()
        pid = show("MainPID").get("MainPID")
        if state != "active" or pid != self.main_pid:
            raise CheckFailed(f"after a bad reload: {state}, MainPID {pid} (was {self.main_pid})")
        wait_state("wan0", True, timeout=1)
        if root_qdisc("wan1") == "teql0":
            raise CheckFailed("wan1 attached again: the bad file was applied?")
        bad = self.reload_metric()
        # Back to the good file, so that what follows runs on it.
        self.write_config(self.wan0_config)
        self.reload()
        try:
            wait_until(lambda: self.reload_metric() == 1.0, 10, interval=0.2,
                       what="last_reload_successful 1 after the good file")
        except AssertionError as exc:
            raise CheckFailed(str(exc)) from None
        if bad != 0.0:
            raise CheckFailed(f"wanbalanced_config_last_reload_successful was {bad} after the"
                              " bad file, expected 0")
        return f"kept running (pid {pid}); {brief([e])}"

    def check_watchdog(self) -> str:
        props = show("WatchdogUSec", "ActiveEnterTimestampMonotonic", "NRestarts", "MainPID")
        if props.get("WatchdogUSec") != "10s":
            raise CheckFailed(f"WatchdogUSec={props.get('WatchdogUSec')}, expected 10s")
        entered = int(props.get("ActiveEnterTimestampMonotonic", "0")) / 1e6
        lived = time.monotonic() - entered
        if lived < 12:
            time.sleep(12 - lived)
        props = show("NRestarts", "MainPID", "ActiveState", "Result")
        if (props.get("NRestarts") != "0" or props.get("MainPID") != self.main_pid
                or props.get("ActiveState") != "active"):
            raise CheckFailed(f"the daemon did not survive the watchdog: {props}, first pid"
                              f" {self.main_pid}")
        return f"alive {max(lived, 12):.0f}s > WatchdogSec=10s, {props}"

    def check_stop_clean(self) -> str:
        sh(["systemctl", "stop", UNIT], timeout=60)
        props = show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
        if props != {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1",
                     "ExecMainStatus": "0"}:
            raise CheckFailed(f"after stop: {props}; journal:\n  {brief(journal(self.started_mono))}")
        return str(props)

    def check_stop_leaves_equalizer(self) -> str:
        if root_qdisc("wan0") != "teql0":
            raise CheckFailed(f"wan0's root qdisc is {root_qdisc('wan0')!r} after stop")
        if default_route("teql0") is None:
            raise CheckFailed("the default route through teql0 is gone after stop")
        received = self.lab.ping(3)
        if received == 0:
            raise CheckFailed("no ping reply through teql0 after stop")
        return f"wan0 attached, default dev teql0, {received}/3 pings answered"

    def check_unit_verify(self) -> str:
        proc = sh(["systemd-analyze", "verify", "/etc/systemd/system/wanbalanced.service"],
                  check=False)
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0 or out:
            raise CheckFailed(f"exit {proc.returncode}: {out}")
        return "no warning"

    def check_security(self) -> str:
        levels: dict[str, float] = {}
        report = []
        for unit in (UNIT, "systemd-networkd.service"):
            out = sh(["systemd-analyze", "security", "--no-pager", unit], quiet=True,
                     check=False).stdout
            report.append(out)
            m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\S+)", out)
            if not m:
                raise CheckFailed(f"no exposure level for {unit}:\n{out[-800:]}")
            levels[unit] = float(m.group(1))
            log(f"systemd-analyze security {unit}: {m.group(1)} {m.group(2)}")
        (RESULTS / "security.txt").write_text("\n\n".join(report))
        self.facts["exposure"] = levels
        detail = ", ".join(f"{u} {v}" for u, v in levels.items())
        if levels[UNIT] > levels["systemd-networkd.service"]:
            raise CheckFailed(f"exposure worse than systemd-networkd's: {detail}")
        return detail


# --------------------------------------------------------------------------
# running them

#: What each check needs to have passed; a check whose needs failed is
#: "blocked" instead of run.
NEEDS: dict[str, tuple[str, ...]] = {
    "systemd_python_from_debian": ("readme_install",),
    "module_loaded": ("readme_install",),
    "topology": (),
    "started": ("readme_install", "topology"),
    **{name: ("started",) for name in (
        "active", "status_text", "attached", "rp_filter", "journal_native", "status_cli",
        "journal_detach", "journal_reattach", "metrics_promtool", "prometheus_scrapes",
        "reload_applies", "watchdog", "stop_clean")},
    "reload_bad_config": ("reload_applies",),
    "stop_leaves_equalizer": ("stop_clean",),
    "unit_verify": ("readme_install",),
    "security": ("readme_install",),
}


def save(e2e: E2E) -> None:
    data = {"checks": e2e.results, "facts": e2e.facts}
    tmp = RESULTS / "checks.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(RESULTS / "checks.json")


def run_checks(e2e: E2E, checks: tuple[tuple[str, str], ...],
               needs: dict[str, tuple[str, ...]]) -> int:
    """Run ``checks`` in order (``e2e.check_<name>()`` each), a check whose
    ``needs`` did not pass being blocked; 0 if all passed."""
    descriptions = dict(checks)
    start = time.monotonic()
    for name, _ in checks:
        blocked = [n for n in needs.get(name, ()) if e2e.results.get(n, {}).get("status") != "pass"]
        t0 = time.monotonic()
        log(f"=== {name}: {descriptions[name]}")
        result: JSON
        if blocked:
            result = {"status": "blocked", "detail": f"blocked: {', '.join(blocked)} failed"}
        else:
            try:
                detail = getattr(e2e, f"check_{name}")()
                result = {"status": "pass", "detail": detail}
            except CheckFailed as exc:
                result = {"status": "fail", "detail": str(exc)}
            except Exception as exc:  # noqa: BLE001 - a check's bug is its failure
                result = {"status": "fail",
                          "detail": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}
        result["seconds"] = round(time.monotonic() - t0, 2)
        e2e.results[name] = result
        log(f"--- {name}: {result['status'].upper()} ({result['seconds']}s): "
            f"{str(result['detail']).splitlines()[0] if result['detail'] else ''}")
        save(e2e)
    e2e.facts["guest_script_s"] = round(time.monotonic() - start, 1)
    # For whoever reads the results afterwards.
    (RESULTS / "wanbalanced-journal.json").write_text(
        "\n".join(json.dumps(e) for e in journal()) + "\n")
    save(e2e)
    failed = [n for n, r in e2e.results.items() if r["status"] != "pass"]
    log(f"=== {len(checks) - len(failed)}/{len(checks)} checks passed"
        + (f"; not passed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main() -> int:
    return run_checks(E2E(), CHECKS, NEEDS)


if __name__ == "__main__":
    sys.exit(main())
