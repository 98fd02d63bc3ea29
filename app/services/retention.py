"""Removing what has outlived its retention: failed deliveries, old job-run history."""

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import sessionmaker

from app.core.database import session_scope
from app.models import Delivery, DeliveryStatus, JobRun, TrackingEvent

FAILED_STATUSES = [DeliveryStatus.FAILED, DeliveryStatus.TIMEOUT, DeliveryStatus.REJECTED, DeliveryStatus.RETURNED]


def remove_expired_deliveries(factory: sessionmaker, cutoff: datetime, batch_size: int = 1000) -> int:
    """Delete deliveries that ended in failure before `cutoff`, with their events; batch by batch."""
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
        removed += len(ids)


def remove_old_job_runs(factory: sessionmaker, cutoff: datetime) -> int:
    with session_scope(factory) as session:
        return session.execute(delete(JobRun).where(JobRun.started_at < cutoff)).rowcount
