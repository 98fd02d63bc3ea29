"""Following deliveries through the carrier: which are due, polling them, storing what changed."""

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.core.database import session_scope
from app.models import Delivery, DeliveryStatus, EvidenceStatus, TrackingEvent
from app.models.base import utcnow
from app.models.deliveries import TERMINAL_STATUSES
from app.services.carriers.base import CarrierClient, CarrierConfigError, CarrierError, CarrierRequestError, TrackingResult
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


FAILURE_COUNTERS = {"error": "errors", "failed": "failed", "config_error": "config_errors", "skipped": "skipped"}


@dataclass
class PollSummary:
    polled: int = 0
    new_events: int = 0
    delivered_ids: list[int] = field(default_factory=list)  # delivered by this poll: their evidence is due
    failed: int = 0  # the carrier rejected the number: no more polls
    errors: int = 0  # transient: backed off, polled again later
    config_errors: int = 0
    skipped: int = 0
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


def apply_result(session: Session, delivery: Delivery, result: TrackingResult, now: datetime,
                 poll_interval: timedelta) -> int:
    """Store new events (each exactly once) and move the delivery's status; the count of new events."""
    known = set(session.scalars(select(TrackingEvent.fingerprint).where(TrackingEvent.delivery_id == delivery.id)))
    added = 0
    for event in result.events:
        fingerprint = event_fingerprint(event.occurred_at, event.description)
        if fingerprint in known:
            continue
        known.add(fingerprint)
        session.add(TrackingEvent(delivery_id=delivery.id, occurred_at=event.occurred_at, location=event.location,
                                  description=event.description, carrier_status=event.status, fingerprint=fingerprint))
        added += 1
    status = DeliveryStatus.DELIVERED if result.signed else STATE_STATUS.get(result.state, DeliveryStatus.IN_TRANSIT)
    if status == DeliveryStatus.DELIVERED and delivery.delivered_at is None:
        delivery.delivered_at = result.events[-1].occurred_at if result.events else now
    delivery.status = status
    delivery.carrier_state = result.state
    delivery.last_polled_at = now
    delivery.poll_count += 1
    delivery.poll_failures = 0
    delivery.last_error = None
    delivery.next_poll_at = None if status in TERMINAL_STATUSES else now + poll_interval
    return added


def record_failure(delivery: Delivery, error: CarrierError, now: datetime) -> None:
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


def poll_one(factory: sessionmaker, client: CarrierClient, limiter: RateLimiter, delivery_id: int,
             poll_interval: timedelta) -> tuple[str, int, str | None]:
    """Poll one delivery in its own transaction; (outcome, new events, error text)."""
    try:
        return _poll_once(factory, client, limiter, delivery_id, poll_interval)
    except IntegrityError:
        # A redelivered copy of this chunk stored the same events first; the retry sees them.
        return _poll_once(factory, client, limiter, delivery_id, poll_interval)


def _poll_once(factory, client, limiter, delivery_id, poll_interval) -> tuple[str, int, str | None]:
    # No transaction (nor pooled connection) is held while the carrier answers.
    with session_scope(factory) as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None or delivery.status in TERMINAL_STATUSES:
            return "skipped", 0, None
        carrier, number, phone = delivery.carrier, delivery.tracking_number, delivery.phone
    limiter.acquire()
    now = utcnow()
    try:
        result, error = client.query(carrier, number, phone), None
    except CarrierError as failure:
        result, error = None, failure
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
        # Asked for in the same transaction; the chunk sends the work once this has committed.
        delivery.evidence_status, delivery.evidence_requested_at = EvidenceStatus.REQUESTED, now
        return "delivered", added, None


def poll_deliveries(factory: sessionmaker, client: CarrierClient, limiter: RateLimiter, ids: list[int],
                    poll_interval: timedelta, concurrency: int = 8) -> PollSummary:
    """Poll `ids` concurrently under the shared rate limit; one delivery's error never fails the rest."""
    summary = PollSummary()
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(ids)))) as pool:
        outcomes = pool.map(lambda i: poll_one(factory, client, limiter, i, poll_interval), ids)
        for delivery_id, (outcome, added, error) in zip(ids, outcomes):
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
    if summary.config_errors:
        log.error("carrier account problem: %d polls refused (%s)", summary.config_errors, summary.error_samples[0])
    return summary


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
