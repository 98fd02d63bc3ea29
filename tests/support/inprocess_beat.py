"""The scheduler run in the test process, on the embedded broker and SQLite: its history and what it published.

The session's in-process worker may be consuming the queues, so a sent run may already be running
or done, and a delayed message may be waiting in the worker (the broker's `unacked` hash).
"""

import json

from sqlalchemy import select

from app.core.database import session_scope
from app.models import JobRun


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


def published(broker, queue: str) -> dict[str, dict]:
    """The headers of the messages in `queue` or held by a worker, by task id."""
    messages = [json.loads(raw) for raw in broker.lrange(queue, 0, -1)]
    messages += [json.loads(raw)[0] for raw in broker.hvals("unacked")]
    return {message["headers"]["id"]: message["headers"] for message in messages}
