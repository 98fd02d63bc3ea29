"""DATABASE_URL=sqlite:///path: SQLAlchemy and Django open the same file, with the embedded default's options."""

import sqlite3

import pytest
from sqlalchemy.engine import make_url

from app.core.config import Settings
from app.core.django_settings import django_database
from tests.support.project import Project
from tests.support.services import redis_test_url
from tests.support.waiting import wait_until


def settings_for(tmp_path, database_url: str | None) -> Settings:
    return Settings(_env_file=None, app_home=tmp_path / "home", var_dir=tmp_path / "var", database_url=database_url)


def test_an_absolute_sqlite_url_is_the_file_for_django_and_sqlalchemy(tmp_path):
    path = tmp_path / "data" / "x.db"
    settings = settings_for(tmp_path, f"sqlite:///{path}")
    database = django_database(settings)
    assert database["ENGINE"] == "django.db.backends.sqlite3"
    assert database["NAME"] == str(path) == make_url(settings.sqlalchemy_url).database
    assert path.parent.is_dir(), "its directory is made, as var/ is for the embedded file"
    embedded = django_database(settings_for(tmp_path, None))
    assert embedded["NAME"] == str(tmp_path / "var" / "app.db")
    assert {k: v for k, v in database.items() if k != "NAME"} == {k: v for k, v in embedded.items() if k != "NAME"}
    options = database["OPTIONS"]
    assert options["transaction_mode"] == "IMMEDIATE" and "journal_mode=WAL" in options["init_command"]


def test_a_relative_sqlite_url_is_relative_to_app_home_wherever_the_process_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = settings_for(tmp_path, "sqlite:///db/relative.db?timeout=20")
    expected = tmp_path / "home" / "db" / "relative.db"
    assert django_database(settings)["NAME"] == str(expected)
    url = make_url(settings.sqlalchemy_url)
    assert url.database == str(expected) and url.query == {"timeout": "20"}


def test_postgresql_is_unchanged(tmp_path):
    settings = settings_for(tmp_path, "postgresql://user:secret@db.example:5433/app")
    assert settings.sqlite_path is None
    database = django_database(settings)
    assert (database["ENGINE"], database["NAME"], database["USER"], database["PASSWORD"], database["HOST"],
            database["PORT"]) == ("django.db.backends.postgresql", "app", "user", "secret", "db.example", "5433")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_a_sqlite_url_without_a_file_is_refused(tmp_path, url):
    with pytest.raises(ValueError, match="DATABASE_URL: sqlite:///path needs a file path"):
        settings_for(tmp_path, url)


@pytest.mark.e2e
def test_beat_runs_on_a_sqlite_database_url(tmp_path):
    database = tmp_path / "elsewhere" / "x.db"
    project = Project(tmp_path, {"CELERY_BROKER_URL": redis_test_url(), "DATABASE_URL": f"sqlite:///{database}"})
    try:
        started = project.manager("start", "--service", "beat", timeout=120)
        assert started.returncode == 0, started.stderr
        log = lambda: project.log_text("celerybeat.log")  # noqa: E731
        wait_until(lambda: "leading:" in log(), 30, "beat ticks and takes the lease", log)
        with sqlite3.connect(database) as connection:
            tasks = {name for (name,) in connection.execute("SELECT name FROM django_celery_beat_periodictask")}
            tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "cleanup-temp-files" in tasks, "Django wrote the periodic tasks into the DATABASE_URL file"
        assert "job_runs" in tables, "Alembic migrated the same file"
        assert not (project.root / "var" / "app.db").exists(), "the embedded default file is not used"
        assert "Traceback" not in log()
        stopped = project.manager("stop", "--service", "beat")
        assert stopped.returncode == 0, stopped.stderr
    finally:
        project.kill_all()
