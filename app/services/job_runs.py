"""The run history of periodic jobs: when each run started and ended, and how."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.core.database import session_scope
from app.models import JobRun
from app.models.base import utcnow

SUMMARY_CHARS = 2000
SENT = "sent"
# A run beat has recorded but could not publish yet; it retries.
SENDING = "sending"
SKIPPED_OVERLAP = "skipped_overlap"
SKIPPED_MISSED = "skipped_missed"
UNFINISHED = (SENDING, SENT, "running")


@dataclass(frozen=True)
class LastRun:
    outcome: str
    lateness_seconds: float | None


def record_due_run(factory: sessionmaker, name: str, due_at: datetime, now: datetime, outcome: str = SENT,
                   task_id: str | None = None, unless_running_since: datetime | None = None,
                   alongside: Callable[[Session], object] | None = None) -> str | None:
    """Record what beat does with one due run, in one transaction; the outcome recorded, or None
    when that run is recorded already.

    (name, due_at) is unique: a second beat, or a beat that lost its lease while paused, can
    never record, and so never send, a run that another one has. With `unless_running_since`, a
    run of the job recorded since then and not finished turns this one into `skipped_overlap`.
    `alongside` writes more in the same transaction.
    """
    try:
        with session_scope(factory) as session:
            if unless_running_since is not None and _in_progress(session, name, unless_running_since):
                outcome, task_id = SKIPPED_OVERLAP, None
            sent = outcome == SENT
            session.add(JobRun(name=name, task_id=task_id, due_at=due_at, started_at=None,
                               sent_at=now if sent else None, lateness_seconds=(now - due_at).total_seconds(),
                               outcome=outcome, finished_at=None if sent else now))
            session.flush()
            if alongside is not None:
                alongside(session)
    except IntegrityError:
        return None
    return outcome


def _in_progress(session, name: str, since: datetime) -> bool:
    return session.scalar(select(JobRun.id).where(
        JobRun.name == name, JobRun.outcome.in_(UNFINISHED), JobRun.finished_at.is_(None),
        func.coalesce(JobRun.started_at, JobRun.sent_at, JobRun.due_at) >= since).limit(1)) is not None


def mark_unsent(factory: sessionmaker, task_id: str) -> None:
    """The publish of a recorded run failed; it stays `sending` until a retry publishes it."""
    with session_scope(factory) as session:
        session.execute(update(JobRun).where(JobRun.task_id == task_id, JobRun.outcome == SENT)
                        .values(outcome=SENDING, sent_at=None))


def mark_sent(factory: sessionmaker, task_id: str, due_at: datetime, sent_at: datetime) -> None:
    """Record the publish; a worker that already started the run keeps its own outcome."""
    with session_scope(factory) as session:
        session.execute(update(JobRun).where(JobRun.task_id == task_id).values(
            sent_at=sent_at, lateness_seconds=(sent_at - due_at).total_seconds(),
            outcome=case((JobRun.outcome == SENDING, "sent"), else_=JobRun.outcome)))


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
                                    .values(outcome="lost", finished_at=utcnow())
                                    .returning(JobRun.name)))
