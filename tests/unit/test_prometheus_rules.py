"""The Prometheus side against the metrics contract: alerting rules and their
unit tests (with promtool), the example scrape configuration, the Grafana
dashboard, and docs/metrics.md.

promtool comes with Debian's `prometheus` package; the tests that need it are
skipped, with the reason, where it is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "packaging" / "prometheus"
RULES = PROM / "wanbalanced.rules.yml"
RULES_TEST = PROM / "wanbalanced.rules.test.yml"
SCRAPE_CONFIG = PROM / "prometheus.example.yml"
DASHBOARD = PROM / "grafana-dashboard.json"
METRICS_MD = REPO / "docs" / "metrics.md"

#: The metrics wanbalanced exports: name -> (type, labels). This is the
#: contract the daemon, the rules, the dashboard and docs/metrics.md share.
SLAVE = ("equalizer", "slave")
EQUALIZER = ("equalizer",)
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wanbalanced_slave_attached": ("gauge", SLAVE),
    "wanbalanced_slave_carrier": ("gauge", SLAVE),
    "wanbalanced_slave_up": ("gauge", SLAVE),
    "wanbalanced_slave_state": ("gauge", (*SLAVE, "state")),
    "wanbalanced_slave_state_since_timestamp_seconds": ("gauge", SLAVE),
    "wanbalanced_slave_routes": ("gauge", SLAVE),
    "wanbalanced_slave_routes_configured": ("gauge", SLAVE),
    "wanbalanced_equalizer_all_down_route": ("gauge", (*EQUALIZER, "type")),
    "wanbalanced_slave_flap_penalty": ("gauge", SLAVE),
    "wanbalanced_slave_held_down_until_timestamp_seconds": ("gauge", SLAVE),
    "wanbalanced_probe_sent_total": ("counter", ("slave", "target")),
    "wanbalanced_probe_lost_total": ("counter", ("slave", "target")),
    "wanbalanced_probe_rtt_seconds": ("histogram", ("slave", "target")),
    "wanbalanced_slave_attaches_total": ("counter", SLAVE),
    "wanbalanced_slave_detaches_total": ("counter", SLAVE),
    "wanbalanced_slave_transmit_bytes_total": ("counter", SLAVE),
    "wanbalanced_slave_receive_bytes_total": ("counter", SLAVE),
    "wanbalanced_slave_transmit_packets_total": ("counter", SLAVE),
    "wanbalanced_slave_receive_packets_total": ("counter", SLAVE),
    "wanbalanced_slave_transmit_errors_total": ("counter", SLAVE),
    "wanbalanced_slave_receive_errors_total": ("counter", SLAVE),
    "wanbalanced_slave_transmit_drops_total": ("counter", SLAVE),
    "wanbalanced_slave_receive_drops_total": ("counter", SLAVE),
    "wanbalanced_equalizer_attached_slaves": ("gauge", EQUALIZER),
    "wanbalanced_equalizer_configured_slaves": ("gauge", EQUALIZER),
    "wanbalanced_equalizer_up": ("gauge", EQUALIZER),
    "wanbalanced_equalizer_default_route": ("gauge", EQUALIZER),
    "wanbalanced_equalizer_mtu_bytes": ("gauge", EQUALIZER),
    "wanbalanced_equalizer_mtu_changes_total": ("counter", EQUALIZER),
    "wanbalanced_equalizer_reopens_total": ("counter", EQUALIZER),
    "wanbalanced_failover_seconds": ("histogram", ("action",)),
    "wanbalanced_faults": ("gauge", ("kind",)),
    "wanbalanced_config_last_reload_successful": ("gauge", ()),
    "wanbalanced_config_last_reload_success_timestamp_seconds": ("gauge", ()),
    "wanbalanced_netlink_resyncs_total": ("counter", ()),
    "wanbalanced_drift_repairs_total": ("counter", ("kind",)),
    "wanbalanced_build_info": ("gauge", ("version",)),
}

#: Series Prometheus itself makes that the rules and the dashboard may use.
PROMETHEUS_SERIES = {"up"}

ALERTS = {
    "WanbalancedDown",
    "WanbalancedEqualizerNoSlaves",
    "WanbalancedSlaveDown",
    "WanbalancedSlaveFlapping",
    "WanbalancedReloadFailed",
    "WanbalancedFault",
}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def contract_name(series: str) -> str | None:
    """The contract metric a series name belongs to (a histogram's _bucket,
    _sum and _count belong to the histogram), or None."""
    if series in METRICS or series in PROMETHEUS_SERIES:
        return series
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and METRICS.get(base, ("", ()))[0] == "histogram":
            return base
    return None


# -- metric names in PromQL ----------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
# by (...), without (...), on (...), ignoring (...), group_left (...), group_right (...)
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "and", "or", "unless", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects. Enough PromQL for the
    expressions here: strings, label matchers, ranges and label lists are
    removed first; what is left that is not a function call, keyword, number
    or Grafana variable is a metric name."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(r"\1", text)
    names = set()
    for m in _IDENT.finditer(text):
        start, end = m.span()
        if start > 0 and (text[start - 1] in "$." or text[start - 1].isdigit()):
            continue  # $variable, 1e3, 0.5
        if m[0].lower() in _KEYWORDS or re.match(r"\s*(\(|by\b|without\b)", text[end:]):
            continue  # keyword, function call, `sum by (...) (...)`
        names.add(m[0])
    return names


def test_metric_names_parser() -> None:
    assert metric_names('histogram_quantile(0.9, sum by (le, action) '
                        '(rate(wanbalanced_failover_seconds_bucket{instance=~"$instance"}[$__rate_interval])))') \
        == {"wanbalanced_failover_seconds_bucket"}
    assert metric_names('up{job="x"} == 0 or absent(up{job="x"})') == {"up"}
    assert metric_names("a * on (x) group_left (y) b offset 5m > bool 1e3") == {"a", "b"}
    assert contract_name("wanbalanced_failover_seconds_count") == "wanbalanced_failover_seconds"
    assert contract_name("wanbalanced_faults_count") is None


def assert_contract_names(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric name found in {expr!r}"
    unknown = sorted(n for n in names if contract_name(n) is None)
    assert not unknown, f"{where}: {unknown} not in the metrics contract: {expr!r}"


# -- the rules -------------------------------------------------------------------

def rule_exprs() -> dict[str, str]:
    """alert name -> expr, from the rules file (one-line exprs by convention)."""
    text = RULES.read_text(encoding="utf-8")
    pairs = re.findall(r"^\s*- alert: (\w+)\n(?:\s*#.*\n)*\s*expr: (.+)$", text, re.MULTILINE)
    assert len(pairs) == len(re.findall(r"^\s*- (?:alert|record):", text, re.MULTILINE)), \
        "every rule's expr must be on the line after its name (comments between are fine)"
    return dict(pairs)


def test_rules_define_the_alerts_on_contract_metrics() -> None:
    exprs = rule_exprs()
    assert set(exprs) == ALERTS
    for alert, expr in exprs.items():
        assert_contract_names(f"{RULES.name}: {alert}", expr)


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    text = RULES_TEST.read_text(encoding="utf-8")
    cases = re.findall(r"^\s*alertname: (\w+)\s*\n\s*exp_alerts:(.*)$", text, re.MULTILINE)
    assert len(cases) == text.count("alertname:"), "each alertname must be followed by its exp_alerts"
    firing = {name for name, rest in cases if rest.strip() == ""}
    silent = {name for name, rest in cases if rest.strip() == "[]"}
    assert firing == ALERTS, f"not tested firing: {sorted(ALERTS - firing)}"
    assert silent == ALERTS, f"not tested silent: {sorted(ALERTS - silent)}"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package: prometheus)")
    return path


def run_promtool(*args: str, cwd: Path = PROM) -> str:
    proc = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_promtool_check_rules() -> None:
    out = run_promtool("check", "rules", RULES.name)
    assert f"SUCCESS: {len(ALERTS)} rules found" in out, out


def test_promtool_test_rules() -> None:
    out = run_promtool("test", "rules", RULES_TEST.name)
    assert "SUCCESS" in out, out


def test_promtool_check_example_config() -> None:
    out = run_promtool("check", "config", SCRAPE_CONFIG.name)
    assert "is valid prometheus config file syntax" in out, out
    assert "job_name: wanbalanced" in SCRAPE_CONFIG.read_text(encoding="utf-8")


# -- the dashboard ---------------------------------------------------------------

def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))  # panels inside collapsed rows


def datasources(node: object) -> Iterator[object]:
    """Every "datasource" value anywhere in the dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasources(item)


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every panel target."""
    out = []
    for p in panels(dashboard()["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t.get('refId')}", t["expr"]))
    return out


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
    assert d["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert {"equalizer", "slave"} <= set(variables)
    ids = [p["id"] for p in panels(d["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    kinds = {p["type"] for p in panels(d["panels"])}
    assert "state-timeline" in kinds
    # Every data source reference is the import input, nothing hard-wired.
    refs = list(datasources(d))
    assert refs and all(r == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for r in refs), refs
    for p in panels(d["panels"]):
        if p["type"] != "row":
            assert p.get("targets"), f"panel {p['title']!r} has no query"


def test_dashboard_uses_contract_metrics_only() -> None:
    exprs = dashboard_exprs()
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert m, f"variable {v['name']}: expected label_values(selector, label), got {query!r}"
            exprs.append((f"variable {v['name']}", m[1]))
            assert m[2] in ("instance", *(label for _, labels in METRICS.values() for label in labels))
    used = set()
    for where, expr in exprs:
        assert_contract_names(where, expr)
        used |= {contract_name(n) for n in metric_names(expr)}
    for needed in ("wanbalanced_slave_state", "wanbalanced_equalizer_attached_slaves",
                   "wanbalanced_slave_transmit_bytes_total", "wanbalanced_failover_seconds",
                   "wanbalanced_slave_detaches_total", "wanbalanced_config_last_reload_successful",
                   "wanbalanced_faults"):
        assert needed in used, f"the dashboard does not show {needed}"


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression as Prometheus would receive it."""
    for var, value in (("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "6h")):
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses each panel query, as a recording rule."""
    tool = promtool()
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(dashboard_exprs()):
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(grafana_to_promql(expr))}"]
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = subprocess.run([tool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- docs/metrics.md -------------------------------------------------------------

_DOC_NAME = re.compile(r"\bwanbalanced_[a-z0-9_]+")
# A reference table row: | `name` | type | `label`, `label` | ... |
_DOC_ROW = re.compile(r"^\|\s*`(wanbalanced_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", re.MULTILINE)


def test_metrics_doc_names_are_the_contract() -> None:
    text = METRICS_MD.read_text(encoding="utf-8")
    mentioned = set(_DOC_NAME.findall(text))
    unknown = sorted(n for n in mentioned if contract_name(n) is None)
    assert not unknown, f"docs/metrics.md names metrics outside the contract: {unknown}"
    rows = {m[1]: (m[2], tuple(re.findall(r"`(\w+)`", m[3]))) for m in _DOC_ROW.finditer(text)}
    missing = sorted(set(METRICS) - set(rows))
    assert not missing, f"docs/metrics.md has no reference row for {missing}"
    wrong = {n: row for n, row in rows.items() if METRICS.get(n) != row}
    assert not wrong, f"docs/metrics.md: type or labels differ from the contract: {wrong}"


def doc_promql() -> list[str]:
    """The expressions in docs/metrics.md's promql blocks: runs of lines
    between comment or blank lines."""
    exprs = []
    for block in re.findall(r"^```promql\n(.*?)^```", METRICS_MD.read_text(encoding="utf-8"), re.M | re.S):
        current: list[str] = []
        for line in [*block.splitlines(), ""]:
            if line.strip() and not line.lstrip().startswith("#"):
                current.append(line)
            elif current:
                exprs.append("\n".join(current))
                current = []
    return exprs


def test_metrics_doc_queries_parse(tmp_path: Path) -> None:
    exprs = doc_promql()
    assert len(exprs) >= 10
    for expr in exprs:
        assert_contract_names("docs/metrics.md", expr)
    tool = promtool()
    lines = ["groups:", "  - name: docs", "    rules:"]
    for i, expr in enumerate(exprs):
        lines += [f"      - record: docs:query_{i}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "docs.rules.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = subprocess.run([tool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_metrics_doc_lists_the_alerts() -> None:
    text = METRICS_MD.read_text(encoding="utf-8")
    missing = sorted(a for a in ALERTS if f"`{a}`" not in text)
    assert not missing, f"docs/metrics.md does not describe {missing}"
