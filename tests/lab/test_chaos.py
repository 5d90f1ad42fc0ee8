"""Randomized faults against the real daemon on the real sch_teql: seeded and
reproducible.

Each round applies a random batch of 1 to 4 faults to a 4-slave equalizer,
back to back (the daemon must cope with bursts): far ends downed and upped,
interfaces deleted and recreated, the teql qdisc and the default route removed
by hand, SIGHUP, SIGKILL plus restart. The test keeps its own model of the
lines (which interfaces exist, which far ends are up). After each round the
kernel must converge within 5 s to exactly what the rules demand: slave
attached iff it exists and its line has carrier, every existing slave
administratively up, and a default route dev teql0 iff at least one slave is
attached.

Replay a run with the seed it prints (and the same number of rounds)::

    .venv/bin/python -m lab.uml --env WB_CHAOS_SEED=1234 --env WB_CHAOS_ROUNDS=80 -- \\
        .venv/bin/python -m pytest -v -s -p no:cacheprovider tests/lab/test_chaos.py

The faults depend only on the seed and the model, never on timing, so a seed
always injects the same sequence.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import NoReturn

import pytest
from pyroute2 import IPRoute

from lab.daemon import CONFIG_2, Wanbalanced
from lab.topo import Lab, ip, tc

SEED = int(os.environ.get("WB_CHAOS_SEED", "20250611"))
ROUNDS = int(os.environ.get("WB_CHAOS_ROUNDS", "80"))
N_SLAVES = 4
CONVERGE_S = 5.0  # the bound on convergence after each round
SETTLE_S = 0.25  # a match must hold this long: a transient match is not convergence
POLL_S = 0.02
TC_H_ROOT = 0xFFFFFFFF
MAIN_TABLE = 254
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

SLAVES = [f"wan{i}" for i in range(N_SLAVES)]
# Damping is off for every slave: random flaps would otherwise (rightly) hold
# a flapping slave down, and "attached iff its line is up" would no longer be
# what the rules demand. log_level is in the file so that a SIGHUP (which
# re-reads it) keeps the debug log that a failure report prints.
CONFIG = (
    CONFIG_2.replace("[daemon]\n", '[daemon]\nlog_level = "debug"\n')
    .replace('slaves = ["wan0", "wan1"]', "slaves = [" + ", ".join(f'"{s}"' for s in SLAVES) + "]")
    + "".join(f"\n[slaves.{s}.damping]\nenabled = false\n" for s in SLAVES)
)

# Relative weights of the fault kinds (among those applicable in the model's state).
WEIGHTS = {
    "far_down": 4.0,
    "far_up": 4.0,
    "delete_slave": 1.5,
    "recreate_slave": 2.0,
    "qdisc_del": 1.5,
    "route_del": 1.0,
    "sighup": 1.0,
    "sigkill_restart": 0.7,
}


@dataclass(frozen=True)
class KernelState:
    attached: frozenset[str]  # slaves whose root qdisc is teql0
    default_route: bool  # default dev teql0 in the main table
    admin_down: frozenset[str]  # slaves that exist and are administratively down

    def __str__(self) -> str:
        return (f"attached={sorted(self.attached)} default_route={self.default_route} "
                f"admin_down={sorted(self.admin_down)}")


@dataclass
class Model:
    """What the test did to the lines, hence what the kernel must hold."""

    exists: list[bool] = field(default_factory=lambda: [True] * N_SLAVES)
    far_up: list[bool] = field(default_factory=lambda: [True] * N_SLAVES)

    def line_up(self, i: int) -> bool:
        return self.exists[i] and self.far_up[i]

    def expected(self) -> KernelState:
        attached = frozenset(SLAVES[i] for i in range(N_SLAVES) if self.line_up(i))
        return KernelState(attached, bool(attached), frozenset())

    def choices(self) -> dict[str, list[int | None]]:
        """Applicable faults: kind -> possible arguments."""
        idx = range(N_SLAVES)
        return {
            "far_down": [i for i in idx if self.line_up(i)],
            "far_up": [i for i in idx if self.exists[i] and not self.far_up[i]],
            "delete_slave": [i for i in idx if self.exists[i]],
            "recreate_slave": [i for i in idx if not self.exists[i]],
            "qdisc_del": [i for i in idx if self.line_up(i)],
            "route_del": [None] if any(self.line_up(i) for i in idx) else [],
            "sighup": [None],
            "sigkill_restart": [None],
        }


def observe(ipr: IPRoute) -> KernelState:
    """The kernel's state, over netlink (three dumps, a few ms: cheaper than
    spawning `tc` and `ip` in the guest)."""
    names: dict[int, str] = {}
    down: set[str] = set()
    teql0: int | None = None
    for msg in ipr.get_links():
        name = msg.get_attr("IFLA_IFNAME")
        names[msg["index"]] = name
        if name == "teql0":
            teql0 = msg["index"]
        elif name in SLAVES and not msg["flags"] & IFF_UP:
            down.add(name)
    attached = frozenset(
        names.get(q["index"], f"#{q['index']}") for q in ipr.get_qdiscs()
        if q["parent"] == TC_H_ROOT and q.get_attr("TCA_KIND") == "teql0"
    )
    route = teql0 is not None and any(
        r["dst_len"] == 0 and r.get_attr("RTA_OIF") == teql0
        and (r.get_attr("RTA_TABLE") or r["table"]) == MAIN_TABLE
        for r in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE)
    )
    return KernelState(attached, route, frozenset(down))


def wait_converged(ipr: IPRoute, expected: KernelState) -> tuple[float | None, KernelState]:
    """Poll until the kernel matches `expected` and keeps matching for
    SETTLE_S; return when the lasting match began (None if no match began
    within CONVERGE_S) and the last state seen."""
    start = time.monotonic()
    since: float | None = None
    while True:
        try:
            got = observe(ipr)
        except Exception:  # noqa: BLE001 - an interrupted dump: poll again
            got = KernelState(frozenset({"?"}), False, frozenset())
        now = time.monotonic()
        if got == expected:
            if since is None:
                since = now
            if now - since >= SETTLE_S:
                return since - start, got
        else:
            since = None
            if now - start > CONVERGE_S:
                return None, got
        time.sleep(POLL_S)


def log_tail(wb: Wanbalanced, lines: int = 60) -> str:
    """The end of the daemon's log, across restarts."""
    text = wb.log_path.read_bytes().decode(errors="replace") if wb.log_path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def alive(wb: Wanbalanced) -> bool:
    return wb.proc is not None and wb.proc.poll() is None


#: How long a restarted daemon may take to start and converge in the guest.
START_S = 30.0
#: Open finding (docs/caveats.md, "Kernel versions"): on 7.2, once, after a
#: SIGKILL and restart while two far ends came back, the new daemon's first
#: dump showed both lines without carrier and no carrier event followed in
#: 5 s. Not seen on 6.1. Until it is explained the test runs on 7.x as a
#: non-strict expected failure: it reports XPASS or XFAIL, with its log.
_SEVEN = int(os.uname().release.split(".")[0]) >= 7


def with_carrier(ipr: IPRoute, names: frozenset[str]) -> bool:
    """Whether every one of `names` is up with its carrier in the kernel."""
    flags = {msg.get_attr("IFLA_IFNAME"): msg["flags"] for msg in ipr.get_links()}
    return all(n in flags and flags[n] & IFF_UP and flags[n] & IFF_LOWER_UP for n in names)


@pytest.mark.lab_setup(n_slaves=N_SLAVES)
def test_random_faults_converge(lab: Lab, wb: Wanbalanced) -> None:
    rng = random.Random(SEED)
    print(f"\nchaos: seed {SEED}, {ROUNDS} rounds (replay: WB_CHAOS_SEED={SEED} WB_CHAOS_ROUNDS={ROUNDS})")
    wb.write_config(CONFIG)
    wb.start()
    model = Model()
    injected: Counter[str] = Counter()
    took: list[float] = []

    def ready() -> None:
        """Wait until the daemon (maybe just restarted) has converged once: until
        then it has not installed its signal handlers, and SIGHUP's or SIGTERM's
        default action would kill it. systemd likewise sends no reload before
        READY=1 (Type=notify)."""
        wb.wait_log(r"INFO converged: ", 15)

    def do(kind: str, i: int | None) -> None:
        if kind == "far_down":
            assert i is not None
            lab.far_down(i)
            model.far_up[i] = False
        elif kind == "far_up":
            assert i is not None
            lab.far_up(i)
            model.far_up[i] = True
        elif kind == "delete_slave":
            assert i is not None
            lab.delete_slave(i)
            model.exists[i] = False
        elif kind == "recreate_slave":
            assert i is not None
            lab.recreate_slave(i)  # with its far end up
            model.exists[i] = model.far_up[i] = True
        elif kind == "qdisc_del":
            assert i is not None
            # The model says attached; within a burst the daemon may not have
            # attached it yet, so the kernel may refuse: that is fine.
            tc("qdisc", "del", "dev", SLAVES[i], "root", check=False)
        elif kind == "route_del":
            ip("route", "del", "default", "dev", "teql0", check=False)
        elif kind == "sighup":
            ready()  # at once, unless restarted in this batch
            wb.send(signal.SIGHUP)
        elif kind == "sigkill_restart":
            wb.kill()
            assert wb.proc is not None and wb.proc.returncode == -signal.SIGKILL
            # Not waiting for readiness: the faults after it in the batch hit a
            # daemon that is starting up (dump, then events on top).
            wb.start(wait_converged=False)
        else:  # pragma: no cover
            raise AssertionError(kind)

    def fail(round_no: int, batch: list[str], problem: str) -> NoReturn:
        pytest.fail(
            f"chaos seed {SEED}, round {round_no}/{ROUNDS}, faults [{', '.join(batch)}]: {problem}\n"
            f"replay: WB_CHAOS_SEED={SEED} WB_CHAOS_ROUNDS={round_no}\n"
            f"--- daemon log (tail) ---\n{log_tail(wb)}",
            pytrace=False,
        )

    def check(ipr: IPRoute, round_no: int, batch: list[str]) -> float:
        expected = model.expected()
        if any(b == "sigkill_restart" for b in batch):
            # The window is for converging, not for starting Python: a daemon
            # start in the guest took 3.6 to 12 s when measured on 2026-12-01
            # (1 to 3 s before). Its first convergence counts from its start.
            try:
                wb.wait_log(r"INFO converged: ", START_S)
            except AssertionError as e:
                fail(round_no, batch, f"the restarted daemon did not converge within {START_S:g}s: {e}")
        t, got = wait_converged(ipr, expected)
        if t is None:
            missing = expected.attached - got.attached
            if (_SEVEN and "sigkill_restart" in batch and missing and got.attached <= expected.attached
                    and with_carrier(ipr, missing)):
                # Only this symptom is the open finding (docs/caveats.md): any
                # other failure on 7.x fails the test.
                pytest.xfail(f"open finding on kernel 7.x (docs/caveats.md): after a SIGKILL restart, "
                             f"{sorted(missing)} up with carrier but not attached; chaos seed {SEED}, round "
                             f"{round_no}\n--- daemon log (tail) ---\n{log_tail(wb)}")
            fail(round_no, batch, f"no convergence within {CONVERGE_S:g}s\n"
                                  f"  expected: {expected}\n  actual:   {got}")
        if not alive(wb):
            code = wb.proc.returncode if wb.proc is not None else None
            fail(round_no, batch, f"the daemon died (exit status {code})")
        return t

    started = time.monotonic()
    with IPRoute() as ipr:
        check(ipr, 0, ["start"])
        for round_no in range(1, ROUNDS + 1):
            batch: list[str] = []
            for _ in range(rng.randint(1, 4)):
                options = model.choices()
                kinds = [k for k in WEIGHTS if options[k]]
                kind = rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
                arg = rng.choice(options[kind])
                batch.append(f"{kind}({arg})" if arg is not None else kind)
                try:
                    do(kind, arg)
                except Exception as e:  # noqa: BLE001 - reported with the round
                    fail(round_no, batch, f"injecting {batch[-1]} failed: {e!r}")
                injected[kind] += 1
            t = check(ipr, round_no, batch)
            took.append(t)
            print(f"round {round_no:3d}: {t * 1000:6.0f} ms  [{', '.join(batch)}]  -> {model.expected()}")
        elapsed = time.monotonic() - started

        assert wb.run("plan").returncode == 0
        if any(model.line_up(i) for i in range(N_SLAVES)):
            assert lab.ping(10, interval=0.05) == 10, f"no traffic through teql0 with {model.expected()}"

        # Heal every line: all four attached again, and each one carries traffic.
        heal = []
        for i in range(N_SLAVES):
            if not model.exists[i]:
                do("recreate_slave", i)
                heal.append(f"recreate_slave({i})")
            elif not model.far_up[i]:
                do("far_up", i)
                heal.append(f"far_up({i})")
        check(ipr, ROUNDS + 1, heal or ["none"])
    tx = [lab.tx_packets(s) for s in SLAVES]
    assert lab.ping(20, interval=0.02) == 20
    grown = [lab.tx_packets(s) - before for s, before in zip(SLAVES, tx)]
    assert min(grown) >= 2, f"round-robin over all four lines, got {grown}"
    ready()
    code, _ = wb.stop()
    assert code == 0

    ms = sorted(t * 1000 for t in took)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    print(f"chaos summary: seed {SEED}, {ROUNDS} rounds in {elapsed:.1f}s, "
          f"{sum(injected.values())} faults: "
          + ", ".join(f"{k} {injected[k]}" for k in WEIGHTS)
          + f"\nconvergence: median {statistics.median(ms):.0f} ms, p90 {p90:.0f} ms, max {ms[-1]:.0f} ms")
