"""A local server speaking the Kuaidi100 query protocol, for the embedded default, tests and benches.

Each poll of a tracking number moves it one step along a script chosen by its prefix:
plain numbers are collected, travel, go out for delivery and are signed for (by the addressee,
by someone else, or by a parcel locker or station: the number chooses); `RET…` are returned,
`REF…` refused, `PROB…` stick at "problem". `BAD…` get error 400, `MALFORMED…` a reply that is
not JSON, `SLOW…` an answer after `slow_seconds`. SF Express (`shunfeng`) requires a phone.
Latency, a random HTTP 500 rate and a requests-per-second limit (error 502 beyond it) are set per server.
Requests are counted against the limit as they arrive, as a carrier's gateway counts them;
`GET /stats` answers the counts as JSON, for benches that run the simulator in its own process.

Timelines are relative to the wall clock at a number's first poll, and never dated after the poll
that reveals them. The pace dates them: `realistic` (benches, tests) lays the whole script in the
day before, six hours between events; `demo` dates collection half an hour before and every later
event at the poll that reveals it, so a number polled every few seconds is signed within a minute.
"""

import json
import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from app.services.carriers.kuaidi100 import sign

CHINA = ZoneInfo("Asia/Shanghai")
KNOWN_CARRIERS = {"ems", "shunfeng", "yuantong", "zhongtong", "yunda", "shentong", "jd", "youzhengguonei"}
STATE_NAMES = {0: "在途", 1: "揽收", 2: "疑难", 3: "签收", 4: "退签", 5: "派件", 6: "退回", 14: "拒签"}
SCRIPTS = {
    "RET": [1, 0, 6, 4],
    "REF": [1, 0, 5, 14],
    "PROB": [1, 2],
    "": [1, 0, 0, 5, 3],
}
EVENT_TEXT = {0: "快件已到达【{city}转运中心】", 1: "【{city}】已揽收", 2: "快件异常，请联系快递员", 3: "已签收，签收人：本人",
              4: "退回件已签收", 5: "【{city}】快递员正在派件", 6: "快件退回中", 14: "收件人拒收"}
# How a signed-for parcel goes out and is signed for, as Kuaidi100 words it: (派件, 签收); the number chooses.
DELIVERY_ENDINGS = [
    ("【{city}】快递员正在派件", "已签收，本人签收"),
    ("【{city}】快递员正在派件", "已签收，签收人：张三（他人代收）"),
    ("【{city}】快件已投递至【丰巢智能快递柜】", "快件已由【丰巢智能快递柜】代收，请及时取件"),
    ("【{city}】快递员正在派件", "已签收，签收人：本人"),
    ("【{city}】快件已到达【菜鸟驿站】", "您的快件已由【菜鸟驿站】代收，请凭取件码取件"),
    ("【{city}】快递员正在派件", "已签收，签收人：单位收发室（代收）"),
]
CITIES = ["北京", "上海", "南京", "杭州", "深圳"]
Pace = Literal["realistic", "demo"]
EVENT_STEP = timedelta(hours=6)  # realistic pace
# Under the realistic pace a number's events start this long before its first poll, so a whole script lies in the past.
SCRIPT_SPAN = EVENT_STEP * (max(len(script) for script in SCRIPTS.values()) - 1)
DEMO_COLLECTED_BEFORE = timedelta(minutes=30)  # demo pace: collected this long before the first poll
# Seconds after registration at which `deliveries add` polls a delivery under the demo pace: the first
# five reveal the longest script; the others are spares for a poll that failed or ran late (a delivery
# signed by then is skipped without asking the carrier).
DEMO_POLL_DELAYS = (0, 3, 6, 9, 12, 30, 60, 120, 240)


@dataclass
class SimulatorStats:
    requests: int = 0
    over_limit: int = 0
    per_second: dict[int, int] = field(default_factory=dict)

    @property
    def peak_per_second(self) -> int:
        return max(self.per_second.values(), default=0)

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "over_limit": self.over_limit, "peak_per_second": self.peak_per_second}


class CarrierSimulator:
    """The protocol logic, independent of HTTP; thread-safe."""

    def __init__(self, customer: str, key: str, error_rate: float = 0.0, rate_limit: float | None = None,
                 slow_seconds: float = 30.0, seed: int = 7, pace: Pace = "realistic"):
        self.customer, self.key = customer, key
        self.error_rate, self.rate_limit, self.slow_seconds = error_rate, rate_limit, slow_seconds
        self.pace = pace
        self.timelines: dict[str, list[datetime]] = {}  # the dates of each number's events revealed so far
        self.stats = SimulatorStats()
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def admit(self) -> bool:
        """Count the request; False when it is over this second's limit."""
        second = int(time.monotonic())
        with self._lock:
            self.stats.requests += 1
            count = self.stats.per_second.get(second, 0) + 1
            self.stats.per_second[second] = count
            if self.rate_limit is not None and count > self.rate_limit:
                self.stats.over_limit += 1
                return False
            return True

    def answer(self, form: dict[str, str], admitted: bool = True) -> tuple[int, str]:
        """HTTP status and body for one query form; `admitted` is what `admit` said on its arrival."""
        if not admitted:
            return 200, _error("502", "服务器繁忙 / server busy")
        if form.get("customer") != self.customer:
            return 200, _error("601", "key 已过期或无效 / unknown customer")
        param = form.get("param", "")
        if form.get("sign") != sign(param, self.key, self.customer):
            return 200, _error("503", "验证签名失败 / signature check failed")
        with self._lock:
            failing = self._random.random() < self.error_rate
        if failing:
            return 500, "Internal Server Error"
        try:
            query = json.loads(param)
            carrier, number = query["com"], query["num"]
        except (ValueError, KeyError, TypeError):
            return 200, _error("400", "参数错误 / malformed param")
        return self._track(carrier, number, query.get("phone"))

    def _track(self, carrier: str, number: str, phone: str | None) -> tuple[int, str]:
        if carrier not in KNOWN_CARRIERS or number.startswith("BAD"):
            return 200, _error("400", "快递公司参数异常或单号错误 / wrong company code or number")
        if carrier == "shunfeng" and not phone:
            return 200, _error("408", "手机号校验失败 / phone check failed")
        if number.startswith("MALFORMED"):
            return 200, "<html>gateway error</html>"
        if number.startswith("SLOW"):
            time.sleep(self.slow_seconds)
        script = next(s for prefix, s in SCRIPTS.items() if number.startswith(prefix))
        now = datetime.now(CHINA).replace(microsecond=0)
        with self._lock:
            times = self.timelines.setdefault(number, [])
            if len(times) < len(script):
                times.append(_next_event_time(self.pace, times, now))
            # Polls within one second (dates are to the second) date their steps a second apart:
            # a step dated after this moment shows from the first poll at or after its date.
            shown = [when for when in times if when <= now]
        return 200, json.dumps(_tracking_reply(carrier, number, script, shown), ensure_ascii=False)


def _next_event_time(pace: Pace, times: list[datetime], now: datetime) -> datetime:
    """The date of the step a poll at `now` reveals, strictly after `times` (the steps revealed before)."""
    if pace == "realistic":
        epoch = times[0] if times else now.replace(minute=0, second=0) - SCRIPT_SPAN
        return epoch + EVENT_STEP * len(times)
    if not times:
        return now - DEMO_COLLECTED_BEFORE
    return max(now, times[-1] + timedelta(seconds=1))


def _error(code: str, message: str) -> str:
    return json.dumps({"result": False, "returnCode": code, "message": message}, ensure_ascii=False)


def _event_text(number: str, script: list[int], state: int, city: str) -> str:
    if script[-1] != 3 or state not in (3, 5):
        return EVENT_TEXT[state].format(city=city)
    out_for_delivery, signed = DELIVERY_ENDINGS[zlib.crc32(number.encode()) % len(DELIVERY_ENDINGS)]
    return signed if state == 3 else out_for_delivery.format(city=city)


def _tracking_reply(carrier: str, number: str, script: list[int], times: list[datetime]) -> dict:
    """The reply once `len(times)` steps of `script` are revealed, the n-th dated `times[n]`."""
    events = []
    for index, (state, when) in enumerate(zip(script, times)):
        city = CITIES[index % len(CITIES)]
        events.append({"time": when.strftime("%Y-%m-%d %H:%M:%S"), "ftime": when.strftime("%Y-%m-%d %H:%M:%S"),
                       "context": _event_text(number, script, state, city), "areaName": city,
                       "status": STATE_NAMES[state], "statusCode": str(state)})
    current = script[len(times) - 1]
    return {"message": "ok", "nu": number, "com": carrier, "status": "200", "ischeck": "1" if current == 3 else "0",
            "condition": "F00", "state": str(current), "data": list(reversed(events))}


class SimulatorServer:
    """The simulator over HTTP (on 127.0.0.1 unless told otherwise), in a background thread."""

    def __init__(self, simulator: CarrierSimulator, port: int = 0, latency: float = 0.0, host: str = "127.0.0.1"):
        self.simulator, self.latency = simulator, latency
        handler = self._handler()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/poll/query.do"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out separately: Nagle would add ~40 ms

            def do_POST(self):  # noqa: N802 - the http.server API
                admitted = server.simulator.admit()
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode("utf-8")).items()}
                if server.latency:
                    time.sleep(server.latency)
                self.reply(*server.simulator.answer(form, admitted))

            def do_GET(self):  # noqa: N802 - the http.server API
                if self.path != "/stats":
                    self.reply(404, json.dumps({"message": "not found"}))
                    return
                self.reply(200, json.dumps(server.simulator.stats.as_dict()))

            def reply(self, status: int, body: str) -> None:
                payload = body.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_):
                pass

        return Handler

    def start(self) -> "SimulatorServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
