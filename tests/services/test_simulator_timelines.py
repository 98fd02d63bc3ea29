"""The simulator's timelines over real HTTP: relative to the wall clock, ordered, never dated after the
poll that shows them, inside the window tracking believes, and signed for in the carrier's varied words."""

import time
from datetime import datetime, timedelta

import pytest

from app.services.carriers.kuaidi100 import Kuaidi100Client
from app.services.carriers.simulator import CHINA, DEMO_COLLECTED_BEFORE, EVENT_STEP, CarrierSimulator, SimulatorServer
from app.services.tracking import EVENT_CLOCK_SKEW, POSTED_BEFORE_REGISTRATION

CUSTOMER, KEY = "CUSTOMER01", "TESTKEY"
PLAIN_SCRIPT_POLLS = 5  # a plain number is signed for at its fifth poll


def serve(pace: str):
    server = SimulatorServer(CarrierSimulator(CUSTOMER, KEY, pace=pace)).start()
    return server, Kuaidi100Client(CUSTOMER, KEY, server.url, timeout=2.0)


@pytest.fixture
def realistic():
    server, client = serve("realistic")
    yield client
    client.close()
    server.stop()


@pytest.fixture
def demo():
    server, client = serve("demo")
    yield client
    client.close()
    server.stop()


def now_to_the_second() -> datetime:
    return datetime.now(CHINA).replace(microsecond=0)


def assert_believable(events, registered_at: datetime) -> None:
    """Strictly ordered, and inside the window app.services.tracking keeps (no event dropped)."""
    times = [event.occurred_at for event in events]
    assert times == sorted(set(times)), "strictly ordered"
    assert registered_at - POSTED_BEFORE_REGISTRATION <= times[0] and times[-1] <= datetime.now(CHINA)
    assert times[-1] <= datetime.now(CHINA) + EVENT_CLOCK_SKEW


def test_realistic_pace_dates_the_script_in_the_day_before_the_first_poll(realistic):
    registered_at = now_to_the_second()
    results = [realistic.query("ems", "EM1000001CN") for _ in range(PLAIN_SCRIPT_POLLS)]

    assert [len(result.events) for result in results] == [1, 2, 3, 4, 5], "one step per poll"
    events = results[-1].events
    assert results[-1].signed and not results[-2].signed
    assert_believable(events, registered_at)
    assert events[0].description.endswith("已揽收") and events[0].occurred_at < registered_at - timedelta(hours=23)
    assert {later.occurred_at - earlier.occurred_at for earlier, later in zip(events, events[1:])} == {EVENT_STEP}


def test_demo_pace_collects_before_registration_and_dates_each_later_event_at_its_poll(demo):
    registered_at = now_to_the_second()
    first = demo.query("ems", "EM1000002CN")
    (collected,) = first.events
    assert timedelta(0) <= collected.occurred_at - (registered_at - DEMO_COLLECTED_BEFORE) <= timedelta(seconds=1)
    results, polled_at = [first], []
    for _ in range(PLAIN_SCRIPT_POLLS - 1):
        time.sleep(1.05)  # dates are to the second: one poll a second shows each step at once
        polled_at.append(now_to_the_second())
        results.append(demo.query("ems", "EM1000002CN"))

    assert [len(result.events) for result in results] == [1, 2, 3, 4, 5]
    events = results[-1].events
    assert results[-1].signed and events[-1].occurred_at > registered_at, "signed after registration"
    assert_believable(events, registered_at)
    for event, asked_at in zip(events[1:], polled_at):
        assert asked_at <= event.occurred_at <= asked_at + timedelta(seconds=1), "dated at the poll that shows it"


def test_demo_pace_never_shows_an_event_dated_after_the_poll(demo):
    burst = []
    for _ in range(PLAIN_SCRIPT_POLLS):
        result = demo.query("ems", "EM1000003CN")
        burst.append((result, datetime.now(CHINA)))
    for result, answered_at in burst:
        assert all(event.occurred_at <= answered_at for event in result.events)

    # Every step of the burst was revealed, each dated a second after the one before: all show by then.
    time.sleep(PLAIN_SCRIPT_POLLS - 1)
    settled = demo.query("ems", "EM1000003CN")
    assert len(settled.events) == PLAIN_SCRIPT_POLLS and settled.signed
    assert_believable(settled.events, now_to_the_second())


def test_sign_texts_vary_and_name_collectors_and_lockers(realistic):
    signed_texts = {}
    for index in range(30):
        number = f"EM{2000000 + index}CN"
        for _ in range(PLAIN_SCRIPT_POLLS):
            result = realistic.query("ems", number)
        assert result.signed
        signed_texts[number] = result.events[-1].description
        again = realistic.query("ems", number)
        assert again.events == result.events, "a number's timeline stays as it was shown"

    texts = set(signed_texts.values())
    assert len(texts) >= 4
    assert any("他人代收" in text for text in texts), "signed for by someone else"
    assert any("快递柜" in text and "代收" in text for text in texts), "left in a parcel locker"
    assert any("本人" in text for text in texts), "signed for in person"


def test_refused_and_returned_parcels_never_go_to_a_locker(realistic):
    for number in ("REF0001", "RET0001"):
        for _ in range(4):
            result = realistic.query("ems", number)
        assert not result.signed
        assert not any("快递柜" in event.description or "代收" in event.description for event in result.events)
