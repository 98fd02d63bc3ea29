"""The scheduler run in the test process, on the embedded broker and SQLite: its history and what it published.

The session's in-process worker may be consuming the queues, so a sent run may already be running
or done: what was published is read from Celery's `after_task_publish` signal, not from the queue.
"""

from contextlib import contextmanager
from pathlib import Path

from celery.signals import after_task_publish
from sqlalchemy import inspect, make_url, select
from sqlalchemy.exc import DBAPIError

from app.core.database import make_engine, session_scope
from app.models import JobRun

HISTORY_COLUMNS = ("id", "name", "task_id", "due_at", "sent_at", "started_at", "finished_at", "outcome",
                   "lateness_seconds", "summary")


def tick_until_idle(scheduler, limit=20) -> None:
    for _ in range(limit):
        if scheduler.tick() > 0:
            return
    raise AssertionError("the scheduler kept sending")


def history(names=None) -> dict[str, list[JobRun]]:
    """The run history by job; only the jobs in `names` when given: a delayed run sent in an earlier
    test may start in this one, and starting writes a row for it."""
    query = select(JobRun).order_by(JobRun.id)
    if names is not None:
        query = query.where(JobRun.name.in_(list(names)))
    with session_scope() as session:
        runs = session.scalars(query).all()
    grouped: dict[str, list[JobRun]] = {}
    for run in runs:
        grouped.setdefault(run.name, []).append(run)
    return grouped


@contextmanager
def published():
    """The headers of every task message this process publishes meanwhile, by task id.

    Celery sends `after_task_publish` only once the broker took the message, so a publish the
    leader fence refused is not in it.
    """
    messages: dict[str, dict] = {}

    def keep(headers=None, **_):
        messages[headers["id"]] = headers

    after_task_publish.connect(keep, weak=False)
    try:
        yield messages
    finally:
        after_task_publish.disconnect(keep)


class CopyHistory:
    """The run history of a project copy, read from this process: what `Project.job_runs()` prints
    (times as ISO strings), without starting a Python process for every poll."""

    def __init__(self, database_url: str):
        url = make_url(database_url.replace("postgresql://", "postgresql+psycopg2://", 1))
        self.sqlite_file = Path(url.database) if url.get_backend_name() == "sqlite" else None
        self.engine = make_engine(url.render_as_string(hide_password=False))

    def runs(self) -> list[dict]:
        if self.sqlite_file and not self.sqlite_file.exists():
            return []  # not created yet (connecting would create it)
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(select(*(getattr(JobRun, c) for c in HISTORY_COLUMNS))
                                          .order_by(JobRun.id)).all()
        except DBAPIError:
            if inspect(self.engine).has_table(JobRun.__tablename__):
                raise
            return []  # the copy has not migrated yet
        return [{column: value.isoformat() if hasattr(value, "isoformat") else value
                 for column, value in zip(HISTORY_COLUMNS, row)} for row in rows]

    def close(self) -> None:
        self.engine.dispose()
