"""Incidents opened and closed by the real tasks, through the real worker, on the embedded default."""

import time
from datetime import date, timedelta

import pytest
from sqlalchemy import delete, select

from app.core.database import session_scope
from app.models import AlertIncident, Delivery, JobRun
from app.models.base import utcnow

RESULT_TIMEOUT = 60


def run(celery_app, name):
    return celery_app.send_task(name).get(timeout=RESULT_TIMEOUT)


def eventually(read, timeout=10):
    """What `read` returns once it is truthy (the worker records a job's end just after its result)."""
    deadline = time.monotonic() + timeout
    while not (value := read()):
        assert time.monotonic() < deadline, "not recorded in time"
        time.sleep(0.05)
    return value


def job_outcome(task_id) -> str | None:
    with session_scope() as session:
        return session.scalar(select(JobRun.outcome).where(JobRun.task_id == task_id, JobRun.finished_at.is_not(None)))


def run_as_job(celery_app, name, job) -> str:
    """Run task `name` as beat sends periodic job `job`; its recorded outcome."""
    result = celery_app.send_task(name, headers={"periodic_task_name": job})
    result.get(timeout=RESULT_TIMEOUT, propagate=False)
    return eventually(lambda: job_outcome(result.id))


def incident(key) -> AlertIncident | None:
    """The newest incident of `key`."""
    with session_scope() as session:
        return session.scalar(select(AlertIncident).where(AlertIncident.key == key)
                              .order_by(AlertIncident.id.desc()).limit(1))


@pytest.fixture
def no_incidents(django_db):
    with session_scope() as session:
        session.execute(delete(AlertIncident))
    yield
    with session_scope() as session:
        session.execute(delete(AlertIncident))


@pytest.fixture
def overdue_delivery(no_incidents):
    with session_scope() as session:
        session.add(Delivery(reference="CASE-LATE-7", recipient_name="张三", phone="13800138000", address="北京市",
                             carrier="ems", tracking_number="EMLATE777CN", deadline=date.today() - timedelta(days=3)))
    yield
    with session_scope() as session:
        session.execute(delete(Delivery).where(Delivery.reference == "CASE-LATE-7"))


@pytest.fixture
def job_name(no_incidents):
    """A periodic job name of this test's own; its run history is removed afterwards."""
    name = "test-alert-job"
    yield name
    with session_scope() as session:
        session.execute(delete(JobRun).where(JobRun.name == name))


@pytest.fixture
def stalled_job(job_name):
    """A */5 job in the schedule table, scheduled an hour ago by beat, that never ran."""
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    from app.scheduling.models import CodeDefinedJob

    every_five, _ = CrontabSchedule.objects.get_or_create(minute="*/5", hour="*", day_of_week="*", day_of_month="*",
                                                          month_of_year="*", timezone="Asia/Shanghai")
    PeriodicTask.objects.create(name=job_name, task="app.tasks.file_tasks.check_disk_space", crontab=every_five)
    CodeDefinedJob.objects.create(name=job_name, fingerprint="test")
    CodeDefinedJob.objects.filter(name=job_name).update(synced_at=utcnow() - timedelta(hours=1))
    yield job_name
    PeriodicTask.objects.filter(name=job_name).delete()
    CodeDefinedJob.objects.filter(name=job_name).delete()


def test_check_timeout_tasks_opens_the_timeout_incident_and_a_quiet_run_closes_it(worker, celery_app,
                                                                                   overdue_delivery):
    assert run(celery_app, "app.tasks.tracking_tasks.check_timeout_tasks")["timed_out"] == 1
    opened = incident("deliveries:timeout")
    assert opened.closed_at is None and "CASE-LATE-7" in opened.summary
    assert run(celery_app, "app.tasks.tracking_tasks.check_timeout_tasks")["timed_out"] == 0
    assert incident("deliveries:timeout").closed_at is not None


def test_health_check_opens_a_stall_and_closes_it_after_a_success(worker, celery_app, stalled_job):
    assert stalled_job in run(celery_app, "app.tasks.tracking_tasks.system_health_check")["stalled_jobs"]
    assert "never succeeded" in incident(f"stall:{stalled_job}").summary
    assert run_as_job(celery_app, "app.tasks.file_tasks.check_disk_space", stalled_job) == "success"
    assert stalled_job not in run(celery_app, "app.tasks.tracking_tasks.system_health_check")["stalled_jobs"]
    assert incident(f"stall:{stalled_job}").closed_at is not None


def test_a_periodic_jobs_final_failure_is_an_incident_and_a_retry_is_not(worker, celery_app, job_name):
    assert run_as_job(celery_app, "tests.fail_once", job_name) == "success"
    assert incident(f"job:{job_name}") is None, "a retry that then succeeds is no incident"
    assert run_as_job(celery_app, "tests.fail_permanently", job_name) == "failure"
    opened = eventually(lambda: incident(f"job:{job_name}"))
    assert "PermanentError: no such tracking number" in opened.summary
    assert run_as_job(celery_app, "tests.fail_once", job_name) == "success"
    eventually(lambda: incident(f"job:{job_name}").closed_at)
