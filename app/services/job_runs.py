"""The run history of periodic jobs: when each run started and ended, and how."""

import json
from datetime import datetime

from sqlalchemy import select, update
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


def mark_lost_runs(factory: sessionmaker, started_before: datetime) -> list[str]:
    """Runs still 'running' that started before `started_before` (past any time limit) are lost; their jobs."""
    with session_scope(factory) as session:
        return list(session.scalars(update(JobRun)
                                    .where(JobRun.outcome == "running", JobRun.started_at < started_before)
                                    .values(outcome="lost", finished_at=utcnow())
                                    .returning(JobRun.name)))
