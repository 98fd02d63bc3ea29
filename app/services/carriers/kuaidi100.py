"""The Kuaidi100 real-time query protocol (实时快递查询), see shared/spec/kuaidi100-query-protocol.md.

The reply is outside data: read within one deadline and a size cap, never through a redirect,
and checked field by field. A bad event is dropped (and logged); a bad reply fails its delivery.
"""

import hashlib
import json
import logging
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx

from app.services.carriers.base import (
    CarrierConfigError,
    CarrierError,
    CarrierEvent,
    CarrierRequestError,
    TrackingResult,
)
from app.services.carriers.deadline import DeadlineTransport, deadline

log = logging.getLogger(__name__)

CHINA = ZoneInfo("Asia/Shanghai")
RETRYABLE_CODES = {"500", "501", "502"}
CONFIG_CODES = {"503", "601"}
# Display names of the Kuaidi100 company codes this service meets most.
COMPANY_NAMES = {"ems": "EMS", "youzhengguonei": "中国邮政", "shunfeng": "顺丰速运", "yuantong": "圆通速递",
                 "zhongtong": "中通快递", "shentong": "申通快递", "yunda": "韵达快递", "jd": "京东物流"}
# A real record is a few KiB; this bounds what one reply may hold in memory.
MAX_REPLY_BYTES = 2 * 1024 * 1024
# The newest events kept of a reply (a parcel's record rarely passes 50): the evidence stays bounded.
MAX_EVENTS = 500
MAX_EVENT_TEXT = 1000  # characters of one event field; longer text is cut, marked with "…"
FTIME_FORMAT = "%Y-%m-%d %H:%M:%S"
LOGGED_DROPS = 3  # reasons named in the one log line per reply that dropped events


class BadEvent(ValueError):
    """One event of a reply is unusable; the reply's other events stand."""


def sign(param: str, key: str, customer: str) -> str:
    """Upper-case hex MD5 of param + key + customer, over the exact param string sent."""
    return hashlib.md5((param + key + customer).encode("utf-8")).hexdigest().upper()


# Control characters but tab and line breaks are removed (PostgreSQL refuses NUL in text).
CONTROL_CHARACTERS = dict.fromkeys(code for code in range(32) if chr(code) not in "\t\n\r")


def bounded(text: str, limit: int = MAX_EVENT_TEXT) -> str:
    """`text` without control characters, cut to `limit` characters, the cut marked with an ellipsis."""
    text = text[:limit * 2].translate(CONTROL_CHARACTERS)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _event_text(item: dict, *names: str, required: bool = False) -> str | None:
    """The first of `names` present in the event, checked to be text, bounded."""
    value = next((item[name] for name in names if item.get(name) not in (None, "")), None)
    if value is None:
        if required:
            raise BadEvent(f"no {names[0]}")
        return None
    if not isinstance(value, str):
        raise BadEvent(f"{names[0]} is {type(value).__name__}, not text")
    return bounded(value)


def _parse_event(item) -> CarrierEvent:
    if not isinstance(item, dict):
        raise BadEvent(f"is {type(item).__name__}, not an object")
    ftime = _event_text(item, "ftime", required=True)
    try:
        occurred = datetime.strptime(ftime, FTIME_FORMAT).replace(tzinfo=CHINA)
    except ValueError:
        raise BadEvent(f"ftime {ftime[:30]!r} is not YYYY-MM-DD HH:MM:SS") from None
    return CarrierEvent(occurred_at=occurred, description=_event_text(item, "context", required=True),
                        location=_event_text(item, "areaName", "location"), status=_event_text(item, "status"))


def _parse_events(data, label: str) -> list[CarrierEvent]:
    """The reply's well-formed events, oldest first, the newest MAX_EVENTS of them."""
    if not isinstance(data, list):
        raise CarrierError(f"malformed reply: data is {type(data).__name__}, not a list")
    events, dropped = [], []
    for index, item in enumerate(data):
        try:
            events.append(_parse_event(item))
        except BadEvent as reason:
            dropped.append(f"event {index} {reason}")
    if dropped:
        log.warning("%s: dropped %d of %d carrier events (%s)", label, len(dropped), len(data),
                    "; ".join(dropped[:LOGGED_DROPS]))
    events.sort(key=lambda event: event.occurred_at)
    if len(events) > MAX_EVENTS:
        log.warning("%s: kept the newest %d of %d carrier events", label, MAX_EVENTS, len(events))
        events = events[-MAX_EVENTS:]
    return events


def _state(value) -> int:
    """Kuaidi100's `state`: a small number, sent as text or as a number."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 2:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 100:
        return value
    raise CarrierError(f"malformed reply: state {str(value)[:20]!r}")


def parse_response(body: bytes | str, label: str = "carrier reply") -> TrackingResult:
    """A reply body as a TrackingResult, or the error it stands for; `label` names it in log lines."""
    try:
        reply = json.loads(body)
    except (ValueError, RecursionError):
        raise CarrierError(f"malformed reply (not JSON): {body[:80]!r}") from None
    if not isinstance(reply, dict):
        raise CarrierError("malformed reply (not an object)")
    if reply.get("result") is False or "returnCode" in reply:
        code, message = str(reply.get("returnCode"))[:20], str(reply.get("message", ""))[:200]
        if code in CONFIG_CODES:
            raise CarrierConfigError(f"Kuaidi100 {code}: {message}")
        if code in RETRYABLE_CODES:
            raise CarrierError(f"Kuaidi100 {code}: {message}")
        raise CarrierRequestError(f"Kuaidi100 {code}: {message}")
    return TrackingResult(state=_state(reply.get("state")), signed=str(reply.get("ischeck")) == "1",
                          events=_parse_events(reply.get("data") or [], label))


class Kuaidi100Client:
    """Queries one tracking number per call over pooled HTTP connections, each call within `timeout` seconds."""

    def __init__(self, customer: str, key: str, url: str, timeout: float = 10.0,
                 max_reply_bytes: int = MAX_REPLY_BYTES):
        self.customer, self.key, self.url = customer, key, url
        self.timeout, self.max_reply_bytes = timeout, max_reply_bytes
        # No redirect is followed (httpx's default, said here): a 3xx is an error of its own.
        self.http = httpx.Client(timeout=timeout, transport=DeadlineTransport(), follow_redirects=False)

    def request_form(self, carrier: str, tracking_number: str, phone: str | None = None) -> dict[str, str]:
        param = {"com": carrier.lower(), "num": tracking_number, "resultv2": "1", "show": "0", "order": "desc"}
        if phone:
            param["phone"] = phone[-4:]  # carriers check the last digits; send no more than that
        param_text = json.dumps(param, ensure_ascii=False, separators=(",", ":"))
        return {"customer": self.customer, "param": param_text, "sign": sign(param_text, self.key, self.customer)}

    def query(self, carrier: str, tracking_number: str, phone: str | None = None) -> TrackingResult:
        form = self.request_form(carrier, tracking_number, phone)
        try:
            with deadline(self.timeout):
                status, location, body = self._post(form)
        except httpx.TimeoutException:
            raise CarrierError(f"timed out: no complete answer within the {self.timeout:g} s deadline") from None
        except httpx.HTTPError as error:
            raise CarrierError(f"{type(error).__name__}: {error}") from None
        if 300 <= status < 400:
            log.warning("%s %s: carrier answered HTTP %d to %s, not followed", carrier, tracking_number, status,
                        location)
            raise CarrierError(f"HTTP {status} redirect to {location} not followed")
        if status >= 500 or status == 429:
            raise CarrierError(f"HTTP {status}")
        if status != 200:
            raise CarrierRequestError(f"HTTP {status}")
        return parse_response(body, f"{carrier} {tracking_number}")

    def _post(self, form: dict[str, str]) -> tuple[int, str, bytes]:
        """Status, redirect target (quoted, bounded) and body of the reply; the body only of a 200."""
        with self.http.stream("POST", self.url, data=form, headers={"Accept-Encoding": "identity"}) as response:
            location = repr(response.headers.get("Location", "")[:100])
            return response.status_code, location, self._body(response) if response.status_code == 200 else b""

    def _body(self, response: httpx.Response) -> bytes:
        """The raw body, read no further than max_reply_bytes."""
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise CarrierError(f"reply encoded {encoding[:20]!r} although identity was asked for")
        declared = response.headers.get("Content-Length", "")
        too_large = CarrierError(f"reply larger than {self.max_reply_bytes} bytes: not read")
        if declared.isdigit() and int(declared) > self.max_reply_bytes:
            raise too_large
        body = bytearray()
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > self.max_reply_bytes:
                raise too_large
        return bytes(body)

    def close(self) -> None:
        self.http.close()
