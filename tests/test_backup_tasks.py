"""backup-database and optimize-database through a real worker; python -m app backups as an operator runs it."""

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from app.core.database import make_engine
from app.core.migrations import upgrade_app_schema
from app.services.backups import backup_database, backup_problem
from tests.support.app_cli import run_app

RESULT_TIMEOUT = 60


def test_backup_database_task_writes_a_verified_backup(worker, celery_app, settings, django_db):
    result = celery_app.send_task("app.tasks.maintenance_tasks.backup_database")
    made = result.get(timeout=RESULT_TIMEOUT)

    path = Path(made["file"])
    assert path.parent == settings.backups_path and path.suffix == ".sqlite3"
    assert made["verified"] and backup_problem(path) is None
    assert path.name in made["kept"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert table_names(path) == table_names(settings.sqlite_path)
    assert "django_celery_beat_periodictask" in table_names(path) and "deliveries" in table_names(path)


def table_names(database: Path) -> set[str]:
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            return set(connection.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())
    finally:
        engine.dispose()


def test_optimize_database_task_reports_sizes(worker, celery_app, django_db):
    report = celery_app.send_task("app.tasks.maintenance_tasks.optimize_database").get(timeout=RESULT_TIMEOUT)
    assert report["database"] == "sqlite"
    assert report["size_before"] > 0 and report["size_after"] > 0


@pytest.fixture
def operator_home(settings, tmp_path):
    """A VAR_DIR with a migrated SQLite database of two deliveries, and one backup of it."""
    var = tmp_path / "var"
    var.mkdir()
    engine = make_engine(f"sqlite:///{var / 'app.db'}")
    upgrade_app_schema(engine)
    engine.dispose()
    for number in (1, 2):
        execute(var, "INSERT INTO deliveries (reference, recipient_name, phone, address, carrier, tracking_number, "
                     "status, created_at, updated_at, poll_count, poll_failures, evidence_status) VALUES "
                     f"('CASE-{number}', '张三', '13800138000', '北京市', 'ems', 'EM{number:09d}CN', 'pending', "
                     "'2026-01-01', '2026-01-01', 0, 0, 'none')")
    made = backup_database(settings.model_copy(update={"var_dir": var}))
    return var, Path(made["file"])


def execute(var: Path, statement: str):
    """One statement on VAR_DIR's database, its connection closed after (a restore needs it unused)."""
    engine = make_engine(f"sqlite:///{var / 'app.db'}")
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement))
            return result.all() if result.returns_rows else None
    finally:
        engine.dispose()


def delivery_count(var: Path) -> int:
    return execute(var, "SELECT count(*) FROM deliveries")[0][0]


def test_backups_list_shows_size_age_and_what_keeps_each(operator_home):
    var, backup = operator_home
    listed = run_app(var, "backups", "list")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["name", "size", "age", "kept", "for"]
    assert row.startswith(backup.name) and row.endswith("daily, weekly, monthly")
    [entry] = json.loads(run_app(var, "backups", "list", "--json").stdout)
    assert (entry["name"], entry["size"], entry["database"]) == (backup.name, backup.stat().st_size, "sqlite")


def test_restore_refuses_without_yes_when_there_is_no_terminal(operator_home):
    var, backup = operator_home
    execute(var, "DELETE FROM deliveries WHERE reference = 'CASE-2'")

    refused = run_app(var, "backups", "restore", backup.name)

    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: refusing to ask for confirmation without a terminal: pass --yes"
    assert delivery_count(var) == 1


def test_restore_with_yes_puts_the_backup_back_in_one_line(operator_home):
    var, backup = operator_home
    execute(var, "DELETE FROM deliveries")

    restored = run_app(var, "backups", "restore", str(backup), "--yes")

    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.startswith(f"restored {backup.name} into sqlite:///{var / 'app.db'} in ")
    assert len(restored.stdout.splitlines()) == 1
    assert delivery_count(var) == 2


def test_restore_errors_are_one_line(operator_home):
    var, backup = operator_home
    missing = run_app(var, "backups", "restore", "backup-20260101-023000.sqlite3", "--yes")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: no such backup: backup-20260101-023000.sqlite3")
    wrong_kind = run_app(var, "backups", "restore", backup.name, "--yes",
                     "--target-url", "postgresql://nobody:hunter2@127.0.0.1:1/none")
    assert wrong_kind.returncode == 1
    assert wrong_kind.stderr == f"error: {backup.name} is a sqlite backup; it cannot be restored into postgresql\n"


def test_backups_list_with_none_says_where_it_looked(tmp_path):
    listed = run_app(tmp_path / "var", "backups", "list")
    assert (listed.returncode, listed.stdout) == (0, f"no backups in {tmp_path / 'var' / 'backups'}\n")


def test_help_for_every_action(tmp_path):
    for action in ("list", "restore"):
        assert run_app(tmp_path, "backups", action, "--help").returncode == 0
