"""The Debian package end to end, run INSIDE the booted Debian guest.

``test_deb.py`` (on the host) boots a fresh Debian 12 root with systemd in
User-Mode Linux (``lab/systemd``), with the packages that ``make deb`` built
mounted at ``/mnt/debs`` (``$WB_DEBS``: the first build, a newer build of the
same code, and a build of newer code), and has its driver run this script.
The guest has no network: apt installs the .deb files offline, from their
dependencies already in the root. As an operator would, the script:

1. copies the first build into the guest and installs it with
   ``apt-get install ./wanbalanced_*.deb``; checks the files, that the unit is
   enabled but not started with the shipped configuration, and that sch_teql
   is loaded;
2. builds the lab topology (wan0 and wan1 as veth pairs), writes a
   configuration into the conffile and starts the unit: the daemon attaches
   both lines and ``wanbalanced status`` answers;
3. upgrades to the newer build of the same code (a reload: the same daemon
   process) and then to the newer code (a restart), with ``--force-confold``
   each time; the edited configuration survives and teql0 keeps its slaves
   throughout (sampled every 50 ms);
4. purges the package and checks that nothing is left.

Results go to ``$WB_RESULTS/checks.json`` as for ``guest_e2e.py``, whose
helpers and check runner this uses.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE)]

from checks import DEB_CHECKS  # noqa: E402
from guest_e2e import (  # noqa: E402
    CONFIG, E2E, UNIT, CheckFailed, brief, field, journal, run_checks, sh, show, wait_entry,
)

from lab.topo import default_route, root_qdisc  # noqa: E402

DEBS_DIR = Path(os.environ.get("WB_DEBS_DIR", "/mnt/debs"))
DEBS = os.environ.get("WB_DEBS", "").split()
LOCAL = Path("/root/debs")  # where the operator copied them
VENV = Path("/opt/venvs/wanbalanced")
SLAVES = ("wan0", "wan1")
#: The operator's configuration: the conffile, edited.
OPERATOR_CONFIG = """\
# Written by the operator (tests/e2e/guest_deb.py): the seed's two lines.
[equalizers.teql0]
slaves = ["wan0", "wan1"]
address = "10.0.0.0/31"
"""
#: What the package installs, and what purge must remove.
PACKAGE_PATHS = (
    "/usr/bin/wanbalanced",
    "/lib/systemd/system/wanbalanced.service",
    "/usr/lib/modules-load.d/wanbalanced.conf",
    "/etc/modprobe.d/wanbalanced.conf",
    str(CONFIG),
    str(VENV),
    "/usr/share/doc/wanbalanced",
    "/usr/share/man/man8/wanbalanced.8.gz",
)


def teql0_state() -> dict[str, object]:
    """What must not change under an upgrade: teql0's ifindex, its slaves,
    its default route."""
    return {
        "ifindex": int(Path("/sys/class/net/teql0/ifindex").read_text()),
        "slaves": [s for s in SLAVES if root_qdisc(s) == "teql0"],
        "default_route": default_route("teql0") is not None,
    }


class Sampler:
    """Samples the slaves' root qdiscs every 50 ms in a thread: any moment
    a slave was not attached to teql0 while it ran."""

    def __init__(self) -> None:
        self.gaps: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for s in SLAVES:
                q = root_qdisc(s)
                if q != "teql0":
                    self.gaps.append(f"{time.monotonic():.2f}: {s} root qdisc {q!r}")
            self.samples += 1
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class DebE2E(E2E):
    def __init__(self) -> None:
        super().__init__()
        self.debs: list[Path] = []

    def apt_install(self, deb: Path) -> str:
        start = time.monotonic()
        out = sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y"
                 f" -o Dpkg::Options::=--force-confold {deb}", timeout=300).stdout
        self.facts[f"install_{deb.name}_s"] = round(time.monotonic() - start, 1)
        return out

    def version(self) -> str:
        return sh(["dpkg-query", "-W", "-f=${Version}", "wanbalanced"], quiet=True).stdout

    def check_deb_install(self) -> str:
        if len(DEBS) != 3:
            raise CheckFailed(f"WB_DEBS must name three builds, got {DEBS}")
        LOCAL.mkdir(parents=True, exist_ok=True)
        for name in DEBS:
            shutil.copy(DEBS_DIR / name, LOCAL / name)
            self.debs.append(LOCAL / name)
        self.apt_install(self.debs[0])
        status = sh(["dpkg-query", "-W", "-f=${Status}", "wanbalanced"]).stdout
        if status != "install ok installed":
            raise CheckFailed(f"dpkg says {status!r}")
        return (f"{self.debs[0].name}: {status}, version {self.version()},"
                f" in {self.facts[f'install_{self.debs[0].name}_s']}s")

    def check_deb_files(self) -> str:
        missing = [p for p in PACKAGE_PATHS if not os.path.exists(p)]
        if missing:
            raise CheckFailed(f"missing after the install: {missing}")
        conffiles = sh(["dpkg-query", "-W", "-f=${Conffiles}", "wanbalanced"]).stdout
        if str(CONFIG) not in conffiles:
            raise CheckFailed(f"{CONFIG} is not a conffile: {conffiles!r}")
        version = sh(["wanbalanced", "--version"]).stdout.strip()
        # The venv's own dependencies, not Debian's (pydantic 1 there).
        where = sh([str(VENV / "bin/python"), "-c",
                    "import pydantic, pyroute2, systemd.journal, prometheus_client;"
                    " print(pydantic.VERSION, systemd.journal.__file__)"]).stdout.strip()
        if not where.startswith("2.") or f" {VENV}/" not in where:
            raise CheckFailed(f"the venv imports {where!r}")
        unit = sh(["systemctl", "cat", UNIT], quiet=True).stdout
        if "ExecStart=/usr/bin/wanbalanced run" not in unit:
            raise CheckFailed(f"the installed unit does not run /usr/bin/wanbalanced:\n{unit[-800:]}")
        verify = sh(["systemd-analyze", "verify", "/lib/systemd/system/wanbalanced.service"],
                    check=False)
        said = (verify.stdout + verify.stderr).strip()
        if verify.returncode != 0 or said:
            raise CheckFailed(f"systemd-analyze verify: exit {verify.returncode}: {said}")
        pyc = sum(1 for _ in VENV.rglob("*.pyc"))
        if not pyc:
            raise CheckFailed("the postinst compiled no byte code")
        return f"{version}; venv: pydantic {where}; {pyc} .pyc compiled; unit verified"

    def check_deb_enabled_not_started(self) -> str:
        enabled = sh(["systemctl", "is-enabled", UNIT], check=False).stdout.strip()
        if enabled != "enabled":
            raise CheckFailed(f"is-enabled says {enabled!r}")
        check = sh(["wanbalanced", "check-config"], check=False)
        if check.returncode != 1:
            raise CheckFailed(f"check-config on the shipped file exited {check.returncode}, not 1")
        # The postinst's start, and one more as at boot: skipped by the
        # unit's ExecCondition= (Result=exec-condition), not failed.
        for when in ("after the install", "after `systemctl start`"):
            if when != "after the install":
                since = time.monotonic()
                sh(["systemctl", "start", UNIT])
            props = show("ActiveState", "Result", "NRestarts", "ConditionResult")
            failed = sh(["systemctl", "is-failed", UNIT], check=False).stdout.strip()
            if (props.get("ActiveState") != "inactive" or props.get("Result") != "exec-condition"
                    or failed != "inactive"):
                raise CheckFailed(f"{when}, with the shipped config: {props}, is-failed {failed!r}")
        entries = journal(since)
        skipped = [e for e in entries if "exec-condition" in field(e, "MESSAGE")]
        if not skipped:
            raise CheckFailed(f"no journal entry says the start was skipped:\n  {brief(entries)}")
        return f"enabled; start skipped: {brief(skipped[-1:])}; {props}"

    def check_deb_module_loaded(self) -> str:
        return self.check_module_loaded()

    def check_deb_configured(self) -> str:
        self.lab.setup(2)
        self.write_config(OPERATOR_CONFIG)
        sh(["wanbalanced", "check-config"])
        self.started_mono = time.monotonic()
        sh(["systemctl", "start", UNIT], timeout=90)
        self.check_active()
        self.check_status_text()
        self.check_attached()
        status = sh(["wanbalanced", "status", "--json"]).stdout
        attached = sorted(s["slave"] for s in json.loads(status).get("slaves", []) if s.get("attached"))
        if attached != list(SLAVES):
            raise CheckFailed(f"`wanbalanced status` says attached: {attached}")
        sh(["wanbalanced", "status"])
        self.facts["teql0_before_upgrades"] = teql0_state()
        return f"active, pid {self.main_pid}; status: attached {attached}; {teql0_state()}"

    def upgrade(self, deb: Path, say: str) -> tuple[str, float]:
        """Install ``deb`` over the running daemon; checks what must hold
        after any upgrade. Returns apt's output and when it started."""
        before = teql0_state()
        since = time.monotonic()
        with Sampler() as sampler:
            out = self.apt_install(deb)
            time.sleep(1.0)  # a detach right after the upgrade would show here
        if f"wanbalanced: {say}" not in out:
            raise CheckFailed(f"the postinst did not say {say!r}:\n{out[-1500:]}")
        if CONFIG.read_text() != OPERATOR_CONFIG:
            raise CheckFailed(f"the edited conffile changed:\n{CONFIG.read_text()}")
        leftovers = sorted(p.name for p in CONFIG.parent.iterdir() if p.name != CONFIG.name)
        props = show("ActiveState", "SubState", "MainPID", "StatusText")
        if props.get("ActiveState") != "active":
            raise CheckFailed(f"after the upgrade: {props}; journal:\n  {brief(journal(since))}")
        after = teql0_state()
        if after != before or sampler.gaps:
            raise CheckFailed(f"teql0 before {before}, after {after};"
                              f" gaps in {sampler.samples} samples: {sampler.gaps[:5]}")
        detached = [e for e in journal(since) if field(e, "EVENT") == "detach"]
        if detached:
            raise CheckFailed(f"slaves detached during the upgrade:\n  {brief(detached)}")
        received = self.lab.ping(3)
        if received == 0:
            raise CheckFailed("no ping reply through teql0 after the upgrade")
        self.facts[f"upgrade_{deb.name}"] = {"samples": sampler.samples, "teql0": after,
                                            "leftovers": leftovers}
        return out, since

    def check_deb_upgrade_reload(self) -> str:
        pid = show("MainPID")["MainPID"]
        _, since = self.upgrade(self.debs[1], "the daemon's code and unit are unchanged: reloading it")
        wait_entry(since, "EVENT=reload", lambda e: field(e, "EVENT") == "reload")
        props = show("MainPID", "NRestarts")
        if props.get("MainPID") != pid or props.get("NRestarts") != "0":
            raise CheckFailed(f"the daemon was replaced: {props}, was pid {pid}")
        return f"version {self.version()}, same pid {pid}, reloaded; conffile kept; {teql0_state()}"

    def check_deb_upgrade_restart(self) -> str:
        pid = show("MainPID")["MainPID"]
        self.upgrade(self.debs[2], "restarting the daemon on its new code")
        new_pid = show("MainPID")["MainPID"]
        if new_pid == pid:
            raise CheckFailed(f"not restarted: still pid {pid}")
        version = sh(["wanbalanced", "--version"]).stdout.strip()
        self.check_status_text()
        return f"version {self.version()} ({version}), pid {pid} -> {new_pid}; conffile kept; {teql0_state()}"

    def check_deb_purge(self) -> str:
        sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y wanbalanced", timeout=120)
        left = [p for p in (*PACKAGE_PATHS, "/etc/wanbalanced", "/var/lib/wanbalanced",
                            "/run/wanbalanced", "/opt/venvs",
                            "/etc/systemd/system/multi-user.target.wants/wanbalanced.service")
                if os.path.lexists(p)]
        if left:
            raise CheckFailed(f"left after purge: {left}")
        listed = sh(["dpkg", "-l", "wanbalanced"], check=False)
        if listed.returncode == 0:
            raise CheckFailed(f"dpkg -l still lists it:\n{listed.stdout}")
        load = show("LoadState").get("LoadState")
        if load != "not-found":
            raise CheckFailed(f"systemd still knows {UNIT}: LoadState={load}")
        # Removing the daemon stopped it, and a stopped daemon leaves the
        # equalizer as it is.
        if [s for s in SLAVES if root_qdisc(s) != "teql0"]:
            raise CheckFailed(f"after purge: {teql0_state()}")
        return f"nothing left; dpkg -l: {(listed.stdout + listed.stderr).strip()}; teql0 kept its slaves"


NEEDS: dict[str, tuple[str, ...]] = {
    "deb_files": ("deb_install",),
    "deb_enabled_not_started": ("deb_install",),
    "deb_module_loaded": ("deb_install",),
    "deb_configured": ("deb_install",),
    "deb_upgrade_reload": ("deb_configured",),
    "deb_upgrade_restart": ("deb_configured",),
    "deb_purge": ("deb_install",),
}


def main() -> int:
    return run_checks(DebE2E(), DEB_CHECKS, NEEDS)


if __name__ == "__main__":
    sys.exit(main())
