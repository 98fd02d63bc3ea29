"""A job's run history as the schedule page and `history` show it: its latest runs, its last day.

Every read goes through the (name, due_at) index: due runs by their due time, runs sent by hand
(no due time) by when they started, so a job with a long history costs no more than a short one.
"""

from dataclasses import asdict, dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Integer, column, select, text
from sqlalchemy.orm import sessionmaker

from app.core.config import TIMEZONE
from app.core.database import session_scope
from app.models import JobRun
from app.services.job_runs import LastRun

SHANGHAI = ZoneInfo(TIMEZONE)
TIMES = ("due_at", "sent_at", "started_at", "finished_at")
# Names per statement when the latest runs of many jobs are read (two index probes each).
NAMES_PER_STATEMENT = 200


@dataclass(frozen=True)
class RunRow:
    """One run of a job: when it fell due (None when sent by hand), was sent, started, finished, and how."""

    name: str
    task_id: str | None
    due_at: datetime | None
    sent_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str
    lateness_seconds: float | None
    summary: str | None

    @property
    def at(self) -> datetime | None:
        """When the run belongs: its due time, or for a run sent by hand its start."""
        return self.due_at or self.started_at or self.finished_at

    def as_dict(self) -> dict:
        """For JSON: times ISO 8601 in Asia/Shanghai with their offset."""
        row = asdict(self)
        for key in TIMES:
            row[key] = row[key].astimezone(SHANGHAI).isoformat(timespec="seconds") if row[key] else None
        return row


COLUMNS = [getattr(JobRun, field) for field in RunRow.__dataclass_fields__]


def recent_runs(factory: sessionmaker, name: str, last: int = 50, since: datetime | None = None) -> list[RunRow]:
    """The job's latest `last` runs (only those since `since`, when given), newest first."""
    due = select(*COLUMNS).where(JobRun.name == name, JobRun.due_at.is_not(None))
    by_hand = select(*COLUMNS).where(JobRun.name == name, JobRun.due_at.is_(None))
    if since is not None:
        due, by_hand = due.where(JobRun.due_at >= since), by_hand.where(JobRun.started_at >= since)
    with session_scope(factory) as session:
        rows = [RunRow(*row) for query in (due.order_by(JobRun.due_at.desc()).limit(last),
                                           by_hand.order_by(JobRun.id.desc()).limit(last))
                for row in session.execute(query)]
    return sorted(rows, key=lambda run: run.at, reverse=True)[:last]


def _latest_ids(count: int):
    """For `count` names (:n0, :n1 ...), the id of each one's latest due run and of its latest run sent by hand:
    two index probes per name. Plain SQL: built by SQLAlchemy, 200 subqueries cost more than running them."""
    probes = [f"SELECT id FROM (SELECT id FROM job_runs WHERE name = :n{i} AND due_at IS NOT NULL "
              f"ORDER BY due_at DESC LIMIT 1) AS due{i} UNION ALL SELECT id FROM (SELECT id FROM job_runs "
              f"WHERE name = :n{i} AND due_at IS NULL ORDER BY id DESC LIMIT 1) AS by_hand{i}" for i in range(count)]
    return text(" UNION ALL ".join(probes)).columns(column("id", Integer)).subquery()


def latest_runs(factory: sessionmaker, names: list[str]) -> dict[str, LastRun]:
    """The latest run of each of `names` (a page of jobs): its outcome and lateness."""
    found: dict[str, tuple[int, LastRun]] = {}
    with session_scope(factory) as session:
        for start in range(0, len(names), NAMES_PER_STATEMENT):
            chunk = names[start:start + NAMES_PER_STATEMENT]
            latest = select(_latest_ids(len(chunk)).c.id)
            rows = session.execute(select(JobRun.id, JobRun.name, JobRun.outcome, JobRun.lateness_seconds)
                                   .where(JobRun.id.in_(latest)), {f"n{i}": name for i, name in enumerate(chunk)})
            for run_id, name, outcome, lateness in rows:
                if name not in found or found[name][0] < run_id:
                    found[name] = (run_id, LastRun(outcome, lateness))
    return {name: run for name, (_, run) in found.items()}


def has_runs(factory: sessionmaker, name: str) -> bool:
    with session_scope(factory) as session:
        return session.scalar(select(JobRun.id).where(JobRun.name == name).limit(1)) is not None
