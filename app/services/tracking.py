"""Following deliveries through the carrier: which are due, polling them, storing what changed."""

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Column, or_, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from app.core.database import session_scope
from app.models import Delivery, DeliveryStatus, EvidenceStatus, TrackingEvent
from app.models.base import utcnow
from app.models.deliveries import TERMINAL_STATUSES
from app.services.carriers.base import (
    CarrierClient,
    CarrierConfigError,
    CarrierError,
    CarrierEvent,
    CarrierRequestError,
    TrackingResult,
)
from app.services.ratelimit import RateLimiter

log = logging.getLogger(__name__)

# Kuaidi100 `state` -> our status.
STATE_STATUS = {
    0: DeliveryStatus.IN_TRANSIT,
    1: DeliveryStatus.IN_TRANSIT,  # collected
    2: DeliveryStatus.PROBLEM,
    3: DeliveryStatus.DELIVERED,
    4: DeliveryStatus.RETURNED,  # return signed for by the sender
    5: DeliveryStatus.OUT_FOR_DELIVERY,
    6: DeliveryStatus.RETURNING,
    7: DeliveryStatus.IN_TRANSIT,  # forwarded
    10: DeliveryStatus.IN_TRANSIT,  # customs: waiting
    11: DeliveryStatus.IN_TRANSIT,  # customs: clearing
    12: DeliveryStatus.IN_TRANSIT,  # customs: cleared
    13: DeliveryStatus.PROBLEM,  # customs: exception
    14: DeliveryStatus.REJECTED,
}
ACTIVE_STATUSES = [s.value for s in DeliveryStatus if s not in TERMINAL_STATUSES]
FAILURE_BACKOFF_BASE = timedelta(minutes=5)
FAILURE_BACKOFF_CAP = timedelta(hours=6)
# A carrier's clock ahead of ours by up to this is believed; a later event time is not.
EVENT_CLOCK_SKEW = timedelta(minutes=10)
# A parcel may be registered here this long after it was posted; an event before that is not believed.
POSTED_BEFORE_REGISTRATION = timedelta(days=30)


FAILURE_COUNTERS = {"error": "errors", "failed": "failed", "config_error": "config_errors", "skipped": "skipped",
                    "already_polled": "already_polled"}


@dataclass
class PollSummary:
    polled: int = 0
    new_events: int = 0
    delivered_ids: list[int] = field(default_factory=list)  # delivered by this poll: their evidence is due
    failed: int = 0  # the carrier rejected the number: no more polls
    errors: int = 0  # transient: backed off, polled again later
    config_errors: int = 0
    skipped: int = 0
    already_polled: int = 0  # polled since the chunk was claimed (a retried or redelivered chunk): not again
    error_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def event_fingerprint(occurred_at: datetime, description: str) -> str:
    return hashlib.sha1(f"{occurred_at.isoformat()}|{description}".encode()).hexdigest()


def due_delivery_ids(session: Session, now: datetime, limit: int) -> list[int]:
    """Active deliveries never polled (first) or whose next poll has come."""
    query = (select(Delivery.id)
             .where(Delivery.status.in_(ACTIVE_STATUSES),
                    or_(Delivery.next_poll_at.is_(None), Delivery.next_poll_at <= now))
             .order_by(Delivery.next_poll_at.is_not(None), Delivery.next_poll_at, Delivery.id)
             .limit(limit))
    return list(session.scalars(query))


def fitted(column: Column, text: str | None) -> str | None:
    """`text` cut to the length of its String(n) column, the cut marked with an ellipsis."""
    length = column.type.length
    if text is None or length is None or len(text) <= length:
        return text
    return text[:length - 1] + "…"


def plausible_events(delivery: Delivery, events: list[CarrierEvent], now: datetime) -> list[CarrierEvent]:
    """The events dated between the earliest the parcel can have been posted and now (plus clock skew)."""
    earliest, latest = delivery.created_at - POSTED_BEFORE_REGISTRATION, now + EVENT_CLOCK_SKEW
    kept = [event for event in events if earliest <= event.occurred_at <= latest]
    if len(kept) < len(events):
        first = next(event for event in events if not earliest <= event.occurred_at <= latest)
        log.warning("delivery %d: dropped %d carrier events dated outside %s .. %s (first: %s)", delivery.id,
                    len(events) - len(kept), earliest.isoformat(timespec="seconds"),
                    latest.isoformat(timespec="seconds"), first.occurred_at.isoformat())
    return kept


def _event_row(delivery_id: int, event: CarrierEvent, fingerprint: str) -> TrackingEvent:
    columns = TrackingEvent.__table__.c
    return TrackingEvent(delivery_id=delivery_id, occurred_at=event.occurred_at, description=event.description,
                         location=fitted(columns.location, event.location),
                         carrier_status=fitted(columns.carrier_status, event.status), fingerprint=fingerprint)


def apply_result(session: Session, delivery: Delivery, result: TrackingResult, now: datetime,
                 poll_interval: timedelta) -> int:
    """Store new plausible events (each exactly once) and move the delivery's status; the count of new events."""
    events = plausible_events(delivery, result.events, now)
    known = set(session.scalars(select(TrackingEvent.fingerprint).where(TrackingEvent.delivery_id == delivery.id)))
    added = 0
    for event in events:
        fingerprint = event_fingerprint(event.occurred_at, event.description)
        if fingerprint in known:
            continue
        known.add(fingerprint)
        session.add(_event_row(delivery.id, event, fingerprint))
        added += 1
    status = DeliveryStatus.DELIVERED if result.signed else STATE_STATUS.get(result.state, DeliveryStatus.IN_TRANSIT)
    if status == DeliveryStatus.DELIVERED and delivery.delivered_at is None:
        delivery.delivered_at = events[-1].occurred_at if events else now
    delivery.status = status
    delivery.carrier_state = result.state
    delivery.last_polled_at = now
    delivery.poll_count += 1
    delivery.poll_failures = 0
    delivery.last_error = None
    delivery.next_poll_at = None if status in TERMINAL_STATUSES else now + poll_interval
    return added


def record_failure(delivery: Delivery, error: Exception, now: datetime) -> None:
    """A failed poll: a rejected number fails the delivery; anything else backs it off."""
    delivery.last_error = f"{type(error).__name__}: {error}"[:500]
    delivery.last_polled_at = now
    delivery.poll_failures += 1
    if isinstance(error, CarrierRequestError) and not isinstance(error, CarrierConfigError):
        delivery.status = DeliveryStatus.FAILED
        delivery.next_poll_at = None
        return
    backoff = min(FAILURE_BACKOFF_BASE * 2 ** (delivery.poll_failures - 1), FAILURE_BACKOFF_CAP)
    delivery.next_poll_at = now + backoff


class UnstorableAnswer(Exception):
    """The carrier's answer holds a value the database refuses: the delivery backs off, named."""

    @classmethod
    def of(cls, refused: SQLAlchemyError) -> "UnstorableAnswer":
        reason = getattr(refused, "orig", None) or refused
        return cls(f"{type(reason).__name__}: {str(reason).strip()[:300]}")


def refused_data(error: SQLAlchemyError) -> bool:
    """The database refused this row (too long, out of range, duplicate), as opposed to being unusable."""
    return (isinstance(error, (DataError, IntegrityError))
            or (isinstance(error, StatementError) and not isinstance(error, DBAPIError)))


def poll_one(factory: sessionmaker, client: CarrierClient, limiter: RateLimiter, delivery_id: int,
             poll_interval: timedelta, polled_since: datetime | None = None) -> tuple[str, int, str | None]:
    """Query the carrier once for one delivery and store the outcome in its own transaction;
    (outcome, new events, error text). A delivery polled since `polled_since` is left alone."""
    # No transaction (nor pooled connection) is held while the carrier answers.
    with session_scope(factory) as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None or delivery.status in TERMINAL_STATUSES:
            return "skipped", 0, None
        if polled_since and delivery.last_polled_at and delivery.last_polled_at >= polled_since:
            return "already_polled", 0, None
        carrier, number, phone = delivery.carrier, delivery.tracking_number, delivery.phone
    limiter.acquire()
    now = utcnow()
    try:
        result, error = client.query(carrier, number, phone), None
    except CarrierError as failure:
        result, error = None, failure
    try:
        return _store_outcome(factory, delivery_id, number, result, error, now, poll_interval)
    except SQLAlchemyError as refused:
        if not refused_data(refused):
            raise
        unstorable = UnstorableAnswer.of(refused)
    log.error("delivery %d (%s): %s", delivery_id, number, unstorable)
    return _store_outcome(factory, delivery_id, number, None, unstorable, now, poll_interval)


def _store_outcome(factory, delivery_id, number, result, error, now, poll_interval) -> tuple[str, int, str | None]:
    try:
        return _store_once(factory, delivery_id, number, result, error, now, poll_interval)
    except IntegrityError:
        # A redelivered copy of this chunk stored the same events first; storing again skips them.
        return _store_once(factory, delivery_id, number, result, error, now, poll_interval)


def _store_once(factory, delivery_id, number, result, error, now, poll_interval) -> tuple[str, int, str | None]:
    with session_scope(factory) as session:
        delivery = session.get(Delivery, delivery_id, with_for_update=True)
        if delivery is None or delivery.status in TERMINAL_STATUSES:
            return "skipped", 0, None
        if error is not None:
            record_failure(delivery, error, now)
            kind = ("config_error" if isinstance(error, CarrierConfigError)
                    else "failed" if delivery.status == DeliveryStatus.FAILED else "error")
            return kind, 0, f"{number}: {error}"
        added = apply_result(session, delivery, result, now, poll_interval)
        if delivery.status != DeliveryStatus.DELIVERED:
            return "polled", added, None
        # Asked for in the same transaction; the evidence is sent once this has committed.
        delivery.evidence_status, delivery.evidence_requested_at = EvidenceStatus.REQUESTED, now
        return "delivered", added, None


def poll_deliveries(factory: sessionmaker, client: CarrierClient, limiter: RateLimiter, ids: list[int],
                    poll_interval: timedelta, concurrency: int = 8, *,
                    on_delivered: Callable[[int], object] = lambda delivery_id: None,
                    polled_since: datetime | None = None) -> PollSummary:
    """Poll `ids` concurrently under the shared rate limit, each in its own transactions.

    `on_delivered(id)` runs as soon as a delivery's delivered state has committed. One delivery's
    carrier or data error is stored on it and never fails the rest; any other error (the database
    unreachable, a bug) is raised once every other delivery is done. Deliveries polled since
    `polled_since` (by an earlier attempt of the same chunk) are not polled again.
    """
    summary, unfinished = PollSummary(), []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(ids)))) as pool:
        futures = {pool.submit(poll_one, factory, client, limiter, delivery_id, poll_interval, polled_since):
                   delivery_id for delivery_id in ids}
        for future in as_completed(futures):
            try:
                outcome, added, error = future.result()
            except Exception as failure:  # noqa: BLE001 - raised below, once the others are done
                unfinished.append(failure)
                continue
            _count(summary, futures[future], outcome, added, error)
            if outcome == "delivered":
                on_delivered(futures[future])
    if summary.config_errors:
        log.error("carrier account problem: %d polls refused (%s)", summary.config_errors, summary.error_samples[0])
    if unfinished:
        log.error("%d of %d deliveries of the chunk unfinished (%s: %s); the rest are stored: %s", len(unfinished),
                  len(ids), type(unfinished[0]).__name__, str(unfinished[0]).splitlines()[0], summary.as_dict())
        raise unfinished[0]
    return summary


def _count(summary: PollSummary, delivery_id: int, outcome: str, added: int, error: str | None) -> None:
    summary.new_events += added
    if outcome in ("polled", "delivered"):
        summary.polled += 1
        if outcome == "delivered":
            summary.delivered_ids.append(delivery_id)
    else:
        counter = FAILURE_COUNTERS[outcome]
        setattr(summary, counter, getattr(summary, counter) + 1)
    if error and len(summary.error_samples) < 5:
        summary.error_samples.append(error)


def added_up(summaries: list[dict]) -> dict:
    """Several chunks' PollSummary dicts as one (error samples: the first five)."""
    total = PollSummary().as_dict()
    for summary in summaries:
        for key, value in summary.items():
            total[key] = total[key] + value
    total["error_samples"] = total["error_samples"][:5]
    return total


def active_delivery_ids(session: Session) -> list[int]:
    """Every delivery still on its way (not delivered, returned, failed or timed out)."""
    return list(session.scalars(select(Delivery.id).where(Delivery.status.in_(ACTIVE_STATUSES)).order_by(Delivery.id)))


def chunked(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def pending_delivery_ids(session: Session, now: datetime, limit: int, overdue_after: timedelta) -> list[int]:
    """Active deliveries that need work now: never polled, or a poll overdue by `overdue_after`."""
    never_polled = Delivery.last_polled_at.is_(None) & or_(Delivery.next_poll_at.is_(None), Delivery.next_poll_at <= now)
    query = (select(Delivery.id)
             .where(Delivery.status.in_(ACTIVE_STATUSES), or_(never_polled, Delivery.next_poll_at <= now - overdue_after))
             .order_by(Delivery.id).limit(limit))
    return list(session.scalars(query))


def claim(session: Session, ids: list[int], now: datetime, lease: timedelta) -> list[int]:
    """Lease `ids` so no run sends them again while in flight.

    The poll sets the real next poll time; a lost chunk's deliveries come due again when the
    lease ends.
    """
    for chunk in chunked(ids, 1000):
        session.execute(update(Delivery).where(Delivery.id.in_(chunk)).values(next_poll_at=now + lease))
    return ids


def claim_due_deliveries(session: Session, now: datetime, limit: int, lease: timedelta) -> list[int]:
    """Every due delivery, leased."""
    return claim(session, due_delivery_ids(session, now, limit), now, lease)


def mark_overdue_deliveries(session: Session, today: date) -> int:
    """Active deliveries past their deadline become `timeout`; how many (one UPDATE, no rows loaded)."""
    result = session.execute(update(Delivery)
                             .where(Delivery.status.in_(ACTIVE_STATUSES), Delivery.deadline.is_not(None),
                                    Delivery.deadline < today)
                             .values(status=DeliveryStatus.TIMEOUT, next_poll_at=None))
    return result.rowcount
