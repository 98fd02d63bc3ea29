"""A hostile carrier (tests/support/hostile_carrier.py) against the Kuaidi100 client and the tracking job,
on SQLite and PostgreSQL: every bad answer fails its own delivery, named, within the client's deadline;
the good deliveries of the chunk are stored and their evidence sent; the carrier is asked once per delivery."""

import logging
from datetime import date, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from app.core.broker import redis_client
from app.core.migrations import upgrade_app_schema
from app.models import Delivery, TrackingEvent
from app.models.base import utcnow
from app.services.carriers.base import CarrierError, TrackingResult
from app.services.carriers.kuaidi100 import MAX_REPLY_BYTES, Kuaidi100Client
from app.services.errors import PermanentError
from app.services.ratelimit import RateLimiter
from app.services.tracking import poll_deliveries
from tests.support.hostile_carrier import HUGE_BYTES, MODES, HostileCarrier

DEADLINE = 1.0
INTERVAL = timedelta(minutes=30)
DELIVERED_MODES = ["GOOD", "WRONGTYPES", "Y9999", "LONGLOC"]
# What each failing mode leaves in its delivery's last_error: the client's own words.
FAILURES = {
    "DRIP": "within the 1 s deadline", "DRIPHEAD": "within the 1 s deadline",
    "HUGE": f"larger than {MAX_REPLY_BYTES} bytes", "MANYEVENTS": f"larger than {MAX_REPLY_BYTES} bytes",
    "BIGTEXT": f"larger than {MAX_REPLY_BYTES} bytes", "REDIRECT": "HTTP 302 redirect", "NOTJSON": "not JSON",
}


@pytest.fixture
def carrier():
    server = HostileCarrier().start()
    client = Kuaidi100Client("C1", "K1", server.url, timeout=DEADLINE)
    yield server, client
    client.close()
    server.stop()


@pytest.fixture
def factory(sa_engine):
    upgrade_app_schema(sa_engine)
    return sessionmaker(bind=sa_engine, expire_on_commit=False)


@pytest.fixture
def limiter(embedded_broker, settings):
    return RateLimiter(redis_client(settings.broker_url), f"test-hostile-{utcnow().timestamp()}", rate=500)


def add_deliveries(factory, numbers) -> dict[str, int]:
    with factory() as session:
        rows = [Delivery(reference=f"CASE-{n}", recipient_name="张三", phone="13800138000", address="北京市",
                         carrier="ems", tracking_number=n, deadline=date(2099, 12, 31)) for n in numbers]
        session.add_all(rows)
        session.commit()
        return {row.tracking_number: row.id for row in rows}


def deliveries(factory) -> dict[str, Delivery]:
    with factory() as session:
        return {d.tracking_number: d for d in session.scalars(select(Delivery))}


@pytest.mark.parametrize("mode", sorted(FAILURES))
def test_each_hostile_answer_is_a_transient_carrier_error_within_the_deadline(carrier, mode):
    server, client = carrier
    with pytest.raises(CarrierError, match=FAILURES[mode]) as raised:
        client.query("ems", f"{mode}1")
    assert not isinstance(raised.value, PermanentError), "waiting may heal it: the delivery is backed off"
    assert server.requests == {f"{mode}1": 1}, "asked once, no redirect followed"


def test_a_huge_body_is_not_read_past_the_cap(carrier):
    server, client = carrier
    with pytest.raises(CarrierError, match="larger than"):
        client.query("ems", "HUGE1")
    assert server.huge_bytes_sent < HUGE_BYTES / 4, "the client hung up; socket buffers hold the rest"


def test_a_redirect_is_logged_not_followed(carrier, caplog):
    _, client = carrier
    with caplog.at_level(logging.WARNING), pytest.raises(CarrierError):
        client.query("ems", "REDIRECT1")
    assert "HTTP 302" in caplog.text and "/elsewhere" in caplog.text and "not followed" in caplog.text


def test_events_of_the_wrong_type_are_dropped_and_named(carrier, caplog):
    _, client = carrier
    with caplog.at_level(logging.WARNING):
        result = client.query("ems", "WRONGTYPES1")
    assert result.signed and len(result.events) == 1
    assert "dropped 6 of 7 carrier events" in caplog.text
    assert "no context" in caplog.text and "context is dict" in caplog.text and "areaName is int" in caplog.text


def test_a_hostile_chunk_stores_every_good_delivery_and_asks_the_carrier_once_each(factory, carrier, limiter):
    server, client = carrier
    ids = add_deliveries(factory, [f"{mode}{i}" for mode in MODES for i in (1, 2)])
    sent = []
    summary = poll_deliveries(factory, client, limiter, list(ids.values()), INTERVAL, concurrency=8,
                              on_delivered=sent.append, polled_since=utcnow())
    delivered = {f"{mode}{i}" for mode in DELIVERED_MODES for i in (1, 2)}
    assert sorted(sent) == sorted(ids[number] for number in delivered), "evidence sent for each delivered one"
    assert summary.polled == len(delivered) and summary.errors == len(ids) - len(delivered)
    assert server.requests == {number: 1 for number in ids}
    found = deliveries(factory)
    for number, delivery in found.items():
        mode = number[:-1]
        if number in delivered:
            assert (delivery.status, delivery.evidence_status) == ("delivered", "requested"), number
        else:
            assert delivery.status == "pending" and FAILURES[mode] in delivery.last_error, number
            assert delivery.next_poll_at > utcnow(), "backed off, not failed for good"
    assert found["Y99991"].delivered_at.year == date.today().year, "the year-9999 event is not believed"
    with factory() as session:
        events = session.scalars(select(TrackingEvent).where(TrackingEvent.delivery_id == ids["LONGLOC1"])).all()
        assert [(len(e.location), len(e.carrier_status)) for e in events] == [(200, 40)], "fitted to the columns"
        years = session.scalars(select(TrackingEvent.occurred_at).where(TrackingEvent.delivery_id == ids["Y99991"]))
        assert all(when.year < 9999 for when in years)


def test_a_retried_chunk_queries_only_the_deliveries_it_has_not_finished(factory, carrier, limiter):
    server, client = carrier
    ids = list(add_deliveries(factory, ["GOOD1", "GOOD2", "DRIP1", "GOOD3"]).values())
    claimed_at = utcnow()
    # The first attempt got through two deliveries (one of them a carrier failure) before it died.
    poll_deliveries(factory, client, limiter, ids[1:3], INTERVAL, polled_since=claimed_at)
    retry = poll_deliveries(factory, client, limiter, ids, INTERVAL, polled_since=claimed_at)
    assert (retry.skipped, retry.already_polled, retry.polled) == (1, 1, 2), "GOOD2 delivered, DRIP1 backed off"
    assert server.requests == {"GOOD1": 1, "GOOD2": 1, "DRIP1": 1, "GOOD3": 1}
    again = poll_deliveries(factory, client, limiter, ids, INTERVAL, polled_since=claimed_at)
    assert (again.skipped, again.already_polled) == (3, 1) and sum(server.requests.values()) == 4


class ScriptedCarrier:
    """Another carrier's client, answering a state the database's integer column refuses for one number."""

    def query(self, carrier: str, tracking_number: str, phone: str | None = None) -> TrackingResult:
        return TrackingResult(state=2**40 if tracking_number == "OVERFLOW1" else 0, signed=False)


@pytest.mark.parametrize("sa_engine", ["postgresql"], indirect=True)
def test_a_value_postgresql_refuses_fails_only_its_delivery(factory, limiter):
    ids = add_deliveries(factory, ["EM1", "OVERFLOW1", "EM2"])
    summary = poll_deliveries(factory, ScriptedCarrier(), limiter, list(ids.values()), INTERVAL)
    assert summary.polled == 2 and summary.errors == 1
    found = deliveries(factory)
    assert found["EM1"].status == found["EM2"].status == "in_transit"
    assert found["OVERFLOW1"].last_error.startswith("UnstorableAnswer: NumericValueOutOfRange")


@pytest.mark.parametrize("sa_engine", ["postgresql"], indirect=True)
def test_a_delivery_the_database_holds_back_leaves_the_rest_stored_and_only_it_is_polled_again(
        sa_engine, factory, carrier, limiter):
    server, client = carrier
    ids = add_deliveries(factory, ["GOOD1", "GOOD2", "GOOD3"])
    with sa_engine.connect() as admin:
        admin.execute(text(f'ALTER DATABASE "{sa_engine.url.database}" SET lock_timeout = 300'))
        admin.commit()
    sa_engine.dispose()  # new connections take the lock timeout
    claimed_at, sent = utcnow(), []
    with sa_engine.connect() as holder:  # another transaction holds GOOD2's row
        holder.execute(text("SELECT id FROM deliveries WHERE id = :id FOR UPDATE"), {"id": ids["GOOD2"]})
        with pytest.raises(OperationalError, match="lock"):
            poll_deliveries(factory, client, limiter, list(ids.values()), INTERVAL, on_delivered=sent.append,
                            polled_since=claimed_at)
        holder.rollback()
    assert sorted(sent) == sorted([ids["GOOD1"], ids["GOOD3"]]), "stored before the error was raised, and sent"
    retry = poll_deliveries(factory, client, limiter, list(ids.values()), INTERVAL, on_delivered=sent.append,
                            polled_since=claimed_at)
    assert retry.skipped == 2 and retry.delivered_ids == [ids["GOOD2"]]
    assert server.requests == {"GOOD1": 1, "GOOD2": 2, "GOOD3": 1}, "the retry asked only for the unfinished one"
