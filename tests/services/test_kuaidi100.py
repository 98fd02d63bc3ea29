"""The Kuaidi100 client over real HTTP against the local simulator (the production code under test)."""

import json
from datetime import datetime, timedelta
from urllib.parse import parse_qs

import httpx
import pytest

from app.services.carriers.base import CarrierConfigError, CarrierError, CarrierRequestError
from app.services.carriers.kuaidi100 import MAX_EVENT_TEXT, MAX_EVENTS, Kuaidi100Client, parse_response, sign
from app.services.carriers.simulator import CarrierSimulator, SimulatorServer
from app.services.errors import PermanentError

CUSTOMER, KEY = "CUSTOMER01", "TESTKEY"


@pytest.fixture
def simulator():
    server = SimulatorServer(CarrierSimulator(CUSTOMER, KEY, slow_seconds=3)).start()
    yield server
    server.stop()


@pytest.fixture
def client(simulator):
    client = Kuaidi100Client(CUSTOMER, KEY, simulator.url, timeout=1.0)
    yield client
    client.close()


def test_signature_is_upper_case_md5_of_param_key_customer():
    # Vector computed once, by hand: md5('{"com":"ems","num":"1234567890"}TESTKEYCUSTOMER01').
    assert sign('{"com":"ems","num":"1234567890"}', "TESTKEY", "CUSTOMER01") == "78238F9F239F0F2F4558F6638D17DC7F"


def test_request_form_signs_exactly_the_param_sent(client):
    form = client.request_form("EMS", "1234567890", phone="13800138000")
    param = json.loads(form["param"])
    assert param["com"] == "ems" and param["num"] == "1234567890"
    assert param["phone"] == "8000", "only the last digits leave the service"
    assert form["sign"] == sign(form["param"], KEY, CUSTOMER)
    assert form["customer"] == CUSTOMER
    encoded = httpx.Request("POST", "http://x", data=form).content.decode()
    assert parse_qs(encoded)["param"] == [form["param"]]


def test_a_parcel_progresses_to_signed_across_polls(client):
    states = [client.query("ems", "EM100000001CN").state for _ in range(5)]
    assert states == [1, 0, 0, 5, 3]
    final = client.query("ems", "EM100000001CN")
    assert final.signed and final.state == 3
    assert [e.occurred_at for e in final.events] == sorted(e.occurred_at for e in final.events)
    assert final.events[0].description.endswith("已揽收") and final.events[-1].description.startswith("已签收")
    assert str(final.events[0].occurred_at.tzinfo) == "Asia/Shanghai"


@pytest.mark.parametrize(("number", "final_state"), [("RET0001", 4), ("REF0001", 14), ("PROB0001", 2)])
def test_other_outcomes(client, number, final_state):
    for _ in range(6):
        result = client.query("yunda", number)
    assert result.state == final_state and not result.signed


def test_bad_number_is_a_permanent_request_error(client):
    with pytest.raises(CarrierRequestError, match="400") as raised:
        client.query("ems", "BAD123")
    assert isinstance(raised.value, PermanentError)


def test_unknown_company_code_is_rejected(client):
    with pytest.raises(CarrierRequestError, match="400"):
        client.query("nosuchcarrier", "123")


def test_sf_express_without_phone_fails_the_phone_check(client):
    with pytest.raises(CarrierRequestError, match="408"):
        client.query("shunfeng", "SF100")
    assert client.query("shunfeng", "SF100", phone="13800138000").state == 1


def test_wrong_key_is_a_configuration_error(simulator):
    wrong = Kuaidi100Client(CUSTOMER, "WRONG", simulator.url)
    with pytest.raises(CarrierConfigError, match="503"):
        wrong.query("ems", "EM1")
    with pytest.raises(CarrierConfigError, match="601"):
        Kuaidi100Client("SOMEONE", KEY, simulator.url).query("ems", "EM1")


def test_http_500_is_transient(simulator, client):
    simulator.simulator.error_rate = 1.0
    with pytest.raises(CarrierError) as raised:
        client.query("ems", "EM2")
    assert not isinstance(raised.value, PermanentError)


def test_malformed_reply_is_transient(client):
    with pytest.raises(CarrierError, match="malformed") as raised:
        client.query("ems", "MALFORMED1")
    assert not isinstance(raised.value, PermanentError)


def test_timeout_is_transient(client):
    with pytest.raises(CarrierError, match="timed out") as raised:
        client.query("ems", "SLOW1")
    assert not isinstance(raised.value, PermanentError)


def test_rate_limit_answers_busy_beyond_the_limit(simulator, client):
    simulator.simulator.rate_limit = 3
    outcomes = []
    for _ in range(10):  # however the calls straddle a second boundary, one second sees more than 3
        try:
            client.query("ems", "EM3")
            outcomes.append("ok")
        except CarrierError as error:
            outcomes.append(str(error))
    assert outcomes.count("ok") >= 3
    assert any("502" in outcome for outcome in outcomes)
    stats = httpx.get(simulator.url.replace("/poll/query.do", "/stats")).json()
    assert stats["requests"] == 10
    assert stats["over_limit"] == 10 - outcomes.count("ok") >= 1, "/stats reports what the clients saw"


def _reply(events, state="0") -> str:
    return json.dumps({"message": "ok", "state": state, "ischeck": "0", "data": events}, ensure_ascii=False)


def test_only_the_newest_events_are_kept():
    start = datetime(2026, 11, 1, 9)
    events = [{"ftime": (start + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S"), "context": f"e{i}"}
              for i in reversed(range(2000))]  # newest first, as Kuaidi100 sends them
    kept = parse_response(_reply(events)).events
    assert [e.description for e in kept] == [f"e{i}" for i in range(2000 - MAX_EVENTS, 2000)]


def test_event_text_is_bounded_and_cleaned():
    [event] = parse_response(_reply([{"ftime": "2026-11-01 09:00:00", "context": "签\x00收" + "长" * 5000}])).events
    assert len(event.description) == MAX_EVENT_TEXT and event.description.startswith("签收长")
    assert event.description.endswith("…"), "the cut is marked"


@pytest.mark.parametrize("state", ["999", "3.5", None, True, {"x": 1}, 10**12])
def test_a_reply_with_an_impossible_state_fails_its_delivery(state):
    with pytest.raises(CarrierError, match="state"):
        parse_response(_reply([], state=state))


def test_a_reply_whose_events_are_not_a_list_fails_its_delivery():
    with pytest.raises(CarrierError, match="data is dict"):
        parse_response(_reply({"ftime": "2026-11-01 09:00:00"}))
