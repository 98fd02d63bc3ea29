"""Moving old delivered records to the archive tables, a bounded batch per transaction."""

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, insert, literal, select
from sqlalchemy.orm import sessionmaker

from app.core.database import session_scope
from app.models import ArchivedDelivery, ArchivedTrackingEvent, Delivery, DeliveryStatus, TrackingEvent
from app.models.base import utcnow

log = logging.getLogger(__name__)

DELIVERY_COLUMNS = [c.name for c in Delivery.__table__.columns]
EVENT_COLUMNS = [c.name for c in TrackingEvent.__table__.columns]


def _archive_batch(factory: sessionmaker, cutoff: datetime, batch_size: int,
                   before_commit: Callable[[list[int]], None] | None) -> tuple[int, int]:
    """Copy one batch into the archive and delete it from the live tables, in one transaction."""
    with session_scope(factory) as session:
        query = (select(Delivery.id)
                 .where(Delivery.status == DeliveryStatus.DELIVERED, Delivery.delivered_at < cutoff)
                 .order_by(Delivery.id).limit(batch_size))
        if session.bind.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)  # two archivers never take the same rows
        ids = list(session.scalars(query))
        if not ids:
            return 0, 0
        now = utcnow()
        session.execute(insert(ArchivedDelivery).from_select(
            [*DELIVERY_COLUMNS, "archived_at"],
            select(*[Delivery.__table__.c[name] for name in DELIVERY_COLUMNS], literal(now, ArchivedDelivery.archived_at.type))
            .where(Delivery.id.in_(ids))))
        moved_events = session.execute(insert(ArchivedTrackingEvent).from_select(
            EVENT_COLUMNS,
            select(*[TrackingEvent.__table__.c[name] for name in EVENT_COLUMNS]).where(TrackingEvent.delivery_id.in_(ids)),
        )).rowcount
        session.execute(delete(TrackingEvent).where(TrackingEvent.delivery_id.in_(ids)))
        session.execute(delete(Delivery).where(Delivery.id.in_(ids)))
        if before_commit:
            before_commit(ids)
        return len(ids), moved_events


def archive_delivered(factory: sessionmaker, cutoff: datetime, batch_size: int = 1000,
                      max_batches: int | None = None,
                      before_commit: Callable[[list[int]], None] | None = None) -> dict:
    """Archive deliveries delivered before `cutoff`, with their events.

    Each batch is copied and deleted in one transaction, so a run stopped anywhere loses and
    duplicates nothing, and the next run carries on where it stopped; memory holds one batch.
    """
    deliveries = events = batches = 0
    while max_batches is None or batches < max_batches:
        moved, moved_events = _archive_batch(factory, cutoff, batch_size, before_commit)
        if not moved:
            break
        deliveries, events, batches = deliveries + moved, events + moved_events, batches + 1
    if deliveries:
        log.info("archived %d deliveries and %d events in %d batches", deliveries, events, batches)
    return {"deliveries": deliveries, "events": events, "batches": batches}
