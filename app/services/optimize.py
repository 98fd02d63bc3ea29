"""Database upkeep: VACUUM (ANALYZE) on PostgreSQL, PRAGMA optimize and ANALYZE on SQLite, sizes before and after.

No VACUUM on SQLite: it rewrites the whole file under an exclusive lock, so every worker's writes
would wait for it, and SQLite reuses the pages of deleted rows anyway.
"""

import logging
import time

from sqlalchemy import text
from sqlalchemy.engine import Connection

from app.core.config import Settings
from app.core.database import make_engine
from app.models import Base

log = logging.getLogger(__name__)

DJANGO_CELERY_BEAT_PREFIX = "django_celery_beat_"


def optimize_database(settings: Settings) -> dict:
    """Refresh the planner's statistics (and clear dead rows on PostgreSQL); sizes before and after, in bytes."""
    started = time.monotonic()
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            optimize = _optimize_postgres if connection.dialect.name == "postgresql" else _optimize_sqlite
            summary = optimize(connection)
    finally:
        engine.dispose()
    summary["seconds"] = round(time.monotonic() - started, 3)
    log.info("optimized the %s database in %.1f s: %d -> %d bytes", summary["database"], summary["seconds"],
             summary["size_before"], summary["size_after"])
    return summary


def _optimize_postgres(connection: Connection) -> dict:
    # VACUUM cannot run inside a transaction: the connection is in autocommit.
    tables = app_tables(connection)
    size_before, tables_before = _postgres_database_size(connection), _table_sizes(connection, tables)
    for table in tables:
        connection.exec_driver_sql(f"VACUUM (ANALYZE) {connection.dialect.identifier_preparer.quote(table)}")
    tables_after = _table_sizes(connection, tables)
    return {"database": "postgresql", "size_before": size_before, "size_after": _postgres_database_size(connection),
            "tables": {table: {"before": tables_before[table], "after": tables_after[table]} for table in tables}}


def app_tables(connection: Connection) -> list[str]:
    """The app's tables (app.models and django-celery-beat's) that exist in the current schema."""
    ours = {table.name for table in Base.metadata.sorted_tables}
    existing = connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))
    return sorted(name for name in existing.scalars() if name in ours or name.startswith(DJANGO_CELERY_BEAT_PREFIX))


def _postgres_database_size(connection: Connection) -> int:
    return connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one()


def _table_sizes(connection: Connection, tables: list[str]) -> dict[str, int]:
    """Each table's size with its indexes and TOAST data."""
    query = text("SELECT pg_total_relation_size(format('%I', CAST(:name AS text))::regclass)")
    return {table: connection.execute(query, {"name": table}).scalar_one() for table in tables}


def _optimize_sqlite(connection: Connection) -> dict:
    size_before = _sqlite_size(connection)
    connection.exec_driver_sql("PRAGMA optimize")
    connection.exec_driver_sql("ANALYZE")
    return {"database": "sqlite", "size_before": size_before, "size_after": _sqlite_size(connection)}


def _sqlite_size(connection: Connection) -> int:
    """The database file's size in pages (its WAL not counted)."""
    page_count = connection.exec_driver_sql("PRAGMA page_count").scalar_one()
    return page_count * connection.exec_driver_sql("PRAGMA page_size").scalar_one()
