"""The admin's /metrics and schedule page with 10,000 jobs and 1,000,000 runs on PostgreSQL, as ratios to one
`SELECT count(*) FROM job_runs` (target <= 3).

    python bench/metrics_bench.py [--jobs 10000] [--runs 1000000] [--repeat 5] [--explain]

Creates its own database on TEST_POSTGRES_ADMIN_URL's server (default postgresql://postgres@127.0.0.1:5432/test)
and drops it at the end; reads beats and queues from CELERY_BROKER_URL (default TEST_REDIS_URL, else
redis://127.0.0.1:6379/15; only read). Seeds N crontab jobs on 60 schedules (minute 0..59 of every hour, last
run at their latest slot, as beat leaves them) and, in SQL, the runs of 90 days in due order: mostly
successes, some failures, skips and lost runs, the newest still running. Then times, through the admin's
own URLs and middleware (Django's test client): count(*); /metrics in a new process (every run summed)
and then at each scrape (only runs recorded since; see app/scheduling/run_totals.py); the schedule page
(100 jobs, each with its next five runs); one job's page (last 50 runs, its 24-hour strip). Best of
--repeat each. --explain prints the plans of the run-history queries of a scrape to stderr.
"""

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from reports import best_time, progress
from scratch_postgres import admin_connection, recreate_database

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "bench_metrics"
TOKEN = "bench-metrics-token-0123456789"
SEED_RUNS = """
INSERT INTO job_runs (name, task_id, due_at, sent_at, lateness_seconds, started_at, finished_at, outcome, summary)
SELECT 'bench-job-' || lpad((n %% %(jobs)s)::text, 5, '0'), md5(n::text), due,
       CASE WHEN outcome LIKE 'skipped%%' THEN NULL ELSE due + late * interval '1 second' END, late,
       CASE WHEN outcome LIKE 'skipped%%' THEN NULL ELSE due + (late + 1) * interval '1 second' END,
       CASE WHEN outcome = 'running' THEN NULL ELSE due + (late + 2 + n %% 30) * interval '1 second' END,
       outcome, '{"ok": true}'
FROM generate_series(1, %(runs)s) AS n,
     LATERAL (SELECT now() - interval '90 days' + n * interval '90 days' / %(runs)s AS due,
                     CASE WHEN n %% 100 = 0 THEN 120.0 ELSE (n::bigint * 7919 %% 3000) / 1000.0 END AS late,
                     CASE WHEN n > %(runs)s - 20 THEN 'running' WHEN n %% 199 = 0 THEN 'lost'
                          WHEN n %% 97 = 0 THEN 'skipped_overlap' WHEN n %% 89 = 0 THEN 'skipped_missed'
                          WHEN n %% 50 = 0 THEN 'failure' ELSE 'success' END AS outcome) AS shape
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each; the best counts")
    parser.add_argument("--explain", action="store_true", help="print the run-history queries' plans to stderr")
    args = parser.parse_args()

    admin, base = admin_connection()
    recreate_database(admin, DATABASE)
    scratch = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    broker = os.environ.get("CELERY_BROKER_URL") or os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    os.environ.update(DATABASE_URL=f"{base}/{DATABASE}", VAR_DIR=str(scratch / "var"), LOGS_DIR=str(scratch / "logs"),
                      APP_ENV_FILE="", CELERY_BROKER_URL=broker, METRICS_TOKEN=TOKEN,
                      DJANGO_SETTINGS_MODULE="app.core.django_settings")
    sys.path.insert(0, str(ROOT))
    try:
        run(args)
    finally:
        from django.db import connections

        from app.core.database import engine

        connections.close_all()
        engine.sa_engine.dispose()
        recreate_database(admin, DATABASE, drop_only=True)
        admin.close()


def run(args) -> None:
    import app.core.wsgi  # noqa: F401  (the admin as gunicorn loads it: Django set up, schema migrated)

    from django.contrib.auth import get_user_model
    from django.test import Client

    seed(args.jobs, args.runs)
    print(f"jobs: {args.jobs}, runs: {args.runs} ({os.cpu_count()} CPUs)")
    scraper = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    operator = Client(HTTP_HOST="127.0.0.1")
    operator.force_login(get_user_model().objects.create_superuser("bench", password="bench-password-1"))
    first_job = job_id("bench-job-00000")

    def count() -> None:
        from app.core.database import engine

        with engine.sa_engine.connect() as connection:
            connection.exec_driver_sql("SELECT count(*) FROM job_runs").scalar()

    def new_process_scrape() -> None:
        from app.scheduling.metrics import ScheduleMetrics

        ScheduleMetrics().render()

    def scrape() -> None:
        answer = scraper.get("/metrics")
        assert answer.status_code == 200, answer.status_code
        scrape.size, scrape.lines = len(answer.content), answer.content.count(b"\n")

    def schedule_page() -> None:
        assert operator.get("/admin/schedule/").status_code == 200

    def job_page() -> None:
        assert operator.get(f"/admin/schedule/job/{first_job}/").status_code == 200

    progress(f"timing, best of {args.repeat}")
    counted = best_time(count, args.repeat)
    timings = {work.__name__: best_time(work, args.repeat) for work in (new_process_scrape, scrape, schedule_page,
                                                                          job_page)}
    timings["scrape_after_runs"] = scrape_after_runs(scrape, args)
    print(f"  SELECT count(*) FROM job_runs:        {counted * 1000:8.1f} ms")
    labels = {"new_process_scrape": "/metrics, first scrape of a process", "scrape": "/metrics, each scrape after",
              "scrape_after_runs": f"/metrics, {args.jobs // 240} jobs ran since",
              "schedule_page": "schedule page (100 jobs)", "job_page": "one job's page"}
    for name, seconds in timings.items():
        print(f"  {labels[name] + ':':37s} {seconds * 1000:8.1f} ms   ratio {seconds / counted:5.2f}")
    print(f"  /metrics: {scrape.size / 2**20:.1f} MiB, {scrape.lines} lines")
    print(f"  target: ratio <= 3 for each scrape and the pages")
    breakdown(args)


def scrape_after_runs(scrape, args) -> float:
    """A scrape 15 s after the last: the hourly jobs due in those 15 s (1/240 of them) ran once more."""
    from django_celery_beat.models import PeriodicTask

    from app.core.database import engine

    due = args.jobs // 240
    timings = []
    for round_ in range(args.repeat):
        names = [f"bench-job-{n:05d}" for n in range(round_ * due, (round_ + 1) * due)]
        with engine.sa_engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO job_runs (name, task_id, due_at, sent_at, lateness_seconds, started_at, finished_at, "
                "outcome) SELECT name, md5(name || now()), now(), now(), 0.4, now(), now(), 'success' "
                "FROM unnest(%(names)s) AS name",
                {"names": names})
        PeriodicTask.objects.filter(name__in=names).update(last_run_at=datetime.now(timezone.utc))
        started = time.perf_counter()
        scrape()
        timings.append(time.perf_counter() - started)
    progress(f"  scrape_after_runs: {', '.join(f'{t * 1000:.0f}' for t in timings)} ms")
    return min(timings)


def breakdown(args) -> None:
    """Where a scrape's time goes: the run totals, the next due times, the beats and queues."""
    from django.utils import timezone as django_timezone
    from prometheus_client import generate_latest

    from app.core.database import engine
    from app.scheduling.metrics import METRICS, next_due_times
    from app.scheduling.run_totals import RunTotals

    now = django_timezone.now()
    parts = {"run totals (SQL)": lambda: METRICS.totals.read(engine.sa_engine, now),
             "next due times": lambda: next_due_times(now),
             "beats and queues (Redis)": lambda: generate_latest(METRICS.broker_registry)}
    for label, work in parts.items():
        work.__name__ = label
        print(f"    {label + ':':30s} {best_time(work, args.repeat) * 1000:8.1f} ms")
    if args.explain:
        explain(RunTotals(), now)


def explain(totals, now) -> None:
    from sqlalchemy import event

    from app.core.database import engine

    queries = []

    def record(_connection, _cursor, statement, parameters, _context, _executemany):
        queries.append((statement, parameters))

    totals.read(engine.sa_engine, now)  # the first scrape of a process
    event.listen(engine.sa_engine, "before_cursor_execute", record)
    totals.read(engine.sa_engine, now)  # each scrape after
    event.remove(engine.sa_engine, "before_cursor_execute", record)
    with engine.sa_engine.connect() as connection:
        for statement, parameters in queries:
            plan = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, COSTS OFF) {statement}", parameters).scalars()
            print("\n" + " ".join(statement.split())[:160] + "\n  " + "\n  ".join(plan), file=sys.stderr)


def job_id(name: str) -> int:
    from django_celery_beat.models import PeriodicTask

    return PeriodicTask.objects.get(name=name).pk


def seed(jobs: int, runs: int) -> None:
    from zoneinfo import ZoneInfo

    from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

    from app.core.database import engine

    progress(f"creating {jobs} jobs on 60 crontab schedules")
    shanghai = ZoneInfo("Asia/Shanghai")
    now = datetime.now(timezone.utc)
    hour = now.replace(minute=0, second=0, microsecond=0)
    crontabs = [CrontabSchedule.objects.create(minute=str(minute), hour="*", timezone=shanghai) for minute in range(60)]
    latest = [hour + timedelta(minutes=m) - (timedelta(hours=1) if hour + timedelta(minutes=m) > now else timedelta())
              for m in range(60)]
    PeriodicTask.objects.bulk_create([
        PeriodicTask(name=f"bench-job-{n:05d}", task="app.tasks.file_tasks.cleanup_temp_files", queue="low_priority",
                     crontab=crontabs[n % 60], last_run_at=latest[n % 60], expire_seconds=3600)
        for n in range(jobs)], batch_size=2000)
    PeriodicTasks.update_changed()
    with engine.sa_engine.begin() as connection:
        progress(f"inserting {runs} runs")
        connection.exec_driver_sql(SEED_RUNS, {"jobs": jobs, "runs": runs})
    with engine.sa_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        progress("VACUUM ANALYZE (as autovacuum would have by now)")
        connection.exec_driver_sql("VACUUM ANALYZE")


if __name__ == "__main__":
    main()
