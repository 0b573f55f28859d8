"""The Grafana dashboard and the Prometheus alert rules: every query names metrics the job really writes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from job.run.monitor import METRICS
from tests.support.jobs import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "aweber-job.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"

# PromQL words that look like names but are not metrics; functions are told apart by the "(" after them.
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_IDENTIFIER = re.compile(r"(?<![0-9.A-Za-z_:])[A-Za-z_:][A-Za-z0-9_:]*")
_RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (strings, label matchers, ranges and groupings removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if match.group(0) in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(match.group(0))
    return names


def test_the_expression_parser_finds_metrics_and_skips_the_rest() -> None:
    """The checks below are only as good as this: it must see a misspelt name and ignore functions and labels."""
    assert metric_names('count_values("exit_code", aweber_job_connection_exit_code)') == {
        "aweber_job_connection_exit_code"}
    assert metric_names("sum by (kind) (rate(aweber_job_http_requests{kind=\"api\"}[1d] offset 1d))") == {
        "aweber_job_http_requests"}
    assert metric_names("time() - aweber_job_last_sucess_timestamp_seconds > 26 * 3600") == {
        "aweber_job_last_sucess_timestamp_seconds"}
    assert metric_names("up == 1 or on(job) absent(node_load1)") == {"up", "node_load1"}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(panel["title"], target["expr"]) for panel in _panels(dashboard["panels"])
            for target in panel.get("targets", [])]


def test_the_dashboard_is_a_grafana_dashboard_with_a_query_in_every_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard["panels"]):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


def test_every_dashboard_query_names_only_metrics_the_job_writes() -> None:
    exprs = dashboard_exprs()
    read = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        assert names <= set(METRICS), f"panel {title!r}: {sorted(names - set(METRICS))} are not written by the job"
        read |= names
    # What the dashboard is for: exit codes per connection, token expiry, last success, subscribers, requests,
    # rate limits.
    assert {
        "aweber_job_connection_exit_code", "aweber_job_exit_code", "aweber_job_access_token_expiry_timestamp_seconds",
        "aweber_job_last_success_timestamp_seconds", "aweber_job_new_subscribers", "aweber_job_http_requests",
        "aweber_job_rate_limited", "aweber_job_pacing_wait_seconds",
    } <= read


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert set(document) == {"groups"}
    names = [group["name"] for group in document["groups"]]
    assert len(names) == len(set(names))
    rules = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        rules += group["rules"]
    return rules


def test_the_alert_rules_have_the_shape_promtool_reads() -> None:
    rules = _alert_rules()
    assert rules
    for rule in rules:
        assert set(rule) <= _RULE_KEYS, sorted(set(rule) - _RULE_KEYS)
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert _DURATION.match(str(rule.get("for", "0m")))
        for field in ("labels", "annotations"):
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in rule.get(field, {}).items())
        assert rule["annotations"]["summary"]


def test_every_alert_names_only_metrics_the_job_writes() -> None:
    rules = {rule["alert"]: rule["expr"] for rule in _alert_rules()}
    for alert, expr in rules.items():
        names = metric_names(expr)
        assert names and names <= set(METRICS), f"{alert}: {sorted(names - set(METRICS))}"
    assert "aweber_job_last_success_timestamp_seconds" in metric_names(rules["AWeberJobNoRecentSuccess"])
    assert "26 * 3600" in rules["AWeberJobNoRecentSuccess"]
    assert metric_names(rules["AWeberJobNeedsLogin"]) == {"aweber_job_connection_exit_code", "aweber_job_exit_code"}


promtool = shutil.which("promtool")


@pytest.mark.skipif(promtool is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_checks_the_rules_and_their_unit_tests_pass(tmp_path: Path) -> None:
    assert promtool is not None
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True,
                            timeout=60, cwd=ALERT_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _monitoring_section() -> str:
    return (REPO / "docs" / "monitoring.md").read_text(encoding="utf-8")


def test_every_metric_the_job_writes_is_in_the_monitoring_table() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \|", _monitoring_section(), re.MULTILINE)
    assert rows, "no metric table in docs/monitoring.md"
    assert set(rows) == set(METRICS)


def test_the_monitoring_page_shows_the_alert_rules_as_shipped() -> None:
    section = _monitoring_section()
    for rule in _alert_rules():
        assert rule["alert"] in section
        assert rule["expr"] in section, f"docs/monitoring.md shows another expression for {rule['alert']}"
    assert "AWEBER_PUSHGATEWAY_URL" in section
