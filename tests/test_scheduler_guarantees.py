"""The scheduler in this process on the embedded broker and SQLite: every schedule type the admin
offers, one record per due run (compare-and-set), no publish without the lease (fenced push),
overlap accounting that a lost message cannot poison, and stock's defaults for admin-made jobs."""

import logging
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django_celery_beat.models import (ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask,
                                       SolarSchedule)
from sqlalchemy import update

from app.core.database import session_scope
from app.models import JobRun
from app.scheduling.job_policy import STOCK_POLICY, JobPolicy
from app.scheduling.leader import LEASE_KEY
from app.scheduling.models import SchedulePolicy
from app.scheduling.overview import job_rows
from app.scheduling.scheduler import DueRun, ScheduleTableScheduler
from tests.support.inprocess_beat import history, published, tick_until_idle

SHANGHAI = ZoneInfo("Asia/Shanghai")
QUEUE = "low_priority"
TASK = "app.tasks.file_tasks.cleanup_temp_files"
SENT = {"sending", "sent", "running", "success"}


def now() -> datetime:
    return datetime.now(SHANGHAI)


def admin_job(name: str, **schedule) -> PeriodicTask:
    """A periodic task as the admin makes one: no policy saved for it."""
    return PeriodicTask.objects.create(name=name, task=TASK, queue=QUEUE, **schedule)


def every(seconds: int) -> IntervalSchedule:
    return IntervalSchedule.objects.create(every=seconds, period=IntervalSchedule.SECONDS)


def shanghai_sunset() -> SolarSchedule:
    return SolarSchedule.objects.get_or_create(event="sunset", latitude=31.23, longitude=121.47)[0]


def overdue(name: str, by: timedelta) -> None:
    PeriodicTask.objects.filter(name=name).update(last_run_at=now() - by)


@pytest.fixture
def beat(celery_app, beat_broker, clean_history):
    """A leading scheduler over the jobs the test made in the database (no beat_schedules.py jobs)."""
    schedulers = []

    def start() -> ScheduleTableScheduler:
        scheduler = ScheduleTableScheduler(app=celery_app, table={})
        assert scheduler.leadership.renew() or schedulers, "the first scheduler leads"
        schedulers.append(scheduler)
        return scheduler

    yield start
    for scheduler in schedulers:
        scheduler.close()


def test_a_clocked_one_off_is_sent_once_at_its_time_then_disabled(beat):
    at = (now() - timedelta(seconds=2)).replace(microsecond=0)
    admin_job("one-off", clocked=ClockedSchedule.objects.create(clocked_time=at), one_off=True)
    scheduler = beat()
    tick_until_idle(scheduler)
    tick_until_idle(scheduler)

    [run] = history()["one-off"]
    assert run.outcome in SENT and run.task_id and run.due_at == at
    job = PeriodicTask.objects.get(name="one-off")
    assert not job.enabled and job.last_run_at is None, "disabled once sent, as stock does"
    tick_until_idle(beat())
    assert len(history()["one-off"]) == 1


def test_a_due_solar_entry_is_sent_and_the_other_jobs_go_on(beat):
    admin_job("sunset", solar=shanghai_sunset())
    admin_job("every-minute", interval=every(60))
    for name in ("sunset", "every-minute"):
        overdue(name, timedelta(days=3))
    tick_until_idle(beat())

    runs = history()
    [sunset], [interval] = runs["sunset"], runs["every-minute"]
    assert sunset.outcome in SENT and interval.outcome in SENT
    assert now() - timedelta(days=1) < sunset.due_at <= now(), "the latest sunset, missed runs coalesced"


def test_a_row_that_cannot_be_scheduled_is_named_and_skipped(beat, caplog):
    broken = CrontabSchedule.objects.create(minute="0", timezone=SHANGHAI)
    CrontabSchedule.objects.filter(pk=broken.pk).update(minute="61")  # as a bad import or a raw SQL edit leaves it
    admin_job("broken", crontab=broken)
    admin_job("fine", interval=every(60))
    overdue("fine", timedelta(hours=1))
    with caplog.at_level(logging.ERROR, logger="app.scheduling.scheduler"):
        tick_until_idle(beat())
    assert "broken cannot be scheduled (ValueError" in caplog.text
    assert [run.outcome in SENT for run in history()["fine"]] == [True]


def test_every_schedule_type_is_listed_with_its_next_run(beat):
    admin_job("one-off", clocked=ClockedSchedule.objects.create(clocked_time=now() + timedelta(hours=1)),
              one_off=True)
    admin_job("sunset", solar=shanghai_sunset())
    admin_job("every-minute", interval=every(60))
    rows = {row.name: row for row in job_rows({})}
    assert all(row.next_run for row in rows.values())
    assert f"{rows['one-off'].next_run.astimezone(SHANGHAI):%Y-%m-%d %H}" == f"{now() + timedelta(hours=1):%Y-%m-%d %H}"


def due_run(scheduler: ScheduleTableScheduler, name: str, due_at: datetime) -> DueRun:
    entry = scheduler.schedule[name]
    return DueRun(entry, due_at, scheduler.policy_of(name))


def test_of_two_beats_that_read_the_same_row_only_one_records_the_run(beat):
    admin_job("every-ten", interval=every(10))
    overdue("every-ten", timedelta(seconds=35))
    first, second = beat(), beat()
    first_view, second_view = first.schedule["every-ten"], second.schedule["every-ten"]
    assert first_view.stored_last_run_at == second_view.stored_last_run_at

    assert first._record(due_run(first, "every-ten", now()), now()) == "sending"
    assert second._record(due_run(second, "every-ten", now()), now()) is None, "the row moved on"
    assert second._record(due_run(second, "every-ten", now() + timedelta(seconds=10)), now()) is None, \
        "not under another due time either"
    assert len(history()["every-ten"]) == 1


def test_a_beat_that_lost_the_lease_after_recording_never_publishes(beat, beat_broker):
    admin_job("every-ten", interval=every(10))
    overdue("every-ten", timedelta(seconds=15))
    leader = beat()
    run = due_run(leader, "every-ten", now())
    assert leader._record(run, now()) == "sending"
    beat_broker.set(LEASE_KEY, "another-host:1:ab", px=60_000)  # it stalled; a standby took over

    with published() as messages:
        assert leader._publish(run, leader.producer), "given up, not retried"
    assert run.task_id not in messages
    [row] = history()["every-ten"]
    assert row.outcome == "lost" and "lost the lease" in row.summary


def test_an_admin_made_job_sends_every_due_run_unless_its_saved_policy_says_skip(beat):
    job = admin_job("admin-made", interval=every(10))
    overdue("admin-made", timedelta(seconds=25))
    scheduler = beat()
    assert scheduler.policy_of("admin-made") == STOCK_POLICY
    first = due_run(scheduler, "admin-made", now() - timedelta(seconds=10))
    assert scheduler._record(first, now()) == "sending"  # recorded, not started: unfinished
    scheduler._reload_schedule()
    assert scheduler._record(due_run(scheduler, "admin-made", now()), now()) == "sending", "stock sends it"

    SchedulePolicy.objects.create(task=job, overlap="skip")
    scheduler._reload_schedule()
    assert scheduler.policy_of("admin-made") == JobPolicy(overlap="skip", missed="run_once", grace=300, jitter=0)
    later = due_run(scheduler, "admin-made", now() + timedelta(seconds=10))
    assert scheduler._record(later, now() + timedelta(seconds=10)) == "skipped_overlap"


def test_a_run_that_never_started_blocks_its_job_for_at_most_one_more_run(beat):
    admin_job("every-ten", interval=every(10))
    PeriodicTask.objects.filter(name="every-ten").update(last_run_at=datetime(2026, 1, 1, 10, tzinfo=SHANGHAI))
    SchedulePolicy.objects.create(task=PeriodicTask.objects.get(name="every-ten"), overlap="skip")
    scheduler = beat()
    start = datetime(2026, 1, 1, 10, 0, 10, tzinfo=SHANGHAI)

    def record(periods: int) -> str:
        scheduler._reload_schedule()
        due = start + timedelta(seconds=10 * periods)
        return scheduler._record(due_run(scheduler, "every-ten", due), due + timedelta(seconds=0.5))

    assert record(0) == "sending"  # its message is lost: it never starts
    assert record(1) == "skipped_overlap", "it may still be queued"
    assert record(2) == "sending", "a lost message costs one more run, not the time limit"


def test_a_started_run_blocks_until_its_time_limit_from_its_start(beat):
    admin_job("every-ten", interval=every(10))
    SchedulePolicy.objects.create(task=PeriodicTask.objects.get(name="every-ten"), overlap="skip")
    overdue("every-ten", timedelta(seconds=15))
    scheduler = beat()
    first = due_run(scheduler, "every-ten", now() - timedelta(minutes=15))
    assert scheduler._record(first, now()) == "sending"

    def started(ago: timedelta) -> None:
        with session_scope() as session:
            session.execute(update(JobRun).where(JobRun.task_id == first.task_id)
                            .values(outcome="running", started_at=datetime.now(SHANGHAI) - ago))
        scheduler._reload_schedule()

    started(timedelta(minutes=9))  # within the 600 s hard limit
    assert scheduler._record(due_run(scheduler, "every-ten", now()), now()) == "skipped_overlap"
    started(timedelta(minutes=11))  # past it: the worker killed it, or it is lost
    assert scheduler._record(due_run(scheduler, "every-ten", now() + timedelta(seconds=10)), now()) == "sending"


def ticks_until(scheduler, done, limit=10) -> None:
    for _ in range(limit):
        scheduler.tick()
        if done():
            return
    raise AssertionError(f"not done after {limit} ticks")


def test_disabling_a_job_clears_its_last_run_and_beat_never_writes_it_back(beat):
    admin_job("warm-up", interval=every(3600))
    overdue("warm-up", timedelta(days=1))
    scheduler = beat()
    ticks_until(scheduler, lambda: "warm-up" in history())  # stock syncs its entries after a first send
    admin_job("nightly", crontab=CrontabSchedule.objects.create(minute=str(now().minute), hour=str(now().hour),
                                                                timezone=SHANGHAI))
    overdue("nightly", timedelta(days=1))
    ticks_until(scheduler, lambda: "nightly" in history())
    scheduler.tick()

    job = PeriodicTask.objects.get(name="nightly")
    job.enabled = False
    job.save()  # as the admin's toggle does, while beat runs
    scheduler.tick()  # beat notices the change (stock saves its entries then)
    scheduler.close()
    assert PeriodicTask.objects.get(name="nightly").last_run_at is None

    job.enabled = True
    job.save()
    tick_until_idle(beat())
    assert len(history()["nightly"]) == 1, "re-enabled after its slot: not fired at once"


def test_a_job_whose_message_cannot_be_built_is_given_up_and_the_others_go_out(beat, caplog):
    admin_job("bad-kwargs", interval=every(60))
    PeriodicTask.objects.filter(name="bad-kwargs").update(kwargs="[1, 2]")  # JSON, but not keyword arguments
    admin_job("fine", interval=every(60))
    for name in ("bad-kwargs", "fine"):
        overdue(name, timedelta(hours=1))
    with caplog.at_level(logging.ERROR, logger="app.scheduling.scheduler"):
        tick_until_idle(beat())
    runs = history()
    assert [run.outcome for run in runs["bad-kwargs"]] == ["lost"], "not retried as if the broker were down"
    assert "bad-kwargs due" in caplog.text and "unreachable" not in caplog.text
    assert [run.outcome in SENT for run in runs["fine"]] == [True]
