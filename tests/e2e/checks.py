"""The checks of the end-to-end tests, in the order the guest runs them.

Shared by the guest scripts (``guest_e2e.py`` for the README's install by
hand, ``guest_deb.py`` for the Debian package; each records a result per
check) and the host tests (``test_systemd.py``, ``test_deb.py``: one test per
check).
"""

from __future__ import annotations

CHECKS: tuple[tuple[str, str], ...] = (
    ("boot", "the guest booted to multi-user.target with no failed unit"),
    ("readme_install", "the README's install commands ran (offline variant, wheelhouse)"),
    ("systemd_python_from_debian", "pip took systemd-python from Debian's python3-systemd"),
    ("module_loaded", "modules-load.d loaded sch_teql with modprobe.d's max_equalizers=1"),
    ("topology", "router B and the lines wan0, wan1 were set up"),
    ("started", "the README's `check-config` and `systemctl enable --now` succeeded"),
    ("active", "wanbalanced.service is active (READY=1) with CAP_NET_ADMIN and CAP_NET_RAW only"),
    ("status_text", "systemd shows STATUS=teql0: 2/2 slaves attached"),
    ("attached", "both slaves attached, teql0 up with its default route"),
    ("rp_filter", "the sandboxed daemon wrote rp_filter (ReadWritePaths=/proc/sys/net/ipv4/conf)"),
    ("journal_native", "the daemon logs natively to journald with its fields, no error"),
    ("status_cli", "`wanbalanced status --json` answers over /run/wanbalanced/control.sock"),
    ("journal_detach", "carrier loss on wan0: journal PRIORITY=4 SLAVE=wan0 EVENT=detach"),
    ("journal_reattach", "carrier back on wan0: journal PRIORITY=5 SLAVE=wan0 EVENT=attach"),
    ("probes_sandboxed", "ICMP probes on wan0 run under the unit's sandbox (CAP_NET_RAW), none lost"),
    ("metrics_promtool", "the metrics endpoint passes `promtool check metrics`"),
    ("prometheus_scrapes", "a real Prometheus scrapes wanbalanced_slave_up (HTTP API)"),
    ("reload_applies", "`systemctl reload` applies a config without wan1; unit stays active"),
    ("reload_bad_config", "a reload of a broken config keeps the running one; EVENT=reload error"),
    ("watchdog", "WatchdogSec=10s: the daemon lived past it with no restart"),
    ("stop_clean", "`systemctl stop` is clean: inactive, Result=success, exit status 0"),
    ("stop_leaves_equalizer", "after stop teql0 keeps its slave and route, traffic flows"),
    ("unit_verify", "`systemd-analyze verify` has nothing to say about the unit"),
    ("security", "`systemd-analyze security` exposure no worse than systemd-networkd's"),
)

#: The Debian package (``make deb``), installed offline in a fresh guest.
DEB_CHECKS: tuple[tuple[str, str], ...] = (
    ("boot", "the guest booted to multi-user.target with no failed unit"),
    ("deb_install", "`apt-get install ./wanbalanced_*.deb` installed the package offline"),
    ("deb_files", "the package's files are in place and the venv runs its own dependencies"),
    ("deb_enabled_not_started", "the unit is enabled but, with the shipped config, not started"),
    ("deb_module_loaded", "the postinst loaded sch_teql with modprobe.d's max_equalizers=1"),
    ("deb_configured", "an operator's config -> daemon active, teql0 managed, `wanbalanced status`"),
    ("deb_upgrade_reload", "upgrade, same code: edited conffile kept, reload, same daemon, teql0 untouched"),
    ("deb_upgrade_restart", "upgrade, new code: edited conffile kept, restart, teql0 untouched"),
    ("deb_purge", "`apt-get purge` leaves nothing: config, venv, unit, dpkg's record"),
)

NAMES: tuple[str, ...] = tuple(name for name, _ in CHECKS)
DESCRIPTIONS: dict[str, str] = dict(CHECKS)
DEB_DESCRIPTIONS: dict[str, str] = dict(DEB_CHECKS)
