"""The run history of periodic jobs: when each run started and ended, and how."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import sessionmaker

from app.core.database import session_scope
from app.models import JobRun
from app.models.base import utcnow

SUMMARY_CHARS = 2000
SENT = "sent"
# A run beat has recorded and not published yet (it publishes right after, or retries).
SENDING = "sending"
LOST = "lost"
SKIPPED_OVERLAP = "skipped_overlap"
SKIPPED_MISSED = "skipped_missed"
UNFINISHED = (SENDING, SENT, "running")


@dataclass(frozen=True)
class LastRun:
    outcome: str
    lateness_seconds: float | None


class _JobMoved(Exception):
    """The job's row is no longer what beat read: nothing of this run may be written."""


@dataclass(frozen=True)
class BusyWindow:
    """Which unfinished runs of a job still block its next one under `overlap: skip`.

    A started run blocks while it may still be running (started since `started_since`: its time
    limit); a run not started yet blocks while it may still start (sent since `queued_since`).
    """

    started_since: datetime
    queued_since: datetime


def record_due_run(bind: Engine, name: str, due_at: datetime, now: datetime, *,
                   advance: Callable[[Connection], bool], outcome: str = SENDING, task_id: str | None = None,
                   unless_busy: BusyWindow | None = None) -> str | None:
    """Record what beat does with one due run and advance its job, in one transaction; the outcome
    recorded, or None when `advance` finds the job moved on (another beat, or the admin, changed it).

    `advance` is the job's compare-and-set: it runs first, so it also takes the job's row lock,
    and only the beat whose expectation still holds records the run. With `unless_busy`, an
    unfinished run of the job inside that window turns this one into `skipped_overlap`. Core
    statements on a connection, not a session: this is on every sending tick of beat.
    """
    try:
        with bind.begin() as connection:
            if not advance(connection):
                raise _JobMoved
            if unless_busy is not None and _in_progress(connection, name, unless_busy):
                outcome, task_id = SKIPPED_OVERLAP, None
            skipped = outcome != SENDING
            connection.execute(insert(JobRun).values(
                name=name, task_id=task_id, due_at=due_at, lateness_seconds=(now - due_at).total_seconds(),
                outcome=outcome, finished_at=now if skipped else None))
    except _JobMoved:
        return None
    return outcome


def _in_progress(connection: Connection, name: str, busy: BusyWindow) -> bool:
    started = and_(JobRun.started_at.is_not(None), JobRun.started_at >= busy.started_since)
    queued = and_(JobRun.started_at.is_(None), func.coalesce(JobRun.sent_at, JobRun.due_at) >= busy.queued_since)
    return connection.scalar(select(JobRun.id).where(
        JobRun.name == name, JobRun.outcome.in_(UNFINISHED), JobRun.finished_at.is_(None),
        or_(started, queued)).limit(1)) is not None


def mark_published(factory: sessionmaker, published: list[tuple[str, datetime, datetime]]) -> None:
    """Record when each (task id, due, publish time) went out; a worker that already started one keeps its outcome."""
    if not published:
        return
    statement = update(JobRun).where(JobRun.task_id == bindparam("published_id")).values(
        sent_at=bindparam("published_at"), lateness_seconds=bindparam("lateness"),
        outcome=case((JobRun.outcome == SENDING, SENT), else_=JobRun.outcome))
    with session_scope(factory) as session:
        session.connection().execute(statement, [
            {"published_id": task_id, "published_at": sent_at, "lateness": (sent_at - due_at).total_seconds()}
            for task_id, due_at, sent_at in published])


def mark_unpublished(factory: sessionmaker, task_id: str, reason: str) -> None:
    """A recorded run that was never published: it is lost, and says why."""
    with session_scope(factory) as session:
        session.execute(update(JobRun).where(JobRun.task_id == task_id, JobRun.outcome == SENDING)
                        .values(outcome=LOST, finished_at=utcnow(), summary=reason[:SUMMARY_CHARS]))


def last_runs(factory: sessionmaker) -> dict[str, LastRun]:
    """The latest recorded run of every job: its outcome and lateness."""
    latest = select(func.max(JobRun.id)).group_by(JobRun.name)
    with session_scope(factory) as session:
        rows = session.execute(select(JobRun.name, JobRun.outcome, JobRun.lateness_seconds)
                               .where(JobRun.id.in_(latest)))
        return {name: LastRun(outcome, lateness) for name, outcome, lateness in rows}


def start_run(factory: sessionmaker, name: str, task_id: str) -> None:
    """Record a run as started: the row beat wrote when it sent it, or a new one for a run sent by
    hand; a redelivered message restarts its existing row."""
    with session_scope(factory) as session:
        started = session.execute(update(JobRun)
                                  .where(JobRun.task_id == task_id, JobRun.finished_at.is_(None))
                                  .values(started_at=utcnow(), outcome="running"))
        if started.rowcount == 0:
            session.add(JobRun(name=name, task_id=task_id, started_at=utcnow(), outcome="running"))


def finish_run(factory: sessionmaker, task_id: str, outcome: str, summary) -> None:
    text = summary if isinstance(summary, str) else json.dumps(summary, ensure_ascii=False, default=repr)
    with session_scope(factory) as session:
        session.execute(update(JobRun)
                        .where(JobRun.task_id == task_id, JobRun.finished_at.is_(None))
                        .values(finished_at=utcnow(), outcome=outcome, summary=text[:SUMMARY_CHARS]))


def mark_lost_runs(factory: sessionmaker, started_before: datetime,
                   slow_jobs: dict[str, datetime] | None = None) -> list[str]:
    """Runs sent or started before `started_before` (past any time limit) and not finished are lost; their jobs.

    `slow_jobs` gives jobs with a longer time limit of their own a cut-off of their own.
    """
    slow_jobs = slow_jobs or {}
    began = func.coalesce(JobRun.started_at, JobRun.sent_at, JobRun.due_at)
    stuck = began < started_before
    if slow_jobs:
        stuck = and_(stuck, JobRun.name.not_in(list(slow_jobs)))
        stuck = or_(stuck, *(and_(JobRun.name == name, began < cutoff) for name, cutoff in slow_jobs.items()))
    with session_scope(factory) as session:
        return list(session.scalars(update(JobRun)
                                    .where(JobRun.outcome.in_(UNFINISHED), JobRun.finished_at.is_(None), stuck)
                                    .values(outcome=LOST, finished_at=utcnow())
                                    .returning(JobRun.name)))
