"""A hostile carrier on 127.0.0.1: answers the Kuaidi100 query the ways an attacker or a broken gateway would.

The tracking number's prefix chooses the answer (all signed for, so that any answer read through
to its end would deliver the parcel):
GOOD a well-formed record · DRIP a well-formed record, its body one byte every `drip_seconds` ·
DRIPHEAD the same, status line and headers included · HUGE 100 MB of body, no length declared ·
REDIRECT a 302 to a well-formed record · NOTJSON a cut-off reply · WRONGTYPES events with a null or
object context, a number as location, a bad or missing ftime, beside one good event ·
MANYEVENTS 100,000 events · BIGTEXT a 5 MB event text · Y9999 an event dated 9999 beside a good one ·
LONGLOC a 300-character location and a 100-character status.
`requests` counts the queries per number; `huge_bytes_sent` what HUGE replies got onto the wire.
"""

import json
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

CHINA = ZoneInfo("Asia/Shanghai")
HUGE_BYTES = 100 * 1024 * 1024
HUGE_CHUNK = 64 * 1024
MODES = ["GOOD", "DRIPHEAD", "DRIP", "HUGE", "REDIRECT", "NOTJSON", "WRONGTYPES", "MANYEVENTS", "BIGTEXT",
         "Y9999", "LONGLOC"]


def ftime(when: datetime) -> str:
    return when.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")


def event(when: datetime, context: str = "已签收，签收人：本人", **fields) -> dict:
    return {"time": ftime(when), "ftime": ftime(when), "context": context, "areaName": "北京", "status": "签收",
            **fields}


def signed_reply(number: str, events: list) -> dict:
    return {"message": "ok", "nu": number, "com": "ems", "status": "200", "ischeck": "1", "condition": "F00",
            "state": "3", "data": events}


def good_events() -> list[dict]:
    now = datetime.now(CHINA)
    return [event(now - timedelta(hours=1)), event(now - timedelta(hours=5), "【北京】已揽收", status="揽收")]


def wrong_type_events() -> list:
    now = datetime.now(CHINA)
    return [event(now - timedelta(hours=1)), event(now, context=None), event(now, context={"text": "x"}),
            event(now, areaName=12), event(now, ftime="yesterday"), event(now, ftime=None), ["not", "an", "event"]]


@lru_cache(maxsize=None)
def big_body(mode: str) -> bytes:
    """MANYEVENTS and BIGTEXT bodies, built once per process (100,000 events take a second)."""
    now = datetime.now(CHINA)
    if mode == "MANYEVENTS":
        return json.dumps(signed_reply(mode, [event(now - timedelta(seconds=i)) for i in range(100_000)])).encode()
    return json.dumps(signed_reply(mode, [event(now, context="长" * (5 * 1024 * 1024 // 3))])).encode()


def body_for(mode: str, number: str) -> bytes:
    """The reply body of the modes answered in one piece."""
    if mode in ("MANYEVENTS", "BIGTEXT"):
        return big_body(mode)
    now = datetime.now(CHINA)
    events = {
        "WRONGTYPES": wrong_type_events,
        "Y9999": lambda: [event(datetime(9999, 12, 31, 12, tzinfo=CHINA)), *good_events()],
        "LONGLOC": lambda: [event(now - timedelta(hours=1), areaName="北" * 300, status="签" * 100)],
    }.get(mode, good_events)()
    if mode == "NOTJSON":
        return b'{"message": "ok", "state": "3", "data": [{"ftime": "20'
    return json.dumps(signed_reply(number, events), ensure_ascii=False).encode()


class HostileCarrier:
    """The server in a background thread; `url` is its query address."""

    def __init__(self, drip_seconds: float = 0.25):
        big_body("MANYEVENTS"), big_body("BIGTEXT")  # ready before the first query's deadline starts
        self.drip_seconds = drip_seconds
        self.requests: Counter[str] = Counter()
        self.huge_bytes_sent = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/poll/query.do"

    def start(self) -> "HostileCarrier":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, number: str) -> None:
        with self._lock:
            self.requests[number] += 1

    def add_huge_bytes(self, count: int) -> None:
        with self._lock:
            self.huge_bytes_sent += count

    def _handler(self):
        carrier = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - the http.server API
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                number = json.loads(form["param"][0])["num"]
                carrier.count(number)
                mode = next(mode for mode in MODES if number.startswith(mode))
                try:
                    getattr(self, f"answer_{mode.lower()}", self.answer_whole)(mode, number)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up, as it should

            def do_GET(self):  # noqa: N802 - where REDIRECT points: a good record
                self.send_bytes(200, body_for("GOOD", "REDIRECTED"))

            def send_bytes(self, status: int, payload: bytes, **headers) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def answer_whole(self, mode: str, number: str) -> None:
                self.send_bytes(200, body_for(mode, number))

            def answer_redirect(self, mode: str, number: str) -> None:
                self.send_bytes(302, b"", Location=f"{carrier.base_url}/elsewhere")

            def answer_drip(self, mode: str, number: str) -> None:
                payload = body_for("GOOD", number)
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.drip(payload)

            def answer_driphead(self, mode: str, number: str) -> None:
                payload = body_for("GOOD", number)
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                self.drip(head + payload)

            def drip(self, payload: bytes) -> None:
                for index in range(len(payload)):
                    self.wfile.write(payload[index:index + 1])
                    self.wfile.flush()
                    time.sleep(carrier.drip_seconds)

            def answer_huge(self, mode: str, number: str) -> None:
                # No length declared: the body ends when the connection does (HTTP/1.0 style).
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                prefix = json.dumps(signed_reply(number, [])).encode()[:-2]  # open before the closing "]}"
                chunk = b" " * HUGE_CHUNK
                self.wfile.write(prefix)
                for _ in range(HUGE_BYTES // HUGE_CHUNK):
                    self.wfile.write(chunk)
                    carrier.add_huge_bytes(len(chunk))
                self.wfile.write(b"]}")

            def log_message(self, *_):
                pass

        return Handler
