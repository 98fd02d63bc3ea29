"""A monthly report over 1,000,000 deliveries on PostgreSQL, as a ratio to one `SELECT count(*)` (target ≤ 5).

    python bench/reports.py [--rows N] [--repeat 3] [--candidate-indexes] [--explain]

Creates its own database on TEST_POSTGRES_ADMIN_URL's server (default postgresql://postgres@127.0.0.1:5432/test)
and drops it at the end. Seeds, in SQL, N deliveries created over the twelve months before 2026-12-01
(Asia/Shanghai), 85 % of them delivered within ten days, a receipt and a screenshot row for each
delivered one, and 90 days of job runs; then times `SELECT count(*) FROM deliveries` and the
November 2026 report (numbers, HTML, CSV, row), best of --repeat each, and prints the ratio.
--candidate-indexes then adds the indexes a migration could add (named below) to the scratch
database only and measures again; --explain prints each report query's plan to stderr.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from scratch_postgres import admin_connection, recreate_database

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "bench_reports"
REPORT_MONTH = date(2026, 11, 1)
SEED_DELIVERIES = """
INSERT INTO deliveries (reference, recipient_name, phone, address, carrier, tracking_number, status, created_at,
                        updated_at, delivered_at, poll_count, poll_failures, evidence_status)
SELECT 'CASE-' || n, '张三', '13800138000', '北京市朝阳区建国路1号',
       (ARRAY['ems', 'sf', 'yto', 'zto', 'jd'])[1 + n %% 5], 'T' || lpad(n::text, 12, '0'), status, created,
       coalesce(delivered, created + interval '2 days'), delivered, 3, 0, 'none'
FROM generate_series(1, %(rows)s) AS n,
     LATERAL (SELECT timestamptz '2025-12-01 00:00+08' + (n - 1) * interval '365 days' / %(rows)s AS created,
                     CASE WHEN n %% 100 < 85 THEN 'delivered' WHEN n %% 100 < 90 THEN 'in_transit'
                          WHEN n %% 100 < 92 THEN 'out_for_delivery' WHEN n %% 100 < 95 THEN 'timeout'
                          WHEN n %% 100 < 97 THEN 'failed' ELSE 'pending' END AS status) AS shape,
     LATERAL (SELECT CASE WHEN status = 'delivered'  -- 1 hour to 10 days after creation
                          THEN created + (60 + (n::bigint * 7919) %% 14400) * interval '1 minute'
                     END AS delivered) AS done
"""
SEED_FILES = """
INSERT INTO delivery_files (delivery_id, kind, path, sha256, size, content_type, receipt_number, created_at)
SELECT id, kind, 'x/' || id || kind, md5(id || kind) || md5(kind || id), 100000,
       CASE kind WHEN 'receipt' THEN 'application/pdf' ELSE 'image/png' END,
       CASE kind WHEN 'receipt' THEN 'R-' || id END, delivered_at + interval '10 minutes'
FROM deliveries, unnest(ARRAY['screenshot', 'receipt']) AS kind
WHERE status = 'delivered'
"""
# About what the schedule table starts in 90 days (JOB_RUN_RETENTION_DAYS): ~830 runs a day over 15 jobs.
SEED_JOB_RUNS = """
INSERT INTO job_runs (name, task_id, started_at, finished_at, outcome)
SELECT 'job-' || (n %% 15), md5(n::text), started, started + (n %% 300) * interval '1 second',
       CASE WHEN n %% 50 = 0 THEN 'failure' ELSE 'success' END
FROM generate_series(1, 75000) AS n,
     LATERAL (SELECT timestamptz '2026-09-02 00:00+08' + n * interval '90 days' / 75000 AS started) AS s
"""
# Indexes a migration could add for the report's range filters (the app's migrations do not create them).
# The included columns are never updated, and let the report's passes read the index alone.
CANDIDATE_INDEXES = {
    "ix_deliveries_created_at": "CREATE INDEX ix_deliveries_created_at ON deliveries (created_at) INCLUDE (carrier)",
    "ix_deliveries_delivered_at":
        "CREATE INDEX ix_deliveries_delivered_at ON deliveries (delivered_at) INCLUDE (created_at, carrier)",
    "ix_delivery_files_kind_created_at":
        "CREATE INDEX ix_delivery_files_kind_created_at ON delivery_files (kind, created_at)",
}


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each side; the best counts")
    parser.add_argument("--candidate-indexes", action="store_true",
                        help="measure again after adding the indexes a migration could add")
    parser.add_argument("--explain", action="store_true", help="print each report query's plan to stderr")
    args = parser.parse_args()

    admin, base = admin_connection()
    recreate_database(admin, DATABASE)
    scratch = Path(tempfile.mkdtemp(prefix="bench-reports-"))
    os.environ.update(DATABASE_URL=f"{base}/{DATABASE}", VAR_DIR=str(scratch / "var"),
                      LOGS_DIR=str(scratch / "logs"), APP_ENV_FILE="")
    sys.path.insert(0, str(ROOT))
    try:
        run(args, scratch / "reports")
    finally:
        from app.core.database import engine

        engine.sa_engine.dispose()
        recreate_database(admin, DATABASE, drop_only=True)
        admin.close()


def run(args, reports_root: Path) -> None:
    from app.core.database import engine
    from app.core.migrations import upgrade_app_schema

    progress("creating the app schema")
    upgrade_app_schema(engine.sa_engine)
    seed(args.rows)
    print(f"deliveries: {args.rows}, report: monthly {REPORT_MONTH:%Y-%m} ({os.cpu_count()} CPUs)")
    measure("schema as migrated", args, reports_root)
    if args.candidate_indexes:
        with engine.sa_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for name, statement in CANDIDATE_INDEXES.items():
                progress(f"creating {name}")
                connection.exec_driver_sql(statement)
            connection.exec_driver_sql("ANALYZE")
        measure(f"with {', '.join(CANDIDATE_INDEXES)}", args, reports_root)


def seed(rows: int) -> None:
    from app.core.database import engine

    with engine.sa_engine.begin() as connection:
        progress(f"inserting {rows} deliveries")
        connection.exec_driver_sql(SEED_DELIVERIES, {"rows": rows})
        progress("inserting a receipt and a screenshot row per delivered delivery")
        connection.exec_driver_sql(SEED_FILES)
        progress("inserting 90 days of job runs")
        connection.exec_driver_sql(SEED_JOB_RUNS)
    with engine.sa_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        progress("VACUUM ANALYZE (as autovacuum would have by now)")
        connection.exec_driver_sql("VACUUM ANALYZE")


def measure(label: str, args, reports_root: Path) -> None:
    from app.core.database import SessionFactory, engine
    from app.services.reports import generate_report

    def count() -> None:
        with engine.sa_engine.connect() as connection:
            connection.exec_driver_sql("SELECT count(*) FROM deliveries").scalar()

    def report() -> None:
        generate_report(SessionFactory, reports_root, "monthly", REPORT_MONTH)

    progress(f"{label}: timing count(*) and the report, best of {args.repeat}")
    counted, reported = best_time(count, args.repeat), best_time(report, args.repeat)
    print(f"{label}:")
    print(f"  SELECT count(*) FROM deliveries: {counted * 1000:8.1f} ms")
    print(f"  monthly report:                  {reported * 1000:8.1f} ms")
    print(f"  ratio report/count: {reported / counted:.2f} (target <= 5)")
    if args.explain:
        explain_report(reports_root)


def best_time(work, repeat: int) -> float:
    work()  # warm the cache and the connection pool
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    progress(f"  {work.__name__}: {', '.join(f'{t * 1000:.0f}' for t in timings)} ms "
             f"(median {statistics.median(timings) * 1000:.0f})")
    return min(timings)


def explain_report(reports_root: Path) -> None:
    """Run the report once more, recording its queries, then print the plan of each."""
    from sqlalchemy import event

    from app.core.database import SessionFactory, engine
    from app.services.reports import generate_report

    queries = []

    def record(_connection, _cursor, statement, parameters, _context, _executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            queries.append((statement, parameters))

    event.listen(engine.sa_engine, "before_cursor_execute", record)
    generate_report(SessionFactory, reports_root, "monthly", REPORT_MONTH)
    event.remove(engine.sa_engine, "before_cursor_execute", record)
    with engine.sa_engine.connect() as connection:
        for statement, parameters in queries:
            plan = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, COSTS OFF) {statement}", parameters).scalars()
            print("\n" + " ".join(statement.split())[:160] + "\n  " + "\n  ".join(plan), file=sys.stderr)


if __name__ == "__main__":
    main()
