"""The run history of periodic jobs: when each run started and ended, and how."""

import json
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import sessionmaker

from app.core.database import session_scope
from app.models import JobRun
from app.models.base import utcnow

SUMMARY_CHARS = 2000


def start_run(factory: sessionmaker, name: str, task_id: str) -> None:
    """Record a run as started; a redelivered message restarts its existing row."""
    with session_scope(factory) as session:
        run = session.scalar(select(JobRun).where(JobRun.task_id == task_id, JobRun.finished_at.is_(None)))
        if run is None:
            session.add(JobRun(name=name, task_id=task_id, started_at=utcnow(), outcome="running"))
        else:
            run.started_at = utcnow()


def finish_run(factory: sessionmaker, task_id: str, outcome: str, summary) -> None:
    text = summary if isinstance(summary, str) else json.dumps(summary, ensure_ascii=False, default=repr)
    with session_scope(factory) as session:
        session.execute(update(JobRun)
                        .where(JobRun.task_id == task_id, JobRun.finished_at.is_(None))
                        .values(finished_at=utcnow(), outcome=outcome, summary=text[:SUMMARY_CHARS]))


def mark_lost_runs(factory: sessionmaker, started_before: datetime,
                   slow_jobs: dict[str, datetime] | None = None) -> list[str]:
    """Runs still 'running' that started before `started_before` (past any time limit) are lost; their jobs.

    `slow_jobs` gives jobs with a longer time limit of their own a cut-off of their own.
    """
    slow_jobs = slow_jobs or {}
    stuck = JobRun.started_at < started_before
    if slow_jobs:
        stuck = and_(stuck, JobRun.name.not_in(list(slow_jobs)))
        stuck = or_(stuck, *(and_(JobRun.name == name, JobRun.started_at < cutoff) for name, cutoff in slow_jobs.items()))
    with session_scope(factory) as session:
        return list(session.scalars(update(JobRun)
                                    .where(JobRun.outcome == "running", stuck)
                                    .values(outcome="lost", finished_at=utcnow())
                                    .returning(JobRun.name)))
