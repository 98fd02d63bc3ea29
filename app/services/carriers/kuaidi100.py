"""The Kuaidi100 real-time query protocol (实时快递查询), see shared/spec/kuaidi100-query-protocol.md."""

import hashlib
import json
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

CHINA = ZoneInfo("Asia/Shanghai")
RETRYABLE_CODES = {"500", "501", "502"}
CONFIG_CODES = {"503", "601"}
# Display names of the Kuaidi100 company codes this service meets most.
COMPANY_NAMES = {"ems": "EMS", "youzhengguonei": "中国邮政", "shunfeng": "顺丰速运", "yuantong": "圆通速递",
                 "zhongtong": "中通快递", "shentong": "申通快递", "yunda": "韵达快递", "jd": "京东物流"}


def sign(param: str, key: str, customer: str) -> str:
    """Upper-case hex MD5 of param + key + customer, over the exact param string sent."""
    return hashlib.md5((param + key + customer).encode("utf-8")).hexdigest().upper()


def _parse_events(data: list) -> list[CarrierEvent]:
    events = []
    for item in data:
        occurred = datetime.strptime(item["ftime"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
        events.append(CarrierEvent(occurred_at=occurred, description=item["context"],
                                   location=item.get("areaName") or item.get("location") or None,
                                   status=item.get("status")))
    return sorted(events, key=lambda event: event.occurred_at)


def parse_response(body: str) -> TrackingResult:
    """A reply body as a TrackingResult, or the error it stands for."""
    try:
        reply = json.loads(body)
    except ValueError:
        raise CarrierError(f"malformed reply (not JSON): {body[:80]!r}") from None
    if not isinstance(reply, dict):
        raise CarrierError("malformed reply (not an object)")
    if reply.get("result") is False or "returnCode" in reply:
        code, message = str(reply.get("returnCode")), reply.get("message", "")
        if code in CONFIG_CODES:
            raise CarrierConfigError(f"Kuaidi100 {code}: {message}")
        if code in RETRYABLE_CODES:
            raise CarrierError(f"Kuaidi100 {code}: {message}")
        raise CarrierRequestError(f"Kuaidi100 {code}: {message}")
    try:
        return TrackingResult(state=int(reply["state"]), signed=str(reply.get("ischeck")) == "1",
                              events=_parse_events(reply.get("data") or []))
    except (KeyError, TypeError, ValueError) as error:
        raise CarrierError(f"malformed reply: {type(error).__name__}: {error}") from None


class Kuaidi100Client:
    """Queries one tracking number per call over a pooled HTTP connection."""

    def __init__(self, customer: str, key: str, url: str, timeout: float = 10.0,
                 http: httpx.Client | None = None):
        self.customer, self.key, self.url = customer, key, url
        self.http = http or httpx.Client(timeout=timeout)

    def request_form(self, carrier: str, tracking_number: str, phone: str | None = None) -> dict[str, str]:
        param = {"com": carrier.lower(), "num": tracking_number, "resultv2": "1", "show": "0", "order": "desc"}
        if phone:
            param["phone"] = phone[-4:]  # carriers check the last digits; send no more than that
        param_text = json.dumps(param, ensure_ascii=False, separators=(",", ":"))
        return {"customer": self.customer, "param": param_text, "sign": sign(param_text, self.key, self.customer)}

    def query(self, carrier: str, tracking_number: str, phone: str | None = None) -> TrackingResult:
        try:
            response = self.http.post(self.url, data=self.request_form(carrier, tracking_number, phone))
        except httpx.TimeoutException as error:
            raise CarrierError(f"timed out after {self.http.timeout.read}s: {error}") from None
        except httpx.HTTPError as error:
            raise CarrierError(f"{type(error).__name__}: {error}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise CarrierError(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise CarrierRequestError(f"HTTP {response.status_code}")
        return parse_response(response.text)

    def close(self) -> None:
        self.http.close()
