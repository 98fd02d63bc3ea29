"""Archiving 1,000,000 delivered rows on PostgreSQL: our batched job against one INSERT … SELECT + DELETE.

    python bench/archive.py [--rows N] [--batch 5000]

Creates its own database on TEST_POSTGRES_ADMIN_URL's server (default postgresql://postgres@127.0.0.1:5432/test),
seeds N delivered deliveries, archives them with archive_delivered (a batch per transaction,
resumable), moves them back, then archives them with one bare INSERT … SELECT + DELETE in one
transaction. Prints rows/s of both, the ratio, and this process's peak memory during our run.
"""

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "bench_archive"
COLUMNS = ("id, reference, recipient_name, phone, address, carrier, tracking_number, status, carrier_state, "
           "deadline, created_at, updated_at, delivered_at, last_polled_at, next_poll_at, poll_count, "
           "poll_failures, last_error")


def admin_connection():
    url = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
    connection = psycopg2.connect(url)
    connection.autocommit = True
    return connection, url.rsplit("/", 1)[0]


def sample_memory(stop: threading.Event, peak: list[int]) -> None:
    process = psutil.Process()
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()

    admin, base = admin_connection()
    with admin.cursor() as cursor:
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    scratch = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    os.environ.update(DATABASE_URL=f"{base}/{DATABASE}", VAR_DIR=str(scratch / "var"), LOGS_DIR=str(scratch / "logs"))
    sys.path.insert(0, str(ROOT))
    try:
        ours, peak, bare = run(args.rows, args.batch)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        admin.close()
    print(f"rows: {args.rows}, batch {args.batch}")
    print(f"ours (a batch per transaction): {args.rows / ours:10.0f} rows/s ({ours:.1f} s)")
    print(f"one INSERT … SELECT + DELETE:   {args.rows / bare:10.0f} rows/s ({bare:.1f} s)")
    print(f"ratio ours/bare (rows/s): {bare / ours:.2f}")
    print(f"peak memory of the archiving process: {peak / 2**20:.0f} MiB")


def run(rows: int, batch: int) -> tuple[float, int, float]:
    from datetime import timedelta

    from app.core.database import SessionFactory, engine
    from app.core.migrations import upgrade_app_schema
    from app.models.base import utcnow
    from app.services.archive import archive_delivered

    upgrade_app_schema(engine.sa_engine)
    with engine.sa_engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO deliveries (reference, recipient_name, phone, address, carrier, tracking_number, status, "
            "created_at, updated_at, delivered_at, poll_count, poll_failures) "
            "SELECT 'CASE-' || n, '张三', '13800138000', '北京市朝阳区', 'ems', 'EM' || lpad(n::text, 10, '0'), "
            "'delivered', now() - interval '400 days', now() - interval '400 days', now() - interval '400 days', 3, 0 "
            f"FROM generate_series(1, {rows}) AS n")
        connection.exec_driver_sql("ANALYZE deliveries")
    cutoff = utcnow() - timedelta(days=180)

    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=sample_memory, args=(stop, peak), daemon=True)
    sampler.start()
    started = time.perf_counter()
    summary = archive_delivered(SessionFactory, cutoff, batch_size=batch)
    ours = time.perf_counter() - started
    stop.set()
    assert summary["deliveries"] == rows, summary

    with engine.sa_engine.begin() as connection:
        connection.exec_driver_sql(f"INSERT INTO deliveries ({COLUMNS}) SELECT {COLUMNS} FROM deliveries_archive")
        connection.exec_driver_sql("TRUNCATE deliveries_archive")
        connection.exec_driver_sql("ANALYZE deliveries")
    started = time.perf_counter()
    with engine.sa_engine.begin() as connection:
        connection.exec_driver_sql(
            f"INSERT INTO deliveries_archive ({COLUMNS}, archived_at) SELECT {COLUMNS}, now() FROM deliveries "
            "WHERE status = 'delivered' AND delivered_at < now() - interval '180 days'")
        connection.exec_driver_sql("DELETE FROM deliveries WHERE status = 'delivered' "
                                   "AND delivered_at < now() - interval '180 days'")
    bare = time.perf_counter() - started
    engine.sa_engine.dispose()
    return ours, peak[0], bare


if __name__ == "__main__":
    main()
