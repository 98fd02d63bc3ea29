"""Moving old delivered records to the archive tables, a bounded batch per transaction."""

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, insert, literal, select, text
from sqlalchemy.orm import sessionmaker

from app.core.database import session_scope
from app.models import ArchivedDelivery, ArchivedTrackingEvent, Delivery, DeliveryStatus, TrackingEvent
from app.models.base import utcnow

log = logging.getLogger(__name__)

DELIVERY_COLUMNS = [c.name for c in Delivery.__table__.columns]
EVENT_COLUMNS = [c.name for c in TrackingEvent.__table__.columns]


_COLUMN_LIST = ", ".join(DELIVERY_COLUMNS)
_EVENT_LIST = ", ".join(EVENT_COLUMNS)
# PostgreSQL moves a batch in one statement: lock, delete, and insert what was deleted.
POSTGRES_BATCH = text(f"""
WITH batch AS (
    SELECT id FROM deliveries
    WHERE id > :after_id AND status = :status AND delivered_at < :cutoff
    ORDER BY id LIMIT :batch_size FOR UPDATE SKIP LOCKED
), moved_events AS (
    DELETE FROM tracking_events e USING batch WHERE e.delivery_id = batch.id RETURNING e.*
), archived_events AS (
    INSERT INTO tracking_events_archive ({_EVENT_LIST}) SELECT {_EVENT_LIST} FROM moved_events RETURNING 1
), moved AS (
    DELETE FROM deliveries d USING batch WHERE d.id = batch.id RETURNING d.*
), archived AS (
    INSERT INTO deliveries_archive ({_COLUMN_LIST}, archived_at) SELECT {_COLUMN_LIST}, :now FROM moved RETURNING id
)
SELECT (SELECT array_agg(id ORDER BY id) FROM archived), (SELECT count(*) FROM archived_events)
""")


def _archive_batch_postgres(factory: sessionmaker, cutoff: datetime, batch_size: int, after_id: int,
                            before_commit: Callable[[list[int]], None] | None) -> tuple[list[int], int]:
    with session_scope(factory) as session:
        ids, moved_events = session.execute(POSTGRES_BATCH, {
            "after_id": after_id, "status": DeliveryStatus.DELIVERED.value, "cutoff": cutoff,
            "batch_size": batch_size, "now": utcnow()}).one()
        if not ids:
            return [], 0
        if before_commit:
            before_commit(ids)
        return ids, moved_events


def _archive_batch(factory: sessionmaker, cutoff: datetime, batch_size: int, after_id: int,
                   before_commit: Callable[[list[int]], None] | None) -> tuple[list[int], int]:
    """Copy one batch (ids above `after_id`) into the archive and delete it from the live tables,
    in one transaction; the batch's ids and the number of events moved."""
    with session_scope(factory) as session:
        # Keyset on id: each batch starts past the rows the last one deleted, instead of wading
        # through their dead index entries again.
        query = (select(Delivery.id)
                 .where(Delivery.id > after_id, Delivery.status == DeliveryStatus.DELIVERED,
                        Delivery.delivered_at < cutoff)
                 .order_by(Delivery.id).limit(batch_size))
        ids = list(session.scalars(query))
        if not ids:
            return [], 0
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
        return ids, moved_events


def archive_delivered(factory: sessionmaker, cutoff: datetime, batch_size: int = 1000,
                      max_batches: int | None = None,
                      before_commit: Callable[[list[int]], None] | None = None) -> dict:
    """Archive deliveries delivered before `cutoff`, with their events.

    Each batch is copied and deleted in one transaction, so a run stopped anywhere loses and
    duplicates nothing, and the next run carries on where it stopped; memory holds one batch.
    """
    deliveries = events = batches = last_id = 0
    archive_batch = _archive_batch_postgres if factory.kw["bind"].dialect.name == "postgresql" else _archive_batch
    while max_batches is None or batches < max_batches:
        moved, moved_events = archive_batch(factory, cutoff, batch_size, last_id, before_commit)
        if not moved:
            break
        last_id = moved[-1]
        deliveries, events, batches = deliveries + len(moved), events + moved_events, batches + 1
    if deliveries:
        log.info("archived %d deliveries and %d events in %d batches", deliveries, events, batches)
    return {"deliveries": deliveries, "events": events, "batches": batches}
