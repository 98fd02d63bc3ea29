"""Stalled periodic jobs: a job that has not succeeded within twice its interval is an incident.

Measured from the job's last successful run; a job that never succeeded is measured from the
moment beat first scheduled its current definition, so a fresh install, or a job just added,
has two intervals to run before it counts as stalled.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from celery.schedules import crontab
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from app.core.config import TIMEZONE
from app.core.database import session_scope
from app.models import JobRun
from app.services.alerts import CRITICAL, clear_incident, open_keys, raise_incident

STALL_PREFIX = "stall:"
GRACE_INTERVALS = 2
SHANGHAI = ZoneInfo(TIMEZONE)


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    schedule: crontab
    scheduled_since: datetime  # when beat first scheduled the job's current definition


@dataclass(frozen=True)
class Stall:
    job: str
    since: datetime  # the last success, or when it was scheduled if it never succeeded
    interval: timedelta
    never_succeeded: bool

    @property
    def summary(self) -> str:
        since = self.since.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
        what = "从未成功 / never succeeded since scheduled at" if self.never_succeeded else "最后成功 / last success at"
        return (f"{self.job} 超过两个周期未成功 / no success within twice its interval ({_words(self.interval)}): "
                f"{what} {since} (Asia/Shanghai)")


def _words(interval: timedelta) -> str:
    minutes = int(interval.total_seconds() // 60)
    if minutes % (24 * 60) == 0:
        return f"{minutes // (24 * 60)} d"
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def next_fire(schedule: crontab, after: datetime) -> datetime:
    """The first time strictly after `after` that `schedule` fires, in Asia/Shanghai."""
    start, delta, _ = schedule.remaining_delta(after, tz=TIMEZONE)
    return start + delta


def interval_at(schedule: crontab, now: datetime) -> timedelta:
    """The time between the two fire times that follow `now` (a week for a weekly job)."""
    first = next_fire(schedule, now)
    return next_fire(schedule, first) - first


def find_stall(job: ScheduledJob, last_success: datetime | None, now: datetime) -> Stall | None:
    """The job's stall, if its last success (or its scheduling) is older than twice its interval."""
    interval = interval_at(job.schedule, now)
    since = last_success or job.scheduled_since
    if now - since <= GRACE_INTERVALS * interval:
        return None
    return Stall(job.name, since, interval, never_succeeded=last_success is None)


def last_successes(factory: sessionmaker, names: list[str]) -> dict[str, datetime]:
    """When each job last finished a successful run (jobs without one are absent)."""
    with session_scope(factory) as session:
        rows = session.execute(select(JobRun.name, func.max(JobRun.finished_at))
                               .where(JobRun.name.in_(names), JobRun.outcome == "success")
                               .group_by(JobRun.name))
        return {name: finished for name, finished in rows if finished is not None}


def check_stalls(factory: sessionmaker, jobs: list[ScheduledJob], now: datetime,
                 webhook_url: str | None) -> list[str]:
    """Raise `stall:<job>` for each stalled job, clear every other open stall; the stalled names."""
    successes = last_successes(factory, [job.name for job in jobs])
    stalls = [stall for job in jobs if (stall := find_stall(job, successes.get(job.name), now))]
    for stall in stalls:
        raise_incident(factory, STALL_PREFIX + stall.job, CRITICAL, stall.summary, now, webhook_url=webhook_url)
    stalled_keys = {STALL_PREFIX + stall.job for stall in stalls}
    # Includes jobs since disabled or removed: nobody expects them to run any more.
    for key in open_keys(factory, STALL_PREFIX) - stalled_keys:
        clear_incident(factory, key, now, webhook_url=webhook_url)
    return [stall.job for stall in stalls]
