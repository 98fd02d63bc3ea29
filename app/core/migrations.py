"""Schema migrations, applied by themselves: Alembic for app/models, Django's for django-celery-beat.

Alembic is imported where it is used: it costs 0.2 s at every start of a command that never migrates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from app.core.config import PROJECT_ROOT
from app.core.locks import MIGRATIONS, session_lock

if TYPE_CHECKING:
    from alembic.config import Config

ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(PROJECT_ROOT / "app" / "migrations"))
    return config


def upgrade_app_schema(engine: Engine) -> None:
    """Bring the app's tables to the newest Alembic revision."""
    with engine.connect() as connection, session_lock(connection, MIGRATIONS):
        _upgrade(connection)


def _upgrade(connection) -> None:
    from alembic import command

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

    with engine.sa_engine.connect() as connection, session_lock(connection, MIGRATIONS):
        _upgrade(connection)
        call_command("migrate", interactive=False, verbosity=0)


def pending_app_revisions(engine: Engine) -> list[str]:
    """Alembic revisions not yet applied."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    head_revisions = {revision.revision for revision in script.walk_revisions()}
    applied = set()
    for head in current:
        applied |= {revision.revision for revision in script.iterate_revisions(head, "base")}
    return sorted(head_revisions - applied)
