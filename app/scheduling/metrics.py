"""Prometheus metrics of the schedule, read on each scrape from the run history, the schedule and the broker.

Served by the admin at /metrics (app/scheduling/views.py), written by the official prometheus_client.
Nothing is counted in this process: what lives in the database and the broker is read from them.
With 10,000 jobs a scrape has some 150,000 lines, and formatting them is most of its cost, while
few jobs change between two scrapes. So each job's lines of a family are formatted by
prometheus_client when the job's values change and reused while they do not; the beats' and the
queues' few lines come from a custom collector, afresh every time.
"""

import logging
import threading
from collections.abc import Callable
from datetime import datetime

import redis
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from app.core.config import get_settings
from app.core.database import engine
from app.scheduling.overview import due_after
from app.scheduling.run_totals import LATENESS_BUCKETS, JobTotals, RunTotals

log = logging.getLogger(__name__)

# The outcomes every job with runs reports, zero until one happens, so that increase() sees the first.
OUTCOMES = ("success", "failure", "lost", "skipped_overlap", "skipped_missed")
SCHEDULE_KINDS = {"crontab": CrontabSchedule, "interval": IntervalSchedule, "solar": SolarSchedule,
                  "clocked": ClockedSchedule}
BUCKET_LABELS = [*map(floatToGoString, LATENESS_BUCKETS), "+Inf"]  # as prometheus_client's Histogram writes them


def _runs(family: Metric, job: str, totals: JobTotals) -> None:
    for outcome in sorted({*OUTCOMES, *totals.outcomes}):
        family.add_metric([job, outcome], totals.outcomes.get(outcome, 0))


def _lateness(family: Metric, job: str, totals: JobTotals) -> None:
    family.add_metric([job], [*zip(BUCKET_LABELS, [*totals.buckets, totals.late_count])], totals.late_sum)


def _last_success(family: Metric, job: str, totals: JobTotals) -> None:
    if totals.last_success is not None:
        family.add_metric([job], totals.last_success.timestamp())


def _next_due(family: Metric, job: str, at: float) -> None:
    family.add_metric([job], at)


class _Single:
    """A collector of one metric family, for generate_latest."""

    def __init__(self, family: Metric):
        self.family = family

    def collect(self):
        yield self.family


class JobLines:
    """One per-job family: its header, and each job's lines, formatted again only when its values change."""

    def __init__(self, family: Callable[[], Metric], add: Callable[[Metric, str, object], None]):
        self._family, self._add = family, add
        self._cache: dict[str, tuple[object, str]] = {}
        self.header = generate_latest(_Single(family())).decode()  # its HELP and TYPE lines

    def lines(self, job: str, value) -> str:
        cached = self._cache.get(job)
        if cached is not None and (cached[0] is value or cached[0] == value):
            return cached[1]
        family = self._family()
        self._add(family, job, value)
        text = generate_latest(_Single(family)).decode()[len(self.header):]
        self._cache[job] = (value, text)
        return text

    def keep_only(self, jobs) -> None:
        """Forget the jobs no longer shown (deleted ones)."""
        if len(self._cache) > len(jobs):
            self._cache = {job: kept for job, kept in self._cache.items() if job in jobs}


def _job_families() -> tuple[list[JobLines], JobLines]:
    runs = JobLines(lambda: CounterMetricFamily(
        "celery_beat_job_runs", "Finished and skipped runs of each job, by outcome.", labels=["job", "outcome"]), _runs)
    lateness = JobLines(lambda: HistogramMetricFamily(
        "celery_beat_job_lateness_seconds", "How long after its due time beat sent each run of the job.",
        labels=["job"]), _lateness)
    last_success = JobLines(lambda: GaugeMetricFamily(
        "celery_beat_job_last_success_timestamp_seconds", "When the job's latest successful run finished (Unix time).",
        labels=["job"]), _last_success)
    next_due = JobLines(lambda: GaugeMetricFamily(
        "celery_beat_job_next_due_timestamp_seconds",
        "When the enabled job falls due next (Unix time); in the past while it is overdue.", labels=["job"]), _next_due)
    return [runs, lateness, last_success], next_due


def next_due_times(now: datetime) -> dict[str, float]:
    """When each enabled job falls due next. Schedules are built once per schedule row, and jobs on one
    schedule that last ran at the same slot (as jobs on one crontab do) share one computation."""
    kinds = [f"{kind}_id" for kind in SCHEDULE_KINDS]
    rows = list(PeriodicTask.objects.filter(enabled=True).values_list("name", "last_run_at", "date_changed", *kinds))
    models = {kind: model.objects.in_bulk({row[3 + index] for row in rows} - {None})
              for index, (kind, model) in enumerate(SCHEDULE_KINDS.items())}
    schedules, known, due = {}, {}, {}
    for name, last_run_at, changed, *ids in rows:
        kind, schedule_id = next(((kind, id_) for kind, id_ in zip(SCHEDULE_KINDS, ids) if id_), (None, None))
        if kind is None or schedule_id not in models[kind]:
            continue
        last = last_run_at or changed or now
        key = (kind, schedule_id, last)
        if key not in known:
            if (kind, schedule_id) not in schedules:
                schedules[kind, schedule_id] = models[kind][schedule_id].schedule
            known[key] = due_after(schedules[kind, schedule_id], last, now).timestamp()
        due[name] = known[key]
    return due


class BrokerCollector:
    """The beats' lease and heartbeats and the queue lengths, read as `status` reads them; no samples
    when the broker does not answer."""

    def collect(self):
        from app.manager import inspect

        settings = get_settings()
        leader = GaugeMetricFamily("celery_beat_leader", "1 for the beat holding the leader lease, 0 for a standby.",
                                   labels=["identity", "host"])
        age = GaugeMetricFamily("celery_beat_heartbeat_age_seconds", "Seconds since the beat's last tick.",
                                labels=["identity", "host"])
        queued = GaugeMetricFamily("celery_queue_messages", "Messages waiting in the queue.", labels=["queue"])
        liveness = inspect.beat_liveness(settings)
        for beat in liveness.heartbeats if liveness else []:
            leader.add_metric([beat.identity, beat.host], 1 if beat.identity == liveness.holder else 0)
            age.add_metric([beat.identity, beat.host], beat.age_seconds)
        try:
            depths = inspect.queue_depths(settings)
        except (redis.RedisError, OSError) as error:
            log.warning("queue lengths not read for /metrics: %s", error)
            depths = {}
        for queue, count in depths.items():
            queued.add_metric([queue], count)
        yield from (leader, age, queued)


class ScheduleMetrics:
    """The text of /metrics; one per process (run totals and formatted lines are kept between scrapes)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.totals = RunTotals()
        self._run_lines, self._next_due_lines = _job_families()
        self.broker_registry = CollectorRegistry(auto_describe=False)
        self.broker_registry.register(BrokerCollector())

    def render(self) -> bytes:
        now = timezone.now()
        with self._lock:
            totals = self.totals.read(engine.sa_engine, now)
            due = next_due_times(now)
            parts = []
            for family, values in [*((lines, totals) for lines in self._run_lines), (self._next_due_lines, due)]:
                family.keep_only(values)
                parts.append(family.header)
                parts.extend(family.lines(job, values[job]) for job in sorted(values))
        parts.append(generate_latest(self.broker_registry).decode())
        return "".join(parts).encode()


METRICS = ScheduleMetrics()


def render() -> bytes:
    """The metrics in Prometheus' text format."""
    return METRICS.render()
