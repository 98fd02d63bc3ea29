"""The SQLAlchemy engine and session scope, on DATABASE_URL or the embedded SQLite file."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, Result
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings, get_settings
from app.core.network import libpq_options

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_tuning(busy_timeout_ms: int):
    def tune(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
    return tune


def make_engine(url: str, wait_limit_ms: int | None = None, network_timeout: float = 10.0) -> Engine:
    """An engine for `url`; SQLite gets WAL and a busy timeout so workers and beat can share it.

    A PostgreSQL connection gives a silent server up after `network_timeout` seconds (connect
    timeout, TCP keepalives, tcp_user_timeout). With `wait_limit_ms`, no lock wait, statement or
    stall inside a transaction lasts longer (PostgreSQL's lock, statement and idle-in-transaction
    timeouts; SQLite's busy timeout), and connections are not pinged before use: a dead one fails
    its transaction, which is retried.
    """
    if url.startswith("sqlite"):
        busy_ms = wait_limit_ms or SQLITE_BUSY_TIMEOUT_MS
        engine = create_engine(url, connect_args={"timeout": busy_ms / 1000})
        event.listen(engine, "connect", _sqlite_tuning(busy_ms))
        return engine
    connect_args = libpq_options(network_timeout)
    if wait_limit_ms:
        connect_args["options"] = " ".join(
            f"-c {name}={int(wait_limit_ms)}"
            for name in ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout"))
        return create_engine(url, connect_args=connect_args, pool_size=1, max_overflow=1)
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True, pool_size=5, max_overflow=5)


class AppEngine:
    """The engine, plus the 1.x-style `execute` that the seed's troubleshooting one-liner calls."""

    def __init__(self, engine: Engine):
        self.sa_engine = engine

    def __getattr__(self, name):
        return getattr(self.sa_engine, name)

    def execute(self, statement: str, parameters: dict | None = None) -> Result:
        with self.sa_engine.begin() as connection:
            result = connection.execute(text(statement), parameters or {})
            return result.freeze()() if result.returns_rows else result


def _ensure_sqlite_dir(settings: Settings) -> None:
    if settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)


_settings = get_settings()
_ensure_sqlite_dir(_settings)
engine = AppEngine(make_engine(_settings.sqlalchemy_url, network_timeout=_settings.network_timeout))
SessionFactory = sessionmaker(bind=engine.sa_engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker | None = None) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    session = (factory or SessionFactory)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
