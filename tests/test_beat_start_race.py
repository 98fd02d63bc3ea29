"""Beats started in the same second on a fresh database, run for real.

Each starting beat migrates and then syncs the schedule table into django-celery-beat's tables;
on an empty table a row lock locks nothing, so without a lock of their own two syncs both
create the same CrontabSchedule and the later one stops its beat (MultipleObjectsReturned).
Five real beats start together on a fresh database a few times (one project copy serves all
rounds); the sync race itself is run ten times over with five syncs at once on empty tables,
each on its own PostgreSQL connection, which is where the race lives and is cheap to repeat.
"""

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from app.core.broker import redis_client
from app.scheduling.leader import LEASE_KEY, beat_heartbeats
from tests.support.project import Project
from tests.support.services import postgres_database, redis_test_url
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

BEATS = 5
ROUNDS = {"postgresql": 3, "sqlite": 1}  # SQLite: Django begins IMMEDIATE, writers queue anyway
SYNC_ROUNDS = 10

RACING_SYNCS = """
import json, sys, threading
from app.tasks.celery_app import app
from django.db import connection
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from app.core.migrations import migrate_all
from app.scheduling.models import CodeDefinedJob
from app.scheduling.sync import sync_schedule_table
from app.tasks.beat_schedules import BEAT_SCHEDULE

migrate_all()
failures, duplicates = [], []
for _ in range(int(sys.argv[1])):
    for model in (PeriodicTask, CrontabSchedule, IntervalSchedule, CodeDefinedJob):
        model.objects.all().delete()
    start = threading.Barrier(int(sys.argv[2]))

    def sync():
        try:
            start.wait()
            sync_schedule_table(BEAT_SCHEDULE)
        except Exception as error:
            failures.append(repr(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=sync) for _ in range(start.parties)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with connection.cursor() as cursor:
        for query in sys.argv[3:]:
            cursor.execute(query)
            duplicates += cursor.fetchall()
print(json.dumps({"failures": failures, "duplicates": duplicates}, default=str))
"""

DUPLICATES = {
    "crontab": "SELECT minute, hour, day_of_week, day_of_month, month_of_year, timezone, COUNT(*) "
               "FROM django_celery_beat_crontabschedule "
               "GROUP BY minute, hour, day_of_week, day_of_month, month_of_year, timezone HAVING COUNT(*) > 1",
    "interval": "SELECT every, period, COUNT(*) FROM django_celery_beat_intervalschedule "
                "GROUP BY every, period HAVING COUNT(*) > 1",
}


def start_beats(project: Project, tag: str) -> list[tuple[subprocess.Popen, Path, Path]]:
    root = project.root
    beats = []
    for number in range(BEATS):
        log, console = root / "logs" / f"beat-{tag}-{number}.log", root / "logs" / f"beat-{tag}-{number}.out"
        with console.open("w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "beat", "--loglevel", "info",
                 "--logfile", str(log), "--pidfile", str(root / "var" / f"beat-{number}.pid")],
                cwd=root, env=project.env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        beats.append((process, log, console))
    return beats


def output_of(beats) -> str:
    return "\n".join(f"--- beat {process.pid} (exit {process.poll()}):\n{path.read_text(errors='replace')}"
                     for process, log, console in beats for path in (log, console) if path.exists())


def run_round(project: Project, tag: str, duplicates) -> None:
    client = redis_client(project.env["CELERY_BROKER_URL"], socket_timeout=2)
    client.flushdb()
    beats = start_beats(project, tag)
    try:
        def all_ticking():
            exited = [process.pid for process, _, _ in beats if process.poll() is not None]
            assert not exited, f"round {tag}: beats {exited} exited while starting\n{output_of(beats)}"
            return len(beat_heartbeats(client)) == BEATS

        wait_until(all_ticking, 120, f"round {tag}: all {BEATS} beats tick", lambda: output_of(beats))
        heartbeats = beat_heartbeats(client)
        holder = client.get(LEASE_KEY).decode()
        assert [beat.identity for beat in heartbeats if beat.leading] == [holder], heartbeats
        assert int(holder.split(":")[1]) in {process.pid for process, _, _ in beats}
        assert all(process.poll() is None for process, _, _ in beats), output_of(beats)
        assert duplicates() == {"crontab": [], "interval": []}
    finally:
        for process, _, _ in beats:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _, _ in beats:
            process.wait(30)
    text = output_of(beats)
    assert "Traceback" not in text and "MultipleObjectsReturned" not in text, text
    assert text.count("schedule table synced") == BEATS


def postgres_rounds(project: Project, rounds: int) -> None:
    for number in range(rounds):
        database = postgres_database(f"celerybeat_start_race_{number}")
        url = next(database)
        project.env["DATABASE_URL"] = url

        def duplicates():
            with psycopg2.connect(url) as connection, connection.cursor() as cursor:
                found = {}
                for kind, query in DUPLICATES.items():
                    cursor.execute(query)
                    found[kind] = cursor.fetchall()
            connection.close()
            return found

        try:
            run_round(project, f"pg{number}", duplicates)
        finally:
            database.close()


def sqlite_rounds(project: Project, rounds: int) -> None:
    database = project.root / "var" / "app.db"  # the embedded default: no DATABASE_URL
    for number in range(rounds):
        for path in database.parent.glob("app.db*"):
            path.unlink()

        def duplicates():
            with sqlite3.connect(database) as connection:
                return {kind: connection.execute(query).fetchall() for kind, query in DUPLICATES.items()}

        run_round(project, f"sqlite{number}", duplicates)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_beats_started_together_on_a_fresh_database_all_start_and_one_leads(backend, tmp_path):
    project = Project(tmp_path, {"CELERY_BROKER_URL": redis_test_url()})
    (project.root / "logs").mkdir()
    (project.root / "var").mkdir()
    try:
        (postgres_rounds if backend == "postgresql" else sqlite_rounds)(project, ROUNDS[backend])
    finally:
        project.kill_all()


def test_syncs_racing_on_empty_tables_create_each_schedule_row_once(tmp_path):
    database = postgres_database("celerybeat_sync_race")
    project = Project(tmp_path, {"CELERY_BROKER_URL": redis_test_url(), "DATABASE_URL": next(database)})
    try:
        outcome = json.loads(project.python(RACING_SYNCS, str(SYNC_ROUNDS), str(BEATS), *DUPLICATES.values())
                             .strip().splitlines()[-1])
    finally:
        database.close()
    assert outcome == {"failures": [], "duplicates": []}
