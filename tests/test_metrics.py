"""The admin's /metrics after a real beat (in this process) and the session's worker ran a few jobs:
parsed by prometheus_client's own parser, its counts are the run history's; no login, no metrics."""

from collections import Counter
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from django_celery_beat.models import PeriodicTask
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString
from sqlalchemy import delete, insert

from app.core.database import SessionFactory, session_scope
from app.models import JobRun
from app.scheduling.actions import entry_call, send_now
from app.scheduling.run_totals import LATENESS_BUCKETS, SETTLE, RunTotals
from app.scheduling.scheduler import ScheduleTableScheduler
from app.services.job_runs import UNFINISHED
from tests.support.admin_server import logged_in_client, serving_admin
from tests.support.inprocess_beat import history, tick_until_idle
from tests.support.waiting import wait_until
from tests.test_scheduler_policies import entry, half_an_hour_ago_minute, scheduler_after_downtime

TOKEN = "a-token-for-the-tests-0123456789"
QUEUES = {"high_priority", "tracking", "receipt", "screenshot", "low_priority"}


def samples(text: str) -> dict[str, list]:
    """Every sample by its name, as Prometheus' text parser reads them."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def by_job(found: dict[str, list], name: str, job: str, **labels) -> float | None:
    values = [s.value for s in found.get(name, []) if s.labels.get("job") == job
              and all(s.labels.get(key) == value for key, value in labels.items())]
    return values[0] if values else None


@pytest.fixture
def token(monkeypatch, settings):
    """METRICS_TOKEN set, as the admin reads it."""
    with_token = settings.model_copy(update={"metrics_token": TOKEN})
    monkeypatch.setattr("app.scheduling.views.get_settings", lambda: with_token)


@pytest.fixture(scope="module")
def admin_base(django_db):
    with serving_admin() as base:
        yield base


def test_metrics_count_what_the_run_history_holds(worker, celery_app, beat_broker, clean_history, admin_base, token):
    minute = half_an_hour_ago_minute()
    table = {"metrics-ok": entry(minute, overlap="allow"),
             "metrics-fails": {**entry(minute, overlap="allow"), "task": "tests.fail_permanently"},
             "metrics-missed": entry(minute, missed="skip", grace=60)}
    scheduler = scheduler_after_downtime(celery_app, table)
    tick_until_idle(scheduler)
    tick_until_idle(scheduler)  # writes the publish times
    send_now(celery_app, entry_call("metrics-ok", table["metrics-ok"])).get(timeout=30)
    wait_until(lambda: all(run.outcome not in UNFINISHED for runs in history(table).values() for run in runs)
               and len(history(table).get("metrics-ok", [])) == 2, 30, "every run finished")

    overdue_since = datetime.now(timezone.utc) - timedelta(hours=3)  # as if beat had stopped sending it
    PeriodicTask.objects.filter(name="metrics-missed").update(last_run_at=overdue_since)
    scraped = httpx.get(f"{admin_base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    scheduler.close()
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    found = samples(scraped.text)

    runs = history(table)
    for job, job_runs in runs.items():
        counted = Counter(run.outcome for run in job_runs)
        for outcome in ("success", "failure", "lost", "skipped_overlap", "skipped_missed"):
            assert by_job(found, "celery_beat_job_runs_total", job, outcome=outcome) == counted[outcome], \
                (job, outcome)
        sent = [run for run in job_runs if run.sent_at is not None]
        assert by_job(found, "celery_beat_job_lateness_seconds_count", job) == len(sent)
        for bound in LATENESS_BUCKETS:
            assert by_job(found, "celery_beat_job_lateness_seconds_bucket", job, le=floatToGoString(bound)) == \
                sum(run.lateness_seconds <= bound for run in sent)
        assert by_job(found, "celery_beat_job_lateness_seconds_sum", job) == pytest.approx(
            sum(run.lateness_seconds for run in sent))
    assert Counter(run.outcome for run in runs["metrics-ok"]) == {"success": 2}, "the catch-up and the run sent by hand"
    assert [run.outcome for run in runs["metrics-fails"]] == ["failure"]
    assert [run.outcome for run in runs["metrics-missed"]] == ["skipped_missed"]
    assert by_job(found, "celery_beat_job_lateness_seconds_count", "metrics-ok") == 1, "a run sent by hand has no due time"
    finished = max(run.finished_at for run in runs["metrics-ok"])
    assert by_job(found, "celery_beat_job_last_success_timestamp_seconds", "metrics-ok") == pytest.approx(
        finished.timestamp())
    assert by_job(found, "celery_beat_job_last_success_timestamp_seconds", "metrics-fails") is None

    next_due = {s.labels["job"]: s.value for s in found["celery_beat_job_next_due_timestamp_seconds"]}
    assert set(table) <= set(next_due)
    assert datetime.now(timezone.utc).timestamp() - 60 < next_due["metrics-ok"] < (
        datetime.now(timezone.utc) + timedelta(hours=1, minutes=1)).timestamp()
    assert overdue_since.timestamp() < next_due["metrics-missed"] <= (overdue_since + timedelta(hours=1)).timestamp(), \
        "an overdue job's next due time is in the past (the overdue alert's `time() - next due`)"

    leaders = {s.labels["identity"]: s.value for s in found["celery_beat_leader"]}
    assert leaders[scheduler.leadership.identity] == 1 and sum(leaders.values()) == 1
    ages = {s.labels["identity"]: s.value for s in found["celery_beat_heartbeat_age_seconds"]}
    assert 0 <= ages[scheduler.leadership.identity] < 30
    assert {s.labels["queue"] for s in found["celery_queue_messages"]} == QUEUES


def test_metrics_need_a_staff_login_or_the_token(admin_base, token):
    assert httpx.get(f"{admin_base}/metrics", timeout=30).status_code == 401
    wrong = httpx.get(f"{admin_base}/metrics", headers={"Authorization": "Bearer not-the-token-0123456789"}, timeout=30)
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    with logged_in_client(admin_base) as client:
        assert client.get("/metrics").status_code == 200


def test_metrics_refuse_every_token_when_no_token_is_set(admin_base):
    for header in ("Bearer", "Bearer None", f"Bearer {TOKEN}"):
        assert httpx.get(f"{admin_base}/metrics", headers={"Authorization": header}, timeout=30).status_code == 401


def _add_runs(engine, name: str, outcomes: list[str], finished_at):
    with engine.begin() as connection:
        connection.execute(insert(JobRun), [
            {"name": name, "outcome": outcome, "due_at": finished_at, "sent_at": finished_at, "lateness_seconds": 2.0,
             "finished_at": None if outcome in UNFINISHED else finished_at} for outcome in outcomes])


def test_run_totals_keep_settled_runs_that_the_retention_deletes_and_add_new_ones(sa_engine):
    from app.core.migrations import upgrade_app_schema

    upgrade_app_schema(sa_engine)
    now = datetime.now(timezone.utc)
    long_ago = now - SETTLE - timedelta(days=100)
    _add_runs(sa_engine, "a-job", ["success", "failure", "success"], long_ago)
    _add_runs(sa_engine, "a-job", ["success"], now - SETTLE - timedelta(minutes=1))
    totals = RunTotals()
    assert totals.read(sa_engine, now)["a-job"].outcomes == {"success": 3, "failure": 1}

    with sa_engine.begin() as connection:  # the retention cleanup
        connection.execute(delete(JobRun).where(JobRun.finished_at < now - timedelta(days=90)))
    _add_runs(sa_engine, "a-job", ["success", "running"], now)
    job = totals.read(sa_engine, now)["a-job"]
    assert job.outcomes == {"success": 4, "failure": 1}, "a counter never goes down; the running run is not counted"
    assert job.late_count == 6 and job.buckets[LATENESS_BUCKETS.index(5.0)] == 6
    assert RunTotals().read(sa_engine, now)["a-job"].outcomes == {"success": 2}, "a new process counts the table"
