"""Backups, restore, rotation and optimisation on real SQLite and PostgreSQL databases."""

import hashlib
import logging
import os
import random
import stat
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from app.core.database import make_engine
from app.core.migrations import upgrade_app_schema
from app.models import Base, Delivery, JobRun, TrackingEvent
from app.models.base import utcnow
from app.services.backups import (LOCAL_TIME, RestoreError, backup_database, backup_problem, list_backups,
                                  restore_backup, rotate_backups)
from app.services.errors import MissingDependencyError
from app.services.optimize import optimize_database
from tests.support.services import postgres_database

BACKUP_NAME_LENGTH = len("backup-20260101-023000")


def seed(engine, deliveries: int = 3000, first: int = 0) -> None:
    """Deliveries with two tracking events each, and job runs; varied text, so the dump is mostly data."""
    now = utcnow()
    digest = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(first, first + deliveries)]
    with engine.begin() as connection:
        connection.execute(insert(Delivery), [
            {"id": first + n + 1, "reference": f"CASE-{first + n}", "recipient_name": "张三",
             "phone": "13800138000", "address": f"北京市朝阳区 {digest[n]}", "carrier": "ems",
             "tracking_number": f"EM{first + n:09d}CN", "status": "in_transit", "last_error": digest[n] * 2,
             "created_at": now - timedelta(minutes=n), "updated_at": now}
            for n in range(deliveries)])
        connection.execute(insert(TrackingEvent), [
            {"delivery_id": first + n + 1, "occurred_at": now - timedelta(hours=hour), "location": "北京",
             "description": f"{digest[n][:20]} 第{hour}站", "fingerprint": f"{digest[n][:32]}-{hour}"}
            for n in range(deliveries) for hour in range(2)])
        connection.execute(insert(JobRun), [
            {"name": "backup-database", "task_id": digest[n][:36], "started_at": now - timedelta(days=n),
             "outcome": "success", "summary": digest[n]} for n in range(0, deliveries, 10)])


def fingerprint(engine) -> dict[str, tuple[int, str]]:
    """Each app table's row count and the md5 of its rows in primary-key order."""
    prints = {}
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            rows = connection.execute(select(table).order_by(*table.primary_key.columns)).all()
            prints[table.name] = (len(rows), hashlib.md5(repr(rows).encode()).hexdigest())
        prints["alembic_version"] = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    return prints


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def db_settings(settings, sa_engine, tmp_path):
    """The settings of a fresh, migrated database (SQLite or PostgreSQL), with backups under tmp_path."""
    upgrade_app_schema(sa_engine)
    return settings.model_copy(update={"database_url": sa_engine.url.render_as_string(hide_password=False),
                                       "backups_dir": tmp_path / "backups"})


@pytest.fixture
def fresh_database_url(sa_engine, tmp_path):
    """The URL of another, empty database of the same kind."""
    if sa_engine.dialect.name == "sqlite":
        yield f"sqlite:///{tmp_path / 'restored.db'}"
        return
    database = postgres_database("celerybeat_test_restore")
    yield next(database)
    database.close()


@pytest.fixture
def sqlite_settings(settings, tmp_path):
    """Settings of a migrated SQLite file of the test's own, and its engine."""
    engine = make_engine(f"sqlite:///{tmp_path / 'live.db'}")
    upgrade_app_schema(engine)
    yield settings.model_copy(update={"database_url": str(engine.url), "backups_dir": tmp_path / "backups"}), engine
    engine.dispose()


def test_backup_then_restore_into_a_fresh_database_gives_identical_rows(db_settings, sa_engine, fresh_database_url):
    seed(sa_engine)
    original = fingerprint(sa_engine)
    assert original["deliveries"][0] == 3000 and original["tracking_events"][0] == 6000

    made = backup_database(db_settings)

    path = Path(made["file"])
    assert path.parent == db_settings.backups_path
    assert path.name[BACKUP_NAME_LENGTH:] == (".dump" if sa_engine.dialect.name == "postgresql" else ".sqlite3")
    assert made["verified"] and made["size"] == path.stat().st_size > 0
    assert made["kept"] == [path.name] and made["deleted"] == []
    assert mode_of(path) == 0o600
    assert not list(path.parent.glob("*.partial"))

    restored = restore_backup(db_settings, path, fresh_database_url)

    assert restored["file"] == str(path)
    target = make_engine(db_settings.model_copy(update={"database_url": fresh_database_url}).sqlalchemy_url)
    try:
        assert fingerprint(target) == original
    finally:
        target.dispose()


def test_restore_over_the_database_undoes_every_later_change(db_settings, sa_engine):
    seed(sa_engine, deliveries=200)
    original = fingerprint(sa_engine)
    name = Path(backup_database(db_settings)["file"]).name
    with sa_engine.begin() as connection:
        connection.execute(text("DELETE FROM tracking_events WHERE delivery_id > 100"))
        connection.execute(text("UPDATE deliveries SET status = 'delivered'"))
    seed(sa_engine, deliveries=50, first=1000)
    assert fingerprint(sa_engine) != original
    sa_engine.dispose()  # the services are stopped

    restore_backup(db_settings, name)  # a name in BACKUPS_DIR, into DATABASE_URL

    assert fingerprint(sa_engine) == original


def overwrite_middle_page(path: Path) -> None:
    middle = path.stat().st_size // 2 // 4096 * 4096
    with path.open("r+b") as file:
        file.seek(middle)
        file.write(b"\xff" * 4096)


def truncate_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [overwrite_middle_page, truncate_to_half])
def test_a_damaged_backup_fails_verification_and_is_not_restored(db_settings, sa_engine, damage):
    seed(sa_engine)
    path = Path(backup_database(db_settings)["file"])
    assert backup_problem(path) is None
    with sa_engine.begin() as connection:
        connection.execute(text("DELETE FROM tracking_events"))
    after_delete = fingerprint(sa_engine)
    sa_engine.dispose()

    damage(path)

    assert backup_problem(path)
    with pytest.raises(RestoreError, match="failed verification, nothing was restored"):
        restore_backup(db_settings, path)
    assert fingerprint(sa_engine) == after_delete


def test_sqlite_backup_completes_while_another_connection_keeps_writing(sqlite_settings):
    settings, engine = sqlite_settings
    seed(engine, deliveries=20_000)
    inserted, errors, stop = [0], [], threading.Event()

    def keep_inserting():
        try:
            with engine.connect() as connection:
                while not stop.is_set():
                    connection.execute(insert(JobRun), {"name": "writer", "outcome": "success"})
                    connection.commit()
                    inserted[0] += 1
        except SQLAlchemyError as error:  # reported to the test below
            errors.append(error)

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    try:
        while inserted[0] < 10:
            threading.Event().wait(0.01)
        before = inserted[0]
        made = backup_database(settings)
        during = inserted[0] - before
    finally:
        stop.set()
        writer.join()

    assert errors == []
    assert made["verified"] and backup_problem(Path(made["file"])) is None
    assert during > 0, "the writer carried on while the backup ran"
    copy = make_engine(f"sqlite:///{made['file']}")
    try:
        with copy.connect() as connection:
            in_copy = connection.execute(text("SELECT count(*) FROM job_runs WHERE name = 'writer'")).scalar_one()
    finally:
        copy.dispose()
    assert before <= in_copy <= inserted[0], "the copy is one snapshot taken during the run"


def test_sqlite_restore_refuses_while_the_database_is_open(sqlite_settings):
    settings, engine = sqlite_settings
    seed(engine, deliveries=10)
    name = Path(backup_database(settings)["file"]).name
    with engine.connect() as connection:
        connection.execute(text("DELETE FROM tracking_events"))
        connection.commit()
        with pytest.raises(RestoreError, match="is in use .* stop the services"):
            restore_backup(settings, name)
        assert connection.execute(text("SELECT count(*) FROM tracking_events")).scalar_one() == 0
    assert not list(Path(engine.url.database).parent.glob("*.partial"))


def test_backup_removes_partial_files_left_by_a_killed_backup_a_day_ago(sqlite_settings):
    settings, _ = sqlite_settings
    now = datetime(2026, 3, 2, 2, 30, tzinfo=LOCAL_TIME)
    settings.backups_path.mkdir()
    killed = settings.backups_path / f"backup-{now - timedelta(hours=25):%Y%m%d-%H%M%S}.sqlite3.partial"
    running = settings.backups_path / f"backup-{now - timedelta(hours=1):%Y%m%d-%H%M%S}.dump.partial"
    killed.write_bytes(b"half")
    running.write_bytes(b"half")

    made = backup_database(settings, now=now)

    assert {path.name for path in settings.backups_path.iterdir()} == {Path(made["file"]).name, running.name}


def test_restore_refuses_a_backup_of_the_other_kind_of_database(db_settings, sa_engine, tmp_path):
    other = ".sqlite3" if sa_engine.dialect.name == "postgresql" else ".dump"
    stray = tmp_path / f"backup-20260101-023000{other}"
    stray.write_bytes(b"x")
    with pytest.raises(RestoreError, match="cannot be restored into"):
        restore_backup(db_settings, stray)


def test_password_stays_out_of_the_logs_and_the_result(db_settings, sa_engine, caplog):
    if sa_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no password")
    url = sa_engine.url.set(password="s3cret-pw-734").render_as_string(hide_password=False)
    with_password = db_settings.model_copy(update={"database_url": url})  # the test server trusts 127.0.0.1
    caplog.set_level(logging.DEBUG)
    made = backup_database(with_password)
    restored = restore_backup(with_password, made["file"])
    assert "s3cret-pw-734" not in caplog.text + repr(made) + repr(restored)
    assert "***" in restored["target"]


def test_missing_pg_dump_says_what_to_install(db_settings, sa_engine, tmp_path, monkeypatch):
    if sa_engine.dialect.name != "postgresql":
        pytest.skip("SQLite needs no program")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="pg_dump not found: install postgresql-client"):
        backup_database(db_settings)
    assert list(db_settings.backups_path.iterdir()) == []


def test_list_backups_says_what_rotation_keeps_each_for(db_settings):
    first = backup_database(db_settings, now=datetime(2026, 3, 2, 2, 30, tzinfo=LOCAL_TIME))
    second = backup_database(db_settings, now=datetime(2026, 3, 2, 14, 0, tzinfo=LOCAL_TIME))
    assert second["kept"] == [Path(second["file"]).name] and second["deleted"] == [Path(first["file"]).name]
    third = backup_database(db_settings, now=datetime(2026, 3, 3, 2, 30, tzinfo=LOCAL_TIME))
    listed = list_backups(db_settings)
    assert [(backup["name"], backup["kept_for"]) for backup in listed] == [
        (Path(third["file"]).name, ["daily", "weekly", "monthly"]),
        (Path(second["file"]).name, ["daily"]),
    ]
    assert listed[0]["taken_at"] == "2026-03-03T02:30:00+08:00" and listed[0]["size"] == third["size"]


# Rotation, against an expectation computed another way: the maximum of each period, last N periods.
PERIOD_KEYS = {"daily": lambda stamp: stamp.date(), "weekly": lambda stamp: tuple(stamp.isocalendar())[:2],
               "monthly": lambda stamp: (stamp.year, stamp.month)}


def expected_kept(stamps: list[datetime], keep: dict[str, int]) -> set[datetime]:
    kept = set()
    for period, count in keep.items():
        newest = {}
        for stamp in stamps:
            key = PERIOD_KEYS[period](stamp)
            newest[key] = max(newest.get(key, stamp), stamp)
        kept |= {newest[key] for key in sorted(newest)[-count:]} if count else set()
    return kept


@pytest.mark.parametrize("keep", [{"daily": 7, "weekly": 4, "monthly": 6}, {"daily": 3, "weekly": 0, "monthly": 2},
                                  {"daily": 30, "weekly": 10, "monthly": 1}])
def test_rotation_keeps_the_newest_of_each_day_week_and_month(tmp_path, keep):
    folder = tmp_path / "backups"
    folder.mkdir()
    chance = random.Random(6)
    start = datetime(2025, 11, 20, tzinfo=LOCAL_TIME)  # ISO week 2026-W01 starts on 2025-12-29
    stamps = sorted({start + timedelta(days=day, seconds=chance.randrange(86400))
                     for day in range(120) for _ in range(chance.choice([0, 1, 1, 2, 3]))})
    names = {f"backup-{stamp:%Y%m%d-%H%M%S}.{chance.choice(['dump', 'sqlite3'])}": stamp for stamp in stamps}
    for name in names:
        (folder / name).touch()
    foreign = ["notes.txt", "backup-latest.dump", "backup-20251120-000000.dump.partial", "backup-20251399-000000.dump",
               "Backup-20251120-000000.dump", "backup-20251120-000000.sqlite3.bak", "backup-20251120-000000.dump.gz"]
    for name in foreign:
        (folder / name).touch()
    outside = tmp_path / "outside.dump"
    outside.touch()
    (folder / "backup-20251121-000000.dump").symlink_to(outside)

    kept, deleted = rotate_backups(folder, keep)

    expected = {name for name, stamp in names.items() if stamp in expected_kept(stamps, keep)}
    assert set(kept) == expected and len(kept) == len(expected)
    assert set(deleted) == set(names) - expected
    assert {path.name for path in folder.iterdir()} == expected | set(foreign) | {"backup-20251121-000000.dump"}
    assert outside.exists()
    assert max(names, key=names.get) in kept, "the newest backup is always kept"


def test_optimize_reports_sizes_before_and_after(db_settings, sa_engine):
    seed(sa_engine, deliveries=500)
    with sa_engine.begin() as connection:
        connection.execute(text("DELETE FROM tracking_events WHERE delivery_id <= 250"))

    report = optimize_database(db_settings)

    assert report["size_before"] > 0 and report["size_after"] > 0 and report["seconds"] >= 0
    assert report["database"] == sa_engine.dialect.name
    if sa_engine.dialect.name == "postgresql":
        assert {"deliveries", "tracking_events", "job_runs", "reports"} <= set(report["tables"])
        assert all(sizes["before"] > 0 and sizes["after"] > 0 for sizes in report["tables"].values())
        with sa_engine.connect() as connection:
            vacuumed = connection.execute(text("SELECT last_vacuum IS NOT NULL AND last_analyze IS NOT NULL "
                                               "FROM pg_stat_user_tables WHERE relname = 'deliveries'")).scalar_one()
        assert vacuumed
    else:
        with sa_engine.connect() as connection:
            analyzed = connection.execute(text("SELECT count(*) FROM sqlite_stat1")).scalar_one()
        assert analyzed > 0
