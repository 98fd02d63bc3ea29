"""Removing what has outlived its retention: failed deliveries, old job-run history.

A removed delivery's file rows go with it; the files themselves go with the next unreferenced-files cleanup.
"""

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import sessionmaker

from app.core.database import session_scope
from app.models import Delivery, DeliveryFile, DeliveryStatus, JobRun, TrackingEvent

FAILED_STATUSES = [DeliveryStatus.FAILED, DeliveryStatus.TIMEOUT, DeliveryStatus.REJECTED, DeliveryStatus.RETURNED]


def remove_expired_deliveries(factory: sessionmaker, cutoff: datetime, batch_size: int = 1000) -> int:
    """Delete deliveries that ended in failure before `cutoff`, with their events and file rows; batch by batch."""
    removed = 0
    while True:
        with session_scope(factory) as session:
            ids = list(session.scalars(select(Delivery.id)
                                       .where(Delivery.status.in_(FAILED_STATUSES), Delivery.updated_at < cutoff)
                                       .order_by(Delivery.id).limit(batch_size)))
            if not ids:
                return removed
            session.execute(delete(TrackingEvent).where(TrackingEvent.delivery_id.in_(ids)))
            session.execute(delete(Delivery).where(Delivery.id.in_(ids)))
            # After the deliveries: an attach in progress holds its delivery's row lock until its file row
            # is committed, so this statement, run once that lock is released, sees that row too.
            session.execute(delete(DeliveryFile).where(DeliveryFile.delivery_id.in_(ids)))
        removed += len(ids)


def remove_old_job_runs(factory: sessionmaker, cutoff: datetime) -> int:
    """Delete job runs from before `cutoff`: by their start, or, for runs never started (skipped, lost
    in the queue), by their due time or, failing that, their end."""
    began = func.coalesce(JobRun.started_at, JobRun.due_at, JobRun.finished_at)
    with session_scope(factory) as session:
        return session.execute(delete(JobRun).where(began < cutoff)).rowcount
