"""Tracking against the simulator over real HTTP, on SQLite and PostgreSQL, with the Redis rate limit."""

from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from app.core.broker import redis_client
from app.models import Delivery, DeliveryStatus, TrackingEvent
from app.models.base import utcnow
from app.services.carriers.base import CarrierEvent, TrackingResult
from app.services.carriers.kuaidi100 import Kuaidi100Client
from app.services.carriers.simulator import CarrierSimulator, SimulatorServer
from app.services.ratelimit import RateLimiter
from app.services.tracking import (
    STATE_STATUS,
    apply_result,
    claim,
    claim_due_deliveries,
    due_delivery_ids,
    mark_overdue_deliveries,
    pending_delivery_ids,
    poll_deliveries,
)

CUSTOMER, KEY = "C1", "K1"
INTERVAL = timedelta(minutes=30)


@pytest.fixture
def carrier():
    server = SimulatorServer(CarrierSimulator(CUSTOMER, KEY, slow_seconds=3)).start()
    client = Kuaidi100Client(CUSTOMER, KEY, server.url, timeout=1.0)
    yield server, client
    client.close()
    server.stop()


@pytest.fixture
def limiter(embedded_broker, settings):
    return RateLimiter(redis_client(settings.broker_url), f"test-tracking-{utcnow().timestamp()}", rate=500)


def add_deliveries(factory, *numbers, carrier="ems"):
    with factory() as session:
        rows = [Delivery(reference=f"CASE-{n}", recipient_name="张三", phone="13800138000", address="北京市",
                         carrier=carrier, tracking_number=n, deadline=date(2026, 12, 31)) for n in numbers]
        session.add_all(rows)
        session.commit()
        return [row.id for row in rows]


def statuses(factory):
    with factory() as session:
        return {d.tracking_number: d.status for d in session.scalars(select(Delivery))}


@pytest.mark.parametrize(("state", "status"), [
    (0, "in_transit"), (1, "in_transit"), (2, "problem"), (3, "delivered"), (4, "returned"),
    (5, "out_for_delivery"), (6, "returning"), (7, "in_transit"), (10, "in_transit"), (11, "in_transit"),
    (12, "in_transit"), (13, "problem"), (14, "rejected"),
])
def test_every_carrier_state_maps_to_a_status(state, status):
    assert STATE_STATUS[state] == status


def test_delivery_progresses_pending_to_delivered_across_runs(factory, carrier, limiter):
    _, client = carrier
    [delivery_id] = add_deliveries(factory, "EM0001")
    seen = []
    for _ in range(5):
        poll_deliveries(factory, client, limiter, [delivery_id], timedelta(0))
        seen.append(statuses(factory)["EM0001"])
    assert seen == ["in_transit", "in_transit", "in_transit", "out_for_delivery", "delivered"]
    with factory() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery.delivered_at is not None and delivery.next_poll_at is None
        assert session.scalar(select(func.count()).select_from(TrackingEvent)) == 5
    assert due_delivery_ids(factory(), utcnow() + timedelta(days=1), 10) == [], "a delivered parcel is not polled"


def test_events_are_stored_once_when_a_result_is_applied_twice(factory):
    [delivery_id] = add_deliveries(factory, "EM0002")
    now = utcnow()
    result = TrackingResult(state=0, signed=False, events=[
        CarrierEvent(now - timedelta(hours=2), "已揽收"), CarrierEvent(now - timedelta(hours=1), "到达转运中心")])
    for _ in range(2):  # the same chunk delivered twice
        with factory() as session:
            apply_result(session, session.get(Delivery, delivery_id), result, now, INTERVAL)
            session.commit()
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(TrackingEvent)) == 2


def test_errors_back_off_one_delivery_and_the_rest_of_the_chunk_is_done(factory, carrier, limiter):
    _, client = carrier
    ids = add_deliveries(factory, "EM0003", "MALFORMED1", "SLOW1", "BAD1", "EM0004")
    summary = poll_deliveries(factory, client, limiter, ids, INTERVAL)
    assert summary.polled == 2 and summary.errors == 2 and summary.failed == 1
    found = statuses(factory)
    assert found["EM0003"] == found["EM0004"] == "in_transit"
    assert found["BAD1"] == "failed", "a number the carrier rejects is not polled again"
    with factory() as session:
        for number in ("MALFORMED1", "SLOW1"):
            delivery = session.scalar(select(Delivery).where(Delivery.tracking_number == number))
            assert delivery.status == "pending" and delivery.last_error
            assert delivery.next_poll_at > utcnow(), "backed off, still to be polled again"


def test_http_500_leaves_the_delivery_retryable(factory, carrier, limiter):
    server, client = carrier
    server.simulator.error_rate = 1.0
    [delivery_id] = add_deliveries(factory, "EM0005")
    summary = poll_deliveries(factory, client, limiter, [delivery_id], INTERVAL)
    assert summary.errors == 1
    with factory() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery.status == DeliveryStatus.PENDING and "HTTP 500" in delivery.last_error
        assert delivery.poll_failures == 1


def test_never_polled_is_due_at_once_then_after_the_interval(factory, carrier, limiter):
    _, client = carrier
    [delivery_id] = add_deliveries(factory, "EM0006")
    now = utcnow()
    with factory() as session:
        assert due_delivery_ids(session, now, 10) == [delivery_id]
    poll_deliveries(factory, client, limiter, [delivery_id], INTERVAL)
    with factory() as session:
        assert due_delivery_ids(session, utcnow(), 10) == []
        assert due_delivery_ids(session, utcnow() + INTERVAL + timedelta(seconds=1), 10) == [delivery_id]


def test_claimed_deliveries_are_not_due_again_until_the_lease_ends(factory):
    ids = add_deliveries(factory, "EM0007", "EM0008")
    now = utcnow()
    lease = timedelta(minutes=10)
    with factory() as session:
        assert sorted(claim_due_deliveries(session, now, 100, lease)) == sorted(ids)
        session.commit()
    with factory() as session:
        assert claim_due_deliveries(session, now + timedelta(minutes=5), 100, lease) == [], "in flight"
        assert sorted(due_delivery_ids(session, now + lease + timedelta(seconds=1), 100)) == sorted(ids)


def test_overdue_deliveries_time_out_in_one_statement(factory):
    add_deliveries(factory, "EM0009")
    with factory() as session:
        assert mark_overdue_deliveries(session, date(2027, 1, 1)) == 1
        session.commit()
    assert statuses(factory)["EM0009"] == "timeout"


def test_pending_means_never_polled_or_an_hour_overdue(factory, carrier, limiter):
    _, client = carrier
    new, polled = add_deliveries(factory, "EM0010", "EM0011")
    poll_deliveries(factory, client, limiter, [polled], INTERVAL)
    now = utcnow()
    hour = timedelta(hours=1)
    with factory() as session:
        assert pending_delivery_ids(session, now, 10, hour) == [new]
        assert pending_delivery_ids(session, now + INTERVAL + hour + timedelta(minutes=1), 10, hour) == [new, polled]
        claim(session, [new], now, timedelta(minutes=10))
        session.commit()
    with factory() as session:
        assert pending_delivery_ids(session, now, 10, hour) == [], "a claimed delivery is not sent again"
