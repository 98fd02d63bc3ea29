"""`history`, `pause`, `resume` and `run` as operators run them (click's runner, in this process), on a
real beat (in this process) and the session's worker."""

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from django_celery_beat.models import PeriodicTask

from app.cli import cli
from app.scheduling.scheduler import ScheduleTableScheduler
from app.scheduling.sync import drift, sync_schedule_table
from tests.support.inprocess_beat import history
from tests.support.waiting import wait_until
from tests.test_schedule_page import TABLE, TASK, tick_for_periods, tick_until

JOB = "page-every-second"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def runs(name: str = JOB) -> list:
    return history([name]).get(name, [])


@pytest.fixture
def beat(celery_app, beat_broker, clean_history):
    scheduler = ScheduleTableScheduler(app=celery_app, table=TABLE)
    yield scheduler
    scheduler.close()


def test_pause_stops_the_runs_survives_the_sync_and_resume_brings_them_back(worker, beat):
    tick_until(beat, lambda: runs(), "a first run")
    paused = invoke("pause", JOB)
    assert paused.exit_code == 0 and f"{JOB} paused" in paused.output
    assert "already paused" in invoke("pause", JOB).output
    before = len(runs())
    tick_for_periods(beat, 2)
    assert len(runs()) == before, "no run while paused"

    changed = {**TABLE, JOB: {**TABLE[JOB], "schedule": timedelta(seconds=2)}}
    sync_schedule_table(TABLE)
    sync_schedule_table(changed)  # a deploy that changes the entry applies it, and keeps the pause
    task = PeriodicTask.objects.get(name=JOB)
    assert not task.enabled and task.interval.every == 2
    assert drift(task, changed[JOB]) == [], "a pause is no drift"
    listed = {row["name"]: row for row in json.loads(invoke("list", "--json").output)}
    assert listed[JOB]["enabled"] is False and listed[JOB]["next_run"] is None

    resumed = invoke("resume", JOB)
    assert resumed.exit_code == 0 and f"{JOB} resumed" in resumed.output
    tick_until(beat, lambda: len(runs()) > before, "a run after resume")


def test_history_shows_the_latest_runs_newest_first_and_run_adds_one_sent_by_hand(worker, beat):
    tick_until(beat, lambda: len([r for r in runs() if r.finished_at]) >= 3, "three finished runs")
    shown = json.loads(invoke("history", JOB, "--last", "2", "--json").output)
    recorded = sorted(runs(), key=lambda run: run.due_at, reverse=True)
    assert [run["task_id"] for run in shown] == [run.task_id for run in recorded[:2]]
    assert shown[0]["due_at"].endswith("+08:00") and shown[0]["lateness_seconds"] is not None

    table = invoke("history", JOB).output
    assert table.splitlines()[0].split() == ["due", "sent", "started", "finished", "outcome", "late", "task", "id"]
    assert all(run.task_id in table for run in recorded[:20])

    ran = CliRunner().invoke(cli, ["run", "cleanup-temp-files"], catch_exceptions=False)
    assert ran.exit_code == 0, ran.output
    task_id = ran.stderr.split(" as ")[1].split(";")[0]
    [by_hand] = json.loads(invoke("history", "cleanup-temp-files", "--json").output)
    assert by_hand["task_id"] == task_id and by_hand["due_at"] is None and by_hand["outcome"] == "success"
    assert by_hand["name"] == "cleanup-temp-files" and TASK == "app.tasks.file_tasks.cleanup_temp_files"


def test_unknown_jobs_are_refused_in_one_line(django_db):
    for command in ("history", "pause", "resume"):
        refused = CliRunner().invoke(cli, [command, "no-such-job"])
        assert refused.exit_code == 1 and refused.output.startswith("error: no job 'no-such-job'"), refused.output
