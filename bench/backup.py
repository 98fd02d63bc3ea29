"""Backing up 1,000,000 deliveries on PostgreSQL: our backup-database against a bare `pg_dump --format=custom`.

    python bench/backup.py [--rows N] [--rounds 2]

Creates its own database on TEST_POSTGRES_ADMIN_URL's server (default postgresql://postgres@127.0.0.1:5432/test),
migrates it, inserts N deliveries with generate_series, then times, alternately and in the same run,
backup_database (pg_dump at compression level 1, a full read to verify, fsync, rename, rotation) and a
bare pg_dump at its default compression. Prints the best time of each, the ratio (target <= 1.2) and
both sizes; progress goes to stderr. The database is dropped at the end.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch_postgres import admin_connection, recreate_database

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "bench_backup"
TARGET_RATIO = 1.2


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each; the best counts")
    args = parser.parse_args()

    admin, base = admin_connection()
    recreate_database(admin, DATABASE)
    scratch = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    url = f"{base}/{DATABASE}"
    os.environ.update(DATABASE_URL=url, VAR_DIR=str(scratch / "var"), LOGS_DIR=str(scratch / "logs"),
                      BACKUPS_DIR=str(scratch / "backups"))
    sys.path.insert(0, str(ROOT))
    try:
        ours, ours_size, bare, bare_size = run(url, scratch, args.rows, args.rounds)
    finally:
        recreate_database(admin, DATABASE, drop_only=True)
        admin.close()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"rows: {args.rows}, best of {args.rounds} rounds each")
    print(f"ours (pg_dump -Z1, full-read verify, fsync, rename, rotation): {ours:6.2f} s, {ours_size / 2**20:7.1f} MiB")
    print(f"bare pg_dump --format=custom (default compression):            {bare:6.2f} s, {bare_size / 2**20:7.1f} MiB")
    print(f"ratio ours/bare (time): {ours / bare:.2f} (target <= {TARGET_RATIO})")


def run(url: str, scratch: Path, rows: int, rounds: int) -> tuple[float, int, float, int]:
    from app.core.config import get_settings
    from app.services.backups import backup_database

    seed(rows)
    settings = get_settings()
    bare_file = scratch / "bare.dump"
    ours_times, bare_times, ours_size = [], [], 0
    for round_number in range(1, rounds + 1):
        started = time.perf_counter()
        subprocess.run(["pg_dump", "--format=custom", f"--file={bare_file}", f"--dbname={url}"], check=True)
        bare_times.append(time.perf_counter() - started)
        progress(f"round {round_number}: bare pg_dump {bare_times[-1]:.2f} s")
        started = time.perf_counter()
        made = backup_database(settings)
        ours_times.append(time.perf_counter() - started)
        ours_size = made["size"]
        Path(made["file"]).unlink()  # the next round's backup may fall in the same second
        progress(f"round {round_number}: backup_database {ours_times[-1]:.2f} s")
    return min(ours_times), ours_size, min(bare_times), bare_file.stat().st_size


def seed(rows: int) -> None:
    """Migrate, insert `rows` deliveries with generate_series, then settle them (hint bits, statistics)."""
    from app.core.database import engine
    from app.core.migrations import upgrade_app_schema

    progress(f"seeding {rows} deliveries ...")
    started = time.perf_counter()
    upgrade_app_schema(engine.sa_engine)
    with engine.sa_engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO deliveries (reference, recipient_name, phone, address, carrier, tracking_number, status, "
            "created_at, updated_at, delivered_at, poll_count, poll_failures, last_error) "
            "SELECT 'CASE-' || n, '张三', '138' || lpad(mod(n, 100000000)::text, 8, '0'), "
            "'北京市朝阳区建国路' || n || '号 ' || md5(n::text), 'ems', 'EM' || lpad(n::text, 9, '0') || 'CN', "
            "'delivered', now() - n * interval '1 minute', now(), now() - n * interval '30 seconds', 3, 0, "
            "CASE WHEN mod(n, 10) = 0 THEN 'carrier timeout ' || md5((n * 7)::text) END "
            f"FROM generate_series(1, {rows}) AS n")
    with engine.sa_engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM (FREEZE, ANALYZE)")
    engine.sa_engine.dispose()
    progress(f"seeded in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
