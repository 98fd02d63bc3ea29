"""Schema migrations, applied by themselves: Alembic for app/models, Django's for django-celery-beat."""

import fcntl
import zlib
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from app.core.config import PROJECT_ROOT, get_settings

ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"
LOCK_KEY = zlib.crc32(b"celery-beat-service-migrations")


def alembic_config() -> Config:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(PROJECT_ROOT / "app" / "migrations"))
    return config


@contextmanager
def _migration_lock(connection):
    """One migrator at a time: beat and workers starting together must not race."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({LOCK_KEY})")
        try:
            yield
        finally:
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({LOCK_KEY})")
        return
    lock_path = Path(get_settings().run_path) / "migrate.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def upgrade_app_schema(engine: Engine) -> None:
    """Bring the app's tables to the newest Alembic revision."""
    with engine.connect() as connection, _migration_lock(connection):
        _upgrade(connection)


def _upgrade(connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    connection.commit()


def migrate_all() -> None:
    """Apply every pending migration, ours and django-celery-beat's; a no-op once applied.

    Beat and workers call this at start, under one lock, so whichever starts first migrates.
    """
    from django.core.management import call_command

    from app.core.database import engine

    with engine.sa_engine.connect() as connection, _migration_lock(connection):
        _upgrade(connection)
        call_command("migrate", interactive=False, verbosity=0)


def pending_app_revisions(engine: Engine) -> list[str]:
    """Alembic revisions not yet applied."""
    script = ScriptDirectory.from_config(alembic_config())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    head_revisions = {revision.revision for revision in script.walk_revisions()}
    applied = set()
    for head in current:
        applied |= {revision.revision for revision in script.iterate_revisions(head, "base")}
    return sorted(head_revisions - applied)
