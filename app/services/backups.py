"""Database backups: pg_dump or an online SQLite copy, verified, rotated daily/weekly/monthly; and restore.

Backups are named `backup-YYYYmmdd-HHMMSS.dump` (PostgreSQL, custom format) or `….sqlite3`, in
Asia/Shanghai time, under BACKUPS_DIR. Only files with such a name are ever rotated or deleted.
"""

import logging
import os
import re
import shutil
import sqlite3
import subprocess
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy.engine import URL, make_url

from app.core.config import TIMEZONE, Settings
from app.services.errors import MissingDependencyError, PermanentError

log = logging.getLogger(__name__)

LOCAL_TIME = ZoneInfo(TIMEZONE)
STAMP_FORMAT = "%Y%m%d-%H%M%S"
BACKUP_NAME = re.compile(r"backup-(\d{8}-\d{6})\.(dump|sqlite3)")
PARTIAL_NAME = re.compile(r"backup-(\d{8}-\d{6})\.(dump|sqlite3)\.partial")
SUFFIXES = {"postgresql": "dump", "sqlite": "sqlite3"}
KINDS = {f".{suffix}": kind for kind, suffix in SUFFIXES.items()}
# A partial file this old belongs to a backup that was killed (a hard time limit, a crash).
STALE_PARTIAL_AGE = timedelta(days=1)
# Long enough for a busy worker's write to finish, short enough to fail fast while services run.
SQLITE_LOCK_TIMEOUT = 2.0
STDERR_TAIL = 800
PERIODS = {
    "daily": lambda taken_at: taken_at.date(),
    "weekly": lambda taken_at: taken_at.isocalendar()[:2],
    "monthly": lambda taken_at: (taken_at.year, taken_at.month),
}


class BackupError(Exception):
    """pg_dump or the copy failed, or the new backup did not verify: worth another try later."""


class RestoreError(PermanentError):
    """The restore was refused or failed; the message says why and what to do."""


@dataclass(frozen=True)
class Backup:
    path: Path
    taken_at: datetime  # from the name, Asia/Shanghai


def backup_database(settings: Settings, now: datetime | None = None) -> dict:
    """Write a verified backup of the database to BACKUPS_DIR, then rotate the older ones."""
    started = time.monotonic()
    url = make_url(settings.sqlalchemy_url)
    folder = settings.backups_path
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    taken_at = (now or datetime.now(LOCAL_TIME)).astimezone(LOCAL_TIME)
    _remove_stale_partials(folder, taken_at)
    path = folder / f"backup-{taken_at:{STAMP_FORMAT}}.{SUFFIXES[url.get_backend_name()]}"
    _write_verified_backup(url, path)
    kept, deleted = rotate_backups(folder, keep_counts(settings))
    size, seconds = path.stat().st_size, round(time.monotonic() - started, 3)
    log.info("backup %s written and verified: %d bytes in %.1f s; rotation deleted %d", path.name, size, seconds,
             len(deleted))
    return {"file": str(path), "size": size, "seconds": seconds, "verified": True, "kept": kept, "deleted": deleted}


def _write_verified_backup(url: URL, path: Path) -> None:
    """1. Write `<name>.partial`, private before any data; 2. verify it; 3. fsync and rename.

    A file under a backup name is therefore always complete and verified.
    """
    partial = path.with_name(path.name + ".partial")
    _create_private(partial)
    try:
        if url.get_backend_name() == "postgresql":
            _dump_postgres(url, partial)
        else:
            _copy_sqlite(_sqlite_file(url), partial)
        problem = _problem(url.get_backend_name(), partial)
        if problem:
            raise BackupError(f"the new backup failed verification and was deleted: {problem}")
        _fsync(partial)
        os.rename(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    _fsync(path.parent)


def _dump_postgres(url: URL, target: Path) -> None:
    # gzip level 1: the default level 6 makes pg_dump CPU-bound for a small gain in size.
    # No --no-owner: pg_dump ignores it for archive formats; pg_restore gets it instead.
    completed = _pg_tool("pg_dump", "--format=custom", "--compress=1", f"--file={target}",
                         f"--dbname={_libpq_uri(url)}", password=url.password)
    if "server version mismatch" in completed.stderr:
        raise MissingDependencyError(f"pg_dump is older than the server: install a newer postgresql-client "
                                     f"({_tail(completed.stderr)})")
    if completed.returncode:
        raise BackupError(f"pg_dump exited with {completed.returncode}: {_tail(completed.stderr)}")


def _copy_sqlite(database: Path, target: Path) -> None:
    """VACUUM INTO: one read transaction, so the copy is one snapshot and WAL writers carry on meanwhile.

    The backup API would restart on every write made by another connection unless it copied every
    page in one step; VACUUM INTO does that too, and its copy is compact (no free pages).
    """
    with closing(sqlite3.connect(_sqlite_uri(database, "rw"), uri=True, timeout=SQLITE_LOCK_TIMEOUT,
                                 isolation_level=None)) as connection:
        connection.execute("VACUUM INTO ?", (str(target),))


def backup_problem(path: Path) -> str | None:
    """Why this backup could not be restored, or None when it verifies."""
    return _problem(_kind(path), path)


def _problem(kind: str, path: Path) -> str | None:
    return _postgres_problem(path) if kind == "postgresql" else _sqlite_problem(path)


def _postgres_problem(path: Path) -> str | None:
    # Reading the whole archive: `pg_restore --list` reads only its table of contents, and passes a
    # file truncated or damaged anywhere in the data.
    completed = _pg_tool("pg_restore", f"--file={os.devnull}", str(path))
    return _tail(completed.stderr) if completed.returncode else None


def _sqlite_problem(path: Path) -> str | None:
    try:
        with closing(sqlite3.connect(_sqlite_uri(path, "ro"), uri=True)) as connection:
            tables = connection.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            findings = [row[0] for row in connection.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as error:
        return f"not a readable SQLite database ({error})"
    if not tables:
        return "no tables in it"
    return None if findings == ["ok"] else "; ".join(findings[:5])


def rotate_backups(folder: Path, keep: dict[str, int]) -> tuple[list[str], list[str]]:
    """Delete every backup that no period keeps; the names kept and deleted, newest first."""
    backups = find_backups(folder)
    reasons = retention(backups, keep)
    deleted = []
    for backup in backups:
        if backup.path.name not in reasons:
            backup.path.unlink(missing_ok=True)
            deleted.append(backup.path.name)
    return [backup.path.name for backup in backups if backup.path.name in reasons], deleted


def retention(backups: list[Backup], keep: dict[str, int]) -> dict[str, list[str]]:
    """Name -> the periods that keep it: the newest backup of each of the newest N days, ISO weeks, months."""
    reasons: dict[str, list[str]] = {}
    for period, count in keep.items():
        for backup in _newest_of_each(backups, PERIODS[period])[:count]:
            reasons.setdefault(backup.path.name, []).append(period)
    return reasons


def _newest_of_each(backups: list[Backup], period_of) -> list[Backup]:
    """The newest backup of each period, newest period first (`backups` is sorted newest first)."""
    newest: dict = {}
    for backup in backups:
        newest.setdefault(period_of(backup.taken_at), backup)
    return list(newest.values())


def keep_counts(settings: Settings) -> dict[str, int]:
    return {"daily": settings.backup_keep_daily, "weekly": settings.backup_keep_weekly,
            "monthly": settings.backup_keep_monthly}


def find_backups(folder: Path) -> list[Backup]:
    """The files of `folder` named like our backups (never a symlink), newest first."""
    if not folder.is_dir():
        return []
    backups = []
    for path in folder.iterdir():
        taken_at = _stamp(BACKUP_NAME, path.name)
        if taken_at and path.is_file() and not path.is_symlink():
            backups.append(Backup(path, taken_at))
    return sorted(backups, key=lambda backup: backup.taken_at, reverse=True)


def _stamp(pattern: re.Pattern, name: str) -> datetime | None:
    match = pattern.fullmatch(name)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(1), STAMP_FORMAT).replace(tzinfo=LOCAL_TIME)
    except ValueError:  # digits that are no date: not ours
        return None


def _remove_stale_partials(folder: Path, now: datetime) -> None:
    for path in folder.iterdir():
        started = _stamp(PARTIAL_NAME, path.name)
        if started and started < now - STALE_PARTIAL_AGE and path.is_file() and not path.is_symlink():
            log.warning("removing %s, left by a backup that did not finish", path.name)
            path.unlink(missing_ok=True)


def list_backups(settings: Settings) -> list[dict]:
    """Every backup in BACKUPS_DIR, newest first, with the periods rotation keeps it for."""
    backups = find_backups(settings.backups_path)
    reasons = retention(backups, keep_counts(settings))
    return [{"name": backup.path.name, "path": str(backup.path), "size": backup.path.stat().st_size,
             "taken_at": backup.taken_at.isoformat(), "database": _kind(backup.path),
             "kept_for": reasons.get(backup.path.name, [])} for backup in backups]


def restore_backup(settings: Settings, file: Path | str, target_url: str | None = None) -> dict:
    """Replace the target database (DATABASE_URL by default) with a backup, verified first.

    The services must be stopped: on SQLite the restore refuses while another connection has the
    file open; on PostgreSQL it runs in one transaction, so it either completes or changes nothing.
    """
    started = time.monotonic()
    backup = _backup_file(settings, Path(file))
    url = restore_target(settings, target_url)
    kind, target_kind = _kind(backup), url.get_backend_name()
    if kind != target_kind:
        raise RestoreError(f"{backup.name} is a {kind} backup; it cannot be restored into {target_kind}")
    if kind == "postgresql":
        _restore_postgres(backup, url)
    else:
        _restore_sqlite(backup, _sqlite_file(url, must_exist=False))
    seconds = round(time.monotonic() - started, 3)
    target = url.render_as_string(hide_password=True)
    log.warning("restored %s into %s in %.1f s", backup.name, target, seconds)
    return {"file": str(backup), "target": target, "seconds": seconds}


def restore_target(settings: Settings, target_url: str | None = None) -> URL:
    """The database a restore replaces: `target_url`, or DATABASE_URL (the embedded SQLite file by default)."""
    if target_url:
        settings = settings.model_copy(update={"database_url": target_url})
    url = make_url(settings.sqlalchemy_url)
    return url.set(drivername=url.get_backend_name())


def _backup_file(settings: Settings, file: Path) -> Path:
    """The file as given, or a backup of that name in BACKUPS_DIR."""
    for candidate in (file, settings.backups_path / file):
        if candidate.is_file():
            return candidate
    raise RestoreError(f"no such backup: {file} ('celery_beat_manager.py backups list' shows them)")


def _kind(path: Path) -> str:
    if path.suffix not in KINDS:
        raise RestoreError(f"{path.name} is not a backup: expected a .dump (PostgreSQL) or .sqlite3 (SQLite) file")
    return KINDS[path.suffix]


def _restore_postgres(backup: Path, url: URL) -> None:
    problem = _postgres_problem(backup)
    if problem:
        raise RestoreError(f"{backup.name} failed verification, nothing was restored: {problem}")
    completed = _pg_tool("pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction",
                         f"--dbname={_libpq_uri(url)}", str(backup), password=url.password)
    if completed.returncode:
        raise RestoreError(f"pg_restore failed; the database is unchanged: {_tail(completed.stderr)}")


def _restore_sqlite(backup: Path, database: Path) -> None:
    """1. Copy the backup next to the database; 2. verify the copy; 3. rename it over the database
    while holding the database exclusively."""
    database.parent.mkdir(parents=True, exist_ok=True)
    staged = database.with_name(database.name + ".restore.partial")
    _create_private(staged)
    try:
        shutil.copyfile(backup, staged)
        problem = _sqlite_problem(staged)
        if problem:
            raise RestoreError(f"{backup.name} failed verification, nothing was restored: {problem}")
        if database.exists():
            shutil.copymode(database, staged)
        _fsync(staged)
        with _sole_user(database):
            os.replace(staged, database)
    finally:
        staged.unlink(missing_ok=True)
    _fsync(database.parent)


@contextmanager
def _sole_user(database: Path):
    """Hold the database exclusively, or refuse: leaving WAL mode needs every other connection closed.

    Leaving WAL mode also removes the -wal and -shm files, which must not outlive the file they belong to.
    """
    if not database.exists():
        yield
        return
    with closing(sqlite3.connect(_sqlite_uri(database, "rw"), uri=True, timeout=SQLITE_LOCK_TIMEOUT,
                                 isolation_level=None)) as connection:
        try:
            connection.execute("PRAGMA journal_mode=DELETE")
            connection.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as error:
            raise RestoreError(f"{database} is in use ({error}): stop the services "
                               "(celery_beat_manager.py stop --service all), then restore") from None
        yield


def _pg_tool(program: str, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    """Run pg_dump or pg_restore; a password goes through PGPASSWORD, never the command line."""
    executable = shutil.which(program)
    if executable is None:
        raise MissingDependencyError(f"{program} not found: install postgresql-client "
                                     "(the server's major version or newer)")
    environment = {**os.environ, "PGPASSWORD": password} if password else None
    return subprocess.run([executable, *args], check=False, env=environment, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _libpq_uri(url: URL) -> str:
    """The URL as libpq reads it, without the password."""
    return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)


def _sqlite_file(url: URL, must_exist: bool = True) -> Path:
    database = Path(url.database or "")
    if must_exist and not database.is_file():
        raise PermanentError(f"no SQLite database at {database}")
    return database


def _sqlite_uri(path: Path, mode: str) -> str:
    return f"{path.resolve().as_uri()}?mode={mode}"


def _create_private(path: Path) -> None:
    """An empty file only its owner can read, made before any data is written to it."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(path, 0o600)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _tail(stderr: str) -> str:
    return " ".join(stderr.strip().split())[-STDERR_TAIL:] or "no message"
