"""Run counts and lateness buckets per job and outcome, summed in SQL, for the metrics endpoint.

A run that finished a while ago never changes again: it is summed once and kept in this process,
and each scrape sums only the runs recorded since (a range of the primary key). So a scrape costs
the new runs, not the whole history, and a counter never goes down when the retention cleanup
deletes old runs (Prometheus would read a drop as a counter reset and count the rest again). A new
admin process starts from the runs the table holds then.
"""

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.engine import Connection, Engine

from app.models import JobRun
from app.services.job_runs import UNFINISHED

# Upper bounds (seconds) of the lateness histogram's buckets: beat sends within a second; the
# default grace of a missed run is 300 s.
LATENESS_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)
# A run finished this long ago is settled: beat notes when it published a run after the run's
# worker may already have finished it, and a transaction still open past this is long given up.
SETTLE = timedelta(minutes=15)

_COUNT, _LATE_COUNT, _LATE_SUM, _LAST_FINISHED, _BUCKETS = range(5)


@dataclass
class JobTotals:
    """One job's finished runs by outcome, and the lateness of its sent runs (cumulative buckets)."""

    outcomes: dict[str, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENESS_BUCKETS))
    late_count: int = 0
    late_sum: float = 0.0
    last_success: datetime | None = None


def _sums(connection: Connection, above: int, upto: int | None) -> dict[tuple[str, str], list]:
    """(name, outcome) -> [runs, sent runs, their lateness summed, last finish, bucket counts ...]
    of the runs with `above` < id <= `upto`."""
    sent = and_(JobRun.sent_at.is_not(None), JobRun.lateness_seconds.is_not(None))
    columns = [func.count(), func.sum(case((sent, 1), else_=0)),
               func.sum(case((sent, JobRun.lateness_seconds), else_=0.0)), func.max(JobRun.finished_at),
               *(func.sum(case((and_(sent, JobRun.lateness_seconds <= bound), 1), else_=0))
                 for bound in LATENESS_BUCKETS)]
    query = select(JobRun.name, JobRun.outcome, *columns).where(JobRun.id > above)
    if upto is not None:
        query = query.where(JobRun.id <= upto)
    rows = connection.execute(query.group_by(JobRun.name, JobRun.outcome))
    return {(name, outcome): list(values) for name, outcome, *values in rows}


def _add(into: dict[str, list], sums: dict[str, list]) -> None:
    """Add one job's sums by outcome to `into`."""
    for outcome, values in sums.items():
        kept = into.get(outcome)
        if kept is None:
            into[outcome] = list(values)
            continue
        for index, value in enumerate(values):
            if index == _LAST_FINISHED:
                kept[index] = max(filter(None, (kept[index], value)), default=None)
            else:
                kept[index] += value or 0


def _by_name(sums: dict[tuple[str, str], list]) -> dict[str, dict[str, list]]:
    grouped: dict[str, dict[str, list]] = {}
    for (name, outcome), values in sums.items():
        grouped.setdefault(name, {})[outcome] = values
    return grouped


class RunTotals:
    """The running totals of one process; `read` is safe from several threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._settled: dict[str, dict[str, list]] = {}  # job -> outcome -> sums of its settled runs
        self._jobs: dict[str, JobTotals] = {}  # the same, as totals
        self._watermark = 0  # every run with an id up to this is summed in _settled

    def read(self, bind: Engine, now: datetime) -> dict[str, JobTotals]:
        """Every job's totals: the settled runs kept from before, plus the runs recorded since. A job
        without new runs keeps its JobTotals object from one read to the next."""
        with self._lock, bind.connect() as connection:
            newest = connection.scalar(select(func.max(JobRun.id))) or 0
            # SQLite numbers a new row after the highest left: with the newest rows deleted, ids below
            # the watermark would be given out again.
            self._watermark = min(self._watermark, newest)
            unsettled = connection.scalar(select(func.min(JobRun.id)).where(
                JobRun.id > self._watermark, or_(JobRun.finished_at.is_(None), JobRun.finished_at > now - SETTLE)))
            settled_upto = unsettled - 1 if unsettled is not None else newest
            if settled_upto > self._watermark:
                for name, sums in _by_name(_sums(connection, self._watermark, settled_upto)).items():
                    _add(self._settled.setdefault(name, {}), sums)
                    self._jobs[name] = _totals(self._settled[name])
                self._watermark = settled_upto
            jobs = dict(self._jobs)
            for name, sums in _by_name(_sums(connection, self._watermark, None)).items():
                current = {outcome: list(values) for outcome, values in self._settled.get(name, {}).items()}
                _add(current, sums)
                jobs[name] = _totals(current)
        return jobs


def _totals(sums: dict[str, list]) -> JobTotals:
    job = JobTotals()
    for outcome, values in sums.items():
        if outcome not in UNFINISHED:
            job.outcomes[outcome] = values[_COUNT]
        job.late_count += values[_LATE_COUNT]
        job.late_sum += values[_LATE_SUM]
        job.buckets = [kept + new for kept, new in zip(job.buckets, values[_BUCKETS:])]
        if outcome == "success" and values[_LAST_FINISHED] is not None:
            job.last_success = values[_LAST_FINISHED]
    return job
