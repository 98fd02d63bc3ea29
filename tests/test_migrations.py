"""The app's schema migrates by itself, once, on SQLite and PostgreSQL."""

from sqlalchemy import inspect as schema

from app.core.database import make_engine
from app.core.migrations import pending_app_revisions, upgrade_app_schema


def test_upgrade_creates_the_tables_and_is_idempotent(sa_engine):
    assert pending_app_revisions(sa_engine) == ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]
    upgrade_app_schema(sa_engine)
    upgrade_app_schema(sa_engine)
    tables = set(schema(sa_engine).get_table_names())
    assert {"deliveries", "tracking_events", "job_runs", "deliveries_archive", "tracking_events_archive",
            "delivery_files", "reports", "alert_incidents",
            "alembic_version"} <= tables
    assert pending_app_revisions(sa_engine) == []


def test_models_match_the_migrations(sa_engine):
    """Autogenerate finds nothing to add: the models and the migration files agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from app.models import Base

    upgrade_app_schema(sa_engine)
    with sa_engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_worker_start_migrates_a_new_database(embedded_project):
    project = embedded_project
    assert project.manager("start", "--service", "worker").returncode == 0
    engine = make_engine(f"sqlite:///{project.root / 'var' / 'app.db'}")
    assert {"deliveries", "django_celery_beat_periodictask"} <= set(schema(engine).get_table_names())
    project.manager("stop", "--service", "worker")
