"""Alert incidents on SQLite and PostgreSQL, delivered to a real group robot on 127.0.0.1."""

import json
import logging
import re
import socket
import threading
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from celery.schedules import crontab
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from app.core.database import make_engine, session_scope
from app.models import AlertIncident, Delivery, JobRun
from app.services.alerts import (
    alert_disk,
    alert_health,
    alert_job_outcome,
    alert_message,
    alert_timeouts,
    clear_incident,
    overdue_references,
    raise_incident,
    robot_body,
)
from app.services.disk import check_disk_space
from app.services.health import HealthThresholds, check_system_health
from app.services.stalls import ScheduledJob, check_stalls, find_stall, interval_at, next_fire

NOW = datetime(2026, 5, 6, 2, 3, tzinfo=timezone.utc)  # Wednesday 10:03 in Shanghai
WECOM_PATH = "/cgi-bin/webhook/send?key=SECRET-KEY-93"
DINGTALK_PATH = "/robot/send?access_token=SECRET-TOKEN-42"


class Robot:
    """A WeCom/DingTalk group robot on 127.0.0.1: records every message, answers as told."""

    def __init__(self):
        self.messages: list[dict] = []
        self.status = 200
        self.answer = {"errcode": 0, "errmsg": "ok"}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self):
        robot = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                robot.messages.append({"path": self.path, "json": json.loads(body)})
                answer = json.dumps(robot.answer).encode()
                self.send_response(robot.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_):
                pass

        return Handler

    def url(self, path: str = WECOM_PATH) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def contents(self) -> list[str]:
        return [m["json"]["markdown"].get("content") or m["json"]["markdown"]["text"] for m in self.messages]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def robot():
    server = Robot()
    yield server
    server.close()


def incidents(factory, key=None) -> list[AlertIncident]:
    with session_scope(factory) as session:
        query = select(AlertIncident).order_by(AlertIncident.id)
        return list(session.scalars(query if key is None else query.where(AlertIncident.key == key)))


def test_one_alert_per_incident_however_often_it_is_raised(factory, robot):
    for minutes in range(4):
        raise_incident(factory, "health:broker", "critical", f"refused, run {minutes}",
                       NOW + timedelta(minutes=minutes), webhook_url=robot.url())
    assert len(robot.messages) == 1
    [incident] = incidents(factory)
    assert incident.opened_at == NOW and incident.notified_at == NOW
    assert incident.last_seen_at == NOW + timedelta(minutes=3) and incident.summary == "refused, run 3"
    assert incident.closed_at is None


def test_recovery_is_sent_once_and_a_new_incident_alerts_again(factory, robot):
    url = robot.url()
    raise_incident(factory, "job:backup-database", "critical", "pg_dump failed", NOW, webhook_url=url)
    clear_incident(factory, "job:backup-database", NOW + timedelta(minutes=90), webhook_url=url)
    clear_incident(factory, "job:backup-database", NOW + timedelta(minutes=95), webhook_url=url)
    raise_incident(factory, "job:backup-database", "critical", "pg_dump failed again", NOW + timedelta(days=1),
                   webhook_url=url)
    alert, recovery, second = robot.contents()
    assert "【告警 ALERT】" in alert and "pg_dump failed" in alert
    assert "【告警恢复 RESOLVED】job:backup-database" in recovery and "1h30m" in recovery
    assert "2026-05-06 11:33:00" in recovery, "cleared at 03:33 UTC, shown in Shanghai time"
    assert "pg_dump failed again" in second
    first, reopened = incidents(factory)
    assert first.closed_at == first.recovery_notified_at == NOW + timedelta(minutes=90)
    assert reopened.closed_at is None and reopened.notified_at == NOW + timedelta(days=1)


def test_clearing_with_nothing_open_sends_nothing(factory, robot):
    assert clear_incident(factory, "health:load", NOW, webhook_url=robot.url()) is None
    assert robot.messages == [] and incidents(factory) == []


def test_wecom_message_is_markdown_content_in_chinese_and_english(factory, robot):
    raise_incident(factory, "disk:/srv/var", "warning", "disk warn: 85% used", NOW, webhook_url=robot.url())
    [message] = robot.messages
    assert message["path"] == WECOM_PATH
    assert message["json"]["msgtype"] == "markdown" and set(message["json"]["markdown"]) == {"content"}
    content = message["json"]["markdown"]["content"]
    for words in ("警告 WARNING", "disk:/srv/var", "disk warn: 85% used", "2026-05-06 10:03:00 (Asia/Shanghai)",
                  socket.gethostname()):
        assert words in content


def test_dingtalk_message_has_title_and_text(factory, robot):
    raise_incident(factory, "health:database", "critical", "database critical: OperationalError", NOW,
                   webhook_url=robot.url(DINGTALK_PATH))
    [message] = robot.messages
    markdown = message["json"]["markdown"]
    assert message["json"]["msgtype"] == "markdown" and set(markdown) == {"title", "text"}
    assert markdown["title"] == "【告警 ALERT】health:database"
    assert "严重 CRITICAL" in markdown["text"] and "OperationalError" in markdown["text"]


def test_the_robot_format_follows_the_host():
    message = alert_message(AlertIncident(key="k", severity="warning", summary="s", opened_at=NOW))
    wecom = robot_body("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc", message)
    dingtalk = robot_body("https://oapi.dingtalk.com/robot/send?access_token=abc", message)
    assert set(wecom["markdown"]) == {"content"}
    assert set(dingtalk["markdown"]) == {"title", "text"}


@pytest.mark.parametrize("refusal", [{"answer": {"errcode": 93000, "errmsg": "invalid webhook url"}},
                                     {"status": 500}])
def test_an_alert_the_robot_refused_is_sent_again_by_the_next_raise_once(factory, robot, refusal, caplog):
    robot.answer = refusal.get("answer", robot.answer)
    robot.status = refusal.get("status", 200)
    raise_incident(factory, "health:memory", "warning", "memory warn", NOW, webhook_url=robot.url())
    assert len(robot.messages) == 1 and incidents(factory)[0].notified_at is None
    robot.answer, robot.status = {"errcode": 0, "errmsg": "ok"}, 200
    for minutes in (5, 10):
        raise_incident(factory, "health:memory", "warning", "memory warn", NOW + timedelta(minutes=minutes),
                       webhook_url=robot.url())
    assert len(robot.messages) == 2, "re-sent once, then never again"
    assert incidents(factory)[0].notified_at == NOW + timedelta(minutes=5)
    assert "alert not delivered to http://127.0.0.1" in caplog.text


def test_the_robot_key_never_reaches_the_log(factory, robot, caplog):
    robot.answer = {"errcode": 93000, "errmsg": "invalid webhook url, key SECRET-KEY-93 unknown"}
    raise_incident(factory, "health:broker", "critical", "refused", NOW, webhook_url=robot.url())
    closed = Robot()
    closed.close()  # a port nobody listens on any more
    raise_incident(factory, "health:disk", "critical", "full", NOW, webhook_url=closed.url())
    assert caplog.text.count("alert not delivered") == 2
    assert "SECRET-KEY-93" not in caplog.text


def test_without_a_webhook_every_alert_and_recovery_is_logged(factory, robot, caplog):
    caplog.set_level(logging.INFO, logger="app.alerts")
    raise_incident(factory, "stall:cleanup-logs", "critical", "no success for 15 d", NOW)
    raise_incident(factory, "stall:cleanup-logs", "critical", "no success for 15 d", NOW + timedelta(minutes=5))
    clear_incident(factory, "stall:cleanup-logs", NOW + timedelta(hours=2))
    lines = [r.getMessage() for r in caplog.records if r.name == "app.alerts"]
    assert lines == ["ALERT critical stall:cleanup-logs: no success for 15 d",
                     "RECOVERED stall:cleanup-logs after 2h00m: no success for 15 d"]
    [incident] = incidents(factory)
    assert incident.notified_at is None and incident.closed_at is not None


def test_text_from_data_never_forges_a_log_line(factory, robot, caplog):
    caplog.set_level(logging.INFO, logger="app.alerts")
    forged = "ref-1\nERROR app.alerts RECOVERED everything"
    raise_incident(factory, "delivery:" + forged, "warning", forged, NOW)
    clear_incident(factory, "delivery:" + forged, NOW + timedelta(hours=1))
    messages = [r.getMessage() for r in caplog.records if r.name == "app.alerts"]
    assert len(messages) == 2 and not any("\n" in message for message in messages)


def test_concurrent_raises_open_one_incident_and_send_one_alert(factory, robot):
    raisers = 6
    barrier = threading.Barrier(raisers)

    def raise_at_once():
        barrier.wait()
        raise_incident(factory, "health:broker", "critical", "refused", webhook_url=robot.url())

    threads = [threading.Thread(target=raise_at_once) for _ in range(raisers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(incidents(factory)) == 1
    assert len(robot.messages) == 1


def test_an_unreachable_incident_store_still_alerts(robot, tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    unmigrated = sessionmaker(bind=engine)
    assert raise_incident(unmigrated, "health:database", "critical", "no such table", NOW,
                          webhook_url=robot.url()) is None
    assert clear_incident(unmigrated, "health:database", NOW, webhook_url=robot.url()) is None
    [content] = robot.contents()
    assert "health:database" in content and "repeated every check" in content
    engine.dispose()


# What the checks raise


def thresholds(percent: float) -> HealthThresholds:
    return HealthThresholds(disk_warn_percent=percent, disk_critical_percent=percent + 0.01,
                            memory_warn_percent=percent, load_warn_per_cpu=10_000)


def test_health_report_raises_each_failing_component_and_clears_it_when_it_passes(factory, robot, tmp_path):
    def check(percent, broker_error=None):
        def ping_broker():
            if broker_error:
                raise ConnectionRefusedError(broker_error)

        return check_system_health(ping_database=lambda: None, ping_broker=ping_broker, ping_beat=lambda: None,
                                   data_paths=[tmp_path],
                                   thresholds=thresholds(percent))

    alert_health(factory, check(0.01, broker_error="[Errno 111] Connection refused"), robot.url(), NOW)
    opened = {i.key: i for i in incidents(factory)}
    assert set(opened) == {"health:broker", "health:disk", "health:memory"}
    assert opened["health:broker"].severity == "critical" and "Connection refused" in opened["health:broker"].summary
    assert opened["health:disk"].severity == "critical" and "% used" in opened["health:disk"].summary
    assert opened["health:memory"].severity == "warning"
    alert_health(factory, check(99.98), robot.url(), NOW + timedelta(minutes=5))
    assert all(i.closed_at == NOW + timedelta(minutes=5) for i in incidents(factory))
    assert len(robot.messages) == 6, "three alerts, three recoveries"


def test_disk_check_raises_per_volume_and_clears(factory, robot, tmp_path):
    alert_disk(factory, check_disk_space([tmp_path], 0.01, 0.02), robot.url(), NOW)
    [incident] = incidents(factory)
    assert incident.key == f"disk:{tmp_path.resolve()}" and incident.severity == "critical"
    alert_disk(factory, check_disk_space([tmp_path], 99.98, 99.99), robot.url(), NOW + timedelta(hours=1))
    assert incidents(factory)[0].closed_at is not None and len(robot.messages) == 2


def test_timeouts_raise_with_references_and_a_run_timing_out_none_clears(factory, robot):
    with session_scope(factory) as session:
        session.add_all([Delivery(reference=f"CASE-{n}", recipient_name="张三", phone="13800138000", address="北京市",
                                  carrier="ems", tracking_number=f"EM{n:09d}CN", deadline=date(2026, 5, n))
                         for n in range(1, 8)])
    with session_scope(factory) as session:
        references = overdue_references(session, date(2026, 5, 7), limit=3)
    assert references == ["CASE-1", "CASE-2", "CASE-3"]
    alert_timeouts(factory, 6, references, robot.url(), NOW)
    [incident] = incidents(factory)
    assert incident.key == "deliveries:timeout" and "6 件" in incident.summary
    assert "CASE-1, CASE-2, CASE-3 …" in incident.summary
    alert_timeouts(factory, 0, [], robot.url(), NOW + timedelta(minutes=30))
    assert incidents(factory)[0].closed_at is not None and len(robot.messages) == 2


def test_a_jobs_final_failure_raises_and_its_next_success_clears(factory, robot):
    alert_job_outcome(factory, "backup-database", "failure", RuntimeError("pg_dump exited 1"), robot.url(), NOW)
    [incident] = incidents(factory)
    assert incident.key == "job:backup-database" and "RuntimeError: pg_dump exited 1" in incident.summary
    alert_job_outcome(factory, "backup-database", "success", {"bytes": 1}, robot.url(), NOW + timedelta(days=1))
    assert incidents(factory)[0].closed_at is not None and len(robot.messages) == 2


# Stalls


SHANGHAI_SUNDAY_3AM = datetime(2026, 5, 9, 19, 0, tzinfo=timezone.utc)  # Saturday in UTC


def test_fire_times_and_intervals_are_in_shanghai_time():
    every_five, hourly = crontab(minute="*/5"), crontab(minute=20)
    weekly = crontab(minute=30, hour=3, day_of_week="sun")
    assert next_fire(every_five, NOW) == datetime(2026, 5, 6, 2, 5, tzinfo=timezone.utc)
    assert next_fire(hourly, NOW) == datetime(2026, 5, 6, 2, 20, tzinfo=timezone.utc)
    assert next_fire(weekly, SHANGHAI_SUNDAY_3AM) == datetime(2026, 5, 9, 19, 30, tzinfo=timezone.utc)
    assert interval_at(every_five, NOW) == timedelta(minutes=5)
    assert interval_at(hourly, NOW) == timedelta(hours=1)
    assert interval_at(weekly, SHANGHAI_SUNDAY_3AM) == timedelta(days=7)


@pytest.mark.parametrize(("schedule", "interval"), [
    (crontab(minute="*/5"), timedelta(minutes=5)),
    (crontab(minute=20), timedelta(hours=1)),
    (crontab(minute=30, hour=3, day_of_week="sun"), timedelta(days=7)),
])
def test_a_job_stalls_once_its_last_success_is_older_than_twice_its_interval(schedule, interval):
    job = ScheduledJob("job", schedule, scheduled_since=NOW - timedelta(days=365))
    assert find_stall(job, NOW - 2 * interval, NOW) is None
    stall = find_stall(job, NOW - 2 * interval - timedelta(seconds=1), NOW)
    assert stall.interval == interval and not stall.never_succeeded


def test_a_job_that_never_succeeded_has_two_intervals_from_being_scheduled():
    fresh = ScheduledJob("cleanup-logs", crontab(minute=30, hour=3, day_of_week="sun"), scheduled_since=NOW)
    assert find_stall(fresh, None, NOW + timedelta(days=14)) is None
    stall = find_stall(fresh, None, NOW + timedelta(days=14, minutes=1))
    assert stall.never_succeeded and stall.since == NOW
    assert "never succeeded since scheduled at 2026-05-06 10:03" in stall.summary


def test_check_stalls_raises_and_clears_from_the_run_history(factory, robot):
    jobs = [ScheduledJob("check-pending-tasks", crontab(minute="*/5"), NOW - timedelta(days=30)),
            ScheduledJob("check-disk-space", crontab(minute=20), NOW - timedelta(days=30))]
    with session_scope(factory) as session:
        session.add_all([
            JobRun(name="check-pending-tasks", task_id="a", started_at=NOW - timedelta(minutes=31),
                   finished_at=NOW - timedelta(minutes=30), outcome="success"),
            JobRun(name="check-pending-tasks", task_id="b", started_at=NOW - timedelta(minutes=5),
                   finished_at=NOW - timedelta(minutes=4), outcome="failure"),
            JobRun(name="check-disk-space", task_id="c", started_at=NOW - timedelta(minutes=44),
                   finished_at=NOW - timedelta(minutes=43), outcome="success"),
        ])
    assert check_stalls(factory, jobs, NOW, robot.url()) == ["check-pending-tasks"]
    assert [i.key for i in incidents(factory)] == ["stall:check-pending-tasks"]
    with session_scope(factory) as session:
        session.add(JobRun(name="check-pending-tasks", task_id="d", started_at=NOW + timedelta(minutes=1),
                           finished_at=NOW + timedelta(minutes=2), outcome="success"))
    assert check_stalls(factory, jobs, NOW + timedelta(minutes=5), robot.url()) == []
    assert incidents(factory)[0].closed_at == NOW + timedelta(minutes=5)
    assert len(robot.messages) == 2


def test_a_stall_of_a_job_no_longer_scheduled_is_cleared(factory, robot):
    job = ScheduledJob("cleanup-logs", crontab(minute=30, hour=3, day_of_week="sun"), NOW - timedelta(days=30))
    check_stalls(factory, [job], NOW, robot.url())
    assert incidents(factory)[0].closed_at is None
    check_stalls(factory, [], NOW + timedelta(minutes=5), robot.url())
    assert incidents(factory)[0].closed_at is not None


# What data cannot do to a message

HOSTILE_REFERENCE = "[点此处理](http://e.vil/x)"
HOSTILE_TEXT = ("**紧急** `rm -rf` <font color=\"warning\">已签收</font> <@all> @all ![p](http://e.vil/p.png) $x$\n"
                "# 新标题\r\n- 列表项\n> 引用 \\[公式\\] ~~删~~ &lt;b&gt;")
MARKUP = re.compile(r"\]\(|\*\*|`|<|>|@|\$|\\|~~|&|://")


def values(content: str) -> list[str]:
    """The heading's text and each `**label**: value` line's value, checking the message has only those lines."""
    heading, *lines = content.split("\n\n")
    assert heading.startswith("### ") and "\n" not in heading, heading
    found = [heading.removeprefix("### ")]
    for line in lines:
        label, separator, value = line.partition("**: ")
        assert line.startswith("**") and separator and "\n" not in line, line
        found.append(value)
    return found


def markup_in(content: str) -> list[str]:
    return [markup for value in values(content) for markup in MARKUP.findall(value)]


@pytest.mark.parametrize("path", [WECOM_PATH, DINGTALK_PATH])
def test_a_hostile_reference_arrives_as_text_not_as_a_link(factory, robot, path):
    alert_timeouts(factory, 1, [HOSTILE_REFERENCE], robot.url(path), NOW)
    [content] = robot.contents()
    assert markup_in(content) == []
    assert "［点此处理］(http：//e.vil/x)" in content, "escaped, not deleted: it still reads as the reference"


@pytest.mark.parametrize("path", [WECOM_PATH, DINGTALK_PATH])
def test_no_value_from_data_changes_the_messages_structure(factory, robot, path):
    alert_job_outcome(factory, HOSTILE_TEXT, "failure", RuntimeError(HOSTILE_TEXT), robot.url(path), NOW)
    alert_job_outcome(factory, HOSTILE_TEXT, "success", {}, robot.url(path), NOW + timedelta(minutes=5))
    alert, recovery = robot.contents()
    for content in (alert, recovery):
        assert markup_in(content) == [], content
        assert len(values(content)) == 6, "a heading and five fields, however many lines the data had"
        assert "＊＊紧急＊＊ ｀rm -rf｀ ＜font color=\"warning\"＞已签收＜/font＞ ＜＠all＞ ＠all" in content
        assert " ⏎ # 新标题 ⏎ - 列表项 ⏎ ＞ 引用 ＼［公式＼］ ～～删～～ ＆lt;b＆gt;" in content
    assert incidents(factory)[0].key == f"job:{HOSTILE_TEXT}", "the incident keeps the text as it was"
    if path == DINGTALK_PATH:
        assert MARKUP.findall(robot.messages[0]["json"]["markdown"]["title"]) == []


def test_a_webhook_send_leaves_no_key_in_the_logs(factory, robot, caplog):
    caplog.set_level(logging.DEBUG)
    raise_incident(factory, "health:broker", "critical", "refused", NOW, webhook_url=robot.url())
    raise_incident(factory, "health:database", "critical", "refused", NOW, webhook_url=robot.url(DINGTALK_PATH))
    assert len(robot.messages) == 2
    assert "SECRET-KEY-93" not in caplog.text and "SECRET-TOKEN-42" not in caplog.text
