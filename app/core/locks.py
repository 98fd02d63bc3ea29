"""Locks in the database, so that beats and workers starting at once take turns where only one may act."""

import fcntl
import zlib
from contextlib import contextmanager
from pathlib import Path

from app.core.config import get_settings

MIGRATIONS = "migrations"
SCHEDULE_SYNC = "schedule-sync"


def lock_key(name: str) -> int:
    """The key of lock `name` for PostgreSQL's advisory locks: the same in every process and release."""
    return zlib.crc32(f"celery-beat-service-{name}".encode())


@contextmanager
def session_lock(connection, name: str):
    """Hold lock `name` while the block runs, whatever connections it uses (a migration runs
    Alembic on `connection`, a SQLAlchemy connection, and Django's migrate on Django's own).

    PostgreSQL: a session advisory lock on `connection`. SQLite: a file lock under var/run.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({lock_key(name)})")
        try:
            yield
        finally:
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({lock_key(name)})")
        return
    lock_path = Path(get_settings().run_path) / f"{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def transaction_lock(name: str) -> None:
    """Hold lock `name` until the current Django transaction ends; call it first inside atomic().

    PostgreSQL: pg_advisory_xact_lock, released by the commit or rollback, so the next holder
    reads what this one wrote. SQLite: Django's transactions begin IMMEDIATE (django_settings),
    so this one holds the database's write lock from its start and every other writer waits.
    """
    from django.db import connection

    if not connection.in_atomic_block:
        raise RuntimeError(f"lock {name} taken outside transaction.atomic(): it would be released at once")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(name)])
    elif connection.vendor == "sqlite" and connection.settings_dict["OPTIONS"].get("transaction_mode") != "IMMEDIATE":
        raise RuntimeError(f"lock {name}: SQLite transactions must begin IMMEDIATE to hold the write lock")
