"""Monitoring and tracking tasks (the seed routes the health check here too)."""

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from celery import group
from django.db import DatabaseError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.core.broker import redis_client
from app.core.config import TIMEZONE, get_settings
from app.core.database import SessionFactory, engine, session_scope
from app.models.base import utcnow
from app.services.disk_watch import data_volume_paths
from app.services.alerts import alert_health, alert_lost_runs, alert_timeouts, overdue_references
from app.services.carriers.kuaidi100 import Kuaidi100Client
from app.services.evidence.status import mark_requested, missing_evidence_ids
from app.scheduling.leader import beat_liveness
from app.scheduling.table import load_schedule_table
from app.services.health import HealthThresholds, check_system_health
from app.services.job_runs import mark_lost_runs
from app.services.ratelimit import RateLimiter
from app.services.stalls import ScheduledJob, check_stalls
from app.services.tracking import (
    added_up,
    chunked,
    claim,
    claim_due_deliveries,
    mark_overdue_deliveries,
    pending_delivery_ids,
    poll_deliveries,
)
from app.tasks.celery_app import HARD_TIME_LIMIT, SOFT_TIME_LIMIT, app
from app.tasks.evidence import send_evidence
from app.tasks.policies import CRITICAL_POLICY, DEFAULT_POLICY

log = logging.getLogger(__name__)

MAX_DUE_PER_RUN = 50_000
# A chunk not polled within this time (its worker died, say) comes due again.
POLL_LEASE = timedelta(seconds=2 * SOFT_TIME_LIMIT)
# A poll this late means update-tracking-status is not keeping up; check-pending-tasks steps in.
OVERDUE_AFTER = timedelta(hours=1)
# Evidence asked for this long ago and not complete is asked for again: longer than a chain takes
# through all its retries (screenshot 3, receipt 5, backoff capped at 10 minutes, 10-minute limits).
EVIDENCE_RETRY_AFTER = timedelta(hours=2)
MAX_EVIDENCE_PER_RUN = 1000
TIMEOUT_REFERENCES_IN_ALERT = 5


def _ping_database() -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _ping_broker() -> None:
    redis_client(get_settings().broker_url, socket_timeout=5, socket_connect_timeout=5).ping()


class BeatDownError(Exception):
    """No beat holds the leader lease with a fresh heartbeat."""


def _ping_beat() -> dict:
    settings = get_settings()
    client = redis_client(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
    liveness = beat_liveness(client, settings.beat_leader_timeout)
    if not liveness.ok:
        raise BeatDownError(liveness.detail)
    return {"leader": liveness.detail}


@lru_cache(maxsize=1)
def carrier_client() -> Kuaidi100Client:
    """One pooled client per worker process."""
    settings = get_settings()
    customer, key = settings.carrier_account
    return Kuaidi100Client(customer, key, settings.carrier_url, timeout=settings.tracking_timeout)


@lru_cache(maxsize=1)
def carrier_rate_limit() -> RateLimiter:
    """The carrier's QPS, shared by every worker through the broker's Redis."""
    settings = get_settings()
    return RateLimiter(redis_client(settings.broker_url), "kuaidi100", settings.kuaidi100_rate_limit)


def _scheduled_jobs() -> list[ScheduledJob]:
    """The enabled jobs of the schedule table as beat runs them (an admin's edit included)."""
    # Django models load only once celery_app has set Django up.
    from django_celery_beat.models import PeriodicTask

    from app.scheduling.models import CodeDefinedJob

    since = dict(CodeDefinedJob.objects.values_list("name", "synced_at"))
    rows = PeriodicTask.objects.filter(name__in=since, enabled=True, crontab__isnull=False).select_related("crontab")
    return [ScheduledJob(row.name, row.crontab.schedule, since[row.name]) for row in rows]


def _stalled_jobs(webhook_url: str | None) -> list[str]:
    """Raise or clear each job's stall; skipped, with a warning, while the schedule cannot be read."""
    try:
        return check_stalls(SessionFactory, _scheduled_jobs(), utcnow(), webhook_url)
    except (DatabaseError, SQLAlchemyError) as error:
        log.warning("stalled jobs not checked: %s", error)
        return []


@app.task(**CRITICAL_POLICY)
def system_health_check() -> dict:
    """Database, broker, beat, disk, memory and load, then stalled jobs; each failure is an incident."""
    settings = get_settings()
    report = check_system_health(
        ping_database=_ping_database,
        ping_broker=_ping_broker,
        ping_beat=_ping_beat,
        data_paths=data_volume_paths(settings),
        thresholds=HealthThresholds(
            disk_warn_percent=settings.disk_warn_percent,
            disk_critical_percent=settings.disk_critical_percent,
            memory_warn_percent=settings.memory_warn_percent,
            load_warn_per_cpu=settings.load_warn_per_cpu,
        ),
    )
    alert_health(SessionFactory, report, settings.alert_webhook_url)
    database_down = any(check.name == "database" for check in report.degraded)
    stalled = [] if database_down else _stalled_jobs(settings.alert_webhook_url)
    return {**report.as_dict(), "stalled_jobs": stalled}


def _send_chunks(ids: list[int], claimed_at: datetime) -> int:
    """Spread claimed deliveries over the workers; called only once the claim is committed."""
    chunks = chunked(ids, get_settings().tracking_chunk_size)
    if chunks:
        group(poll_tracking_chunk.s(chunk, claimed_at=claimed_at.isoformat()) for chunk in chunks).apply_async()
    return len(chunks)


@app.task(**CRITICAL_POLICY)
def check_pending_tasks() -> dict:
    """Send work for deliveries that need it now: never polled, a poll overdue by an hour, or
    delivered without their evidence (never asked for, lost on the way, or failed a while ago)."""
    now = utcnow()
    with session_scope() as session:
        ids = claim(session, pending_delivery_ids(session, now, MAX_DUE_PER_RUN, OVERDUE_AFTER), now, POLL_LEASE)
        evidence_ids = missing_evidence_ids(session, now - EVIDENCE_RETRY_AFTER, MAX_EVIDENCE_PER_RUN)
        mark_requested(session, evidence_ids)
    return {"pending": len(ids), "chunks": _send_chunks(ids, now), "evidence": send_evidence(evidence_ids)}


@app.task(**DEFAULT_POLICY)
def update_tracking_status() -> dict:
    """Claim every due delivery and spread them over the workers in chunks."""
    now = utcnow()
    with session_scope() as session:
        ids = claim_due_deliveries(session, now, MAX_DUE_PER_RUN, POLL_LEASE)
    return {"due": len(ids), "chunks": _send_chunks(ids, now)}


@app.task(**DEFAULT_POLICY)
def poll_tracking_chunk(delivery_ids: list[int], claimed_at: str | None = None) -> dict:
    """Poll one chunk concurrently; a delivered one's evidence is sent as soon as it has committed.

    One delivery's carrier or data error backs off only that delivery; a retried or redelivered
    chunk skips the deliveries polled since `claimed_at` (their outcome is stored).
    """
    settings = get_settings()
    summary = poll_deliveries(SessionFactory, carrier_client(), carrier_rate_limit(), delivery_ids,
                              timedelta(minutes=settings.tracking_poll_interval), settings.tracking_concurrency,
                              on_delivered=lambda delivery_id: send_evidence([delivery_id]),
                              polled_since=datetime.fromisoformat(claimed_at) if claimed_at else None)
    return summary.as_dict()


def send_polls(delivery_id: int, delays: Sequence[float]) -> None:
    """Poll one delivery after each of `delays` seconds, outside the schedule (a delivery just registered).

    Unclaimed: a scheduled run may poll it as well, which stores nothing twice; once it is delivered
    the remaining polls skip it without asking the carrier.
    """
    for delay in delays:
        poll_tracking_chunk.apply_async(([delivery_id],), countdown=delay)


def poll_now(ids: list[int], timeout: float) -> dict:
    """Poll `ids` on the workers now, in chunks, outside the schedule; what they found, added up."""
    chunks = chunked(ids, get_settings().tracking_chunk_size)
    answers = group(poll_tracking_chunk.s(chunk) for chunk in chunks).apply_async().get(timeout=timeout)
    return added_up(answers)


def _slow_job_cutoffs(now: datetime) -> dict[str, datetime]:
    """Jobs whose task has a hard time limit longer than the default (backups, say): their own cut-off."""
    cutoffs = {}
    for name, entry in load_schedule_table().items():
        limit = getattr(app.tasks.get(entry["task"]), "time_limit", None)
        if limit and limit > HARD_TIME_LIMIT:
            cutoffs[name] = now - timedelta(seconds=limit + 60)
    return cutoffs


@app.task(**DEFAULT_POLICY)
def check_timeout_tasks() -> dict:
    """Deliveries past their deadline become `timeout`, job runs past the hard limit `lost`: incidents both."""
    today = datetime.now(ZoneInfo(TIMEZONE)).date()
    webhook_url = get_settings().alert_webhook_url
    with session_scope() as session:
        references = overdue_references(session, today, TIMEOUT_REFERENCES_IN_ALERT)
        timed_out = mark_overdue_deliveries(session, today)
    alert_timeouts(SessionFactory, timed_out, references, webhook_url)
    now = utcnow()
    lost = mark_lost_runs(SessionFactory, now - timedelta(seconds=HARD_TIME_LIMIT + 60), _slow_job_cutoffs(now))
    alert_lost_runs(SessionFactory, lost, webhook_url)
    if timed_out:
        log.warning("%d deliveries passed their deadline undelivered", timed_out)
    if lost:
        log.warning("%d job runs never finished (worker lost?)", len(lost))
    return {"timed_out": timed_out, "lost_runs": len(lost)}
