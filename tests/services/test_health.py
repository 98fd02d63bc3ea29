"""The health report against real databases and brokers, healthy and broken."""

import logging

import redis
from sqlalchemy import text

from app.core.broker import redis_client
from app.core.database import make_engine
from app.services.health import HealthThresholds, check_system_health

RELAXED = HealthThresholds(disk_warn_percent=99.8, disk_critical_percent=99.9,
                           memory_warn_percent=99.9, load_warn_per_cpu=1000)


def ping(engine):
    def probe():
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    return probe


def test_healthy_system_reports_ok(sa_engine, broker_client, tmp_path):
    report = check_system_health(ping_database=ping(sa_engine), ping_broker=broker_client.ping,
                                 ping_beat=lambda: {"leader": "vm:1:ab leads"}, data_paths=[tmp_path], thresholds=RELAXED)
    by_name = {check.name: check for check in report.checks}
    assert set(by_name) == {"database", "broker", "beat", "disk", "memory", "load"}
    assert by_name["beat"].detail["leader"] == "vm:1:ab leads"
    assert by_name["database"].status == "ok" and by_name["broker"].status == "ok"
    assert report.as_dict()["checks"][0]["detail"]["latency_ms"] >= 0


def test_unreachable_database_and_broker_are_critical_and_logged(tmp_path, caplog):
    dead_db = make_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none?connect_timeout=1")
    dead_broker = redis.Redis(unix_socket_path=str(tmp_path / "no.sock"), socket_connect_timeout=1)
    with caplog.at_level(logging.WARNING, logger="app.services.health"):
        report = check_system_health(ping_database=ping(dead_db), ping_broker=dead_broker.ping,
                                     ping_beat=dead_broker.ping, data_paths=[tmp_path], thresholds=RELAXED)
    assert report.status == "critical"
    assert {c.name for c in report.degraded} >= {"database", "broker", "beat"}
    assert "OperationalError" in report.checks[0].detail["error"]
    assert any("system health critical" in r.getMessage() for r in caplog.records)


def test_full_disk_threshold_degrades_the_report(tmp_path, embedded_broker, settings):
    tight = HealthThresholds(disk_warn_percent=0.001, disk_critical_percent=0.002,
                             memory_warn_percent=99.9, load_warn_per_cpu=1000)
    client = redis_client(settings.broker_url)
    report = check_system_health(ping_database=lambda: None, ping_broker=client.ping, ping_beat=lambda: None,
                                 data_paths=[tmp_path], thresholds=tight)
    disk = next(c for c in report.checks if c.name == "disk")
    assert disk.status == "critical" and report.status == "critical"
