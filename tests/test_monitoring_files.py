"""deploy/'s Grafana dashboard and Prometheus alert rules use only metrics the admin's /metrics exports."""

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "celery-beat-dashboard.json"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alert-rules.yml"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "scrape-config.yml"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
            "inf", "nan"}
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
ALERTS = {"CeleryBeatJobOverdue", "CeleryBeatJobLatenessHigh", "CeleryBeatNoLeader"}


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects: words that are not functions, keywords, labels
    (in braces or in by/on/... lists), strings, durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if match.group().lower() not in KEYWORDS and not text[match.end():].lstrip().startswith("("):
            names.add(match.group())
    return names


def test_metric_names_are_read_from_promql():
    assert metric_names('histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{job=~"$job"}[5m]))) > 1e3') == \
        {"a_bucket"}
    assert metric_names("(b and on (identity, host) c == 1) offset 5m or absent(d)") == {"b", "c", "d"}


@pytest.fixture(scope="module")
def exported(django_db, embedded_broker) -> set[str]:
    """Every sample name /metrics can carry, read from the families it writes (with or without samples)."""
    from app.scheduling.metrics import render

    return {family.name + suffix for family in text_string_to_metric_families(render().decode())
            for suffix in SUFFIXES[family.type]}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(METRIC, LABEL)
            expressions.append(variable["query"]["query"].removeprefix("label_values(").split(",")[0])
    return expressions


def test_the_dashboard_uses_only_exported_metrics(exported):
    expressions = dashboard_expressions()
    used = set().union(*map(metric_names, expressions))
    assert used and used <= exported, sorted(used - exported)
    assert {name.removesuffix("_total").removesuffix("_bucket") for name in used} >= {
        "celery_beat_job_runs", "celery_beat_job_lateness_seconds", "celery_beat_job_next_due_timestamp_seconds",
        "celery_beat_job_last_success_timestamp_seconds", "celery_beat_leader", "celery_beat_heartbeat_age_seconds",
        "celery_queue_messages"}, "a panel for every metric"


def test_the_alert_rules_use_only_exported_metrics_and_are_complete(exported):
    rules = [rule for group in yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))["groups"]
             for rule in group["rules"]]
    assert ALERTS <= {rule["alert"] for rule in rules}
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used and used <= exported, (rule["alert"], sorted(used - exported))
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


def test_the_scrape_config_keeps_the_job_label_and_sends_the_token():
    [job] = yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))
    assert job["metrics_path"] == "/metrics" and job["honor_labels"] is True
    assert job["authorization"]["type"] == "Bearer"
