"""Evidence from oversized stored data (100,000 events, a 5 MB text) stays bounded, on SQLite and PostgreSQL,
with the real Chromium and reportlab; what cannot be bounded is refused as a permanent error."""

import io
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image
from pypdf import PdfReader
from sqlalchemy import select

from app.models import Delivery, DeliveryFile, TrackingEvent
from app.services.errors import PermanentError
from app.services.evidence.bounds import DEFAULT_BOUNDS, EvidenceBounds, EvidenceTooLargeError, timeline_of
from app.services.evidence.receipt import build_receipt_pdf, generate_receipt
from app.services.evidence.screenshot import capture_carrier_page, capture_tracking_screenshot
from app.services.filestore import sha256_of_file
from tests.services.test_receipt import add_delivered, new_delivery, screenshot_png
from tests.services.test_screenshot import decoded

EVENTS = 100_000
HUGE_TEXT = "x" * (5 * 2**20)  # 5 MB with no place to break a line
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
CUT_MARK = f"…(已截断，原文 {len(HUGE_TEXT)} 字 / truncated, {len(HUGE_TEXT)} characters)"
MAX_PNG_BYTES = 4 * 2**20
MAX_PDF_BYTES = 8 * 2**20


def oversized_delivery(factory) -> int:
    """A delivered delivery with 100,000 stored events, the newest (its signature) 5 MB long."""
    with factory() as session:
        delivery = new_delivery()
        session.add(delivery)
        session.flush()
        rows = [{"delivery_id": delivery.id, "occurred_at": START + timedelta(minutes=n), "location": "上海",
                 "description": f"快件已到达【上海转运中心】第 {n} 站", "fingerprint": f"f{n}"} for n in range(EVENTS - 1)]
        rows.append({"delivery_id": delivery.id, "occurred_at": START + timedelta(minutes=EVENTS), "location": "北京",
                     "description": HUGE_TEXT, "fingerprint": "signed"})
        session.connection().execute(TrackingEvent.__table__.insert(), rows)  # Core: twice as fast as the ORM
        session.commit()
        return delivery.id


def squeezed(text: str) -> str:
    """`text` without whitespace (PDF text extraction turns line breaks into spaces or newlines)."""
    return "".join(text.split())


def file_rows(factory, delivery_id: int, kind: str) -> list[DeliveryFile]:
    with factory() as session:
        return session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                          DeliveryFile.kind == kind)).all()


def test_100k_events_and_a_5mb_text_give_a_bounded_screenshot_and_receipt_with_notes(browser, factory, files_root):
    delivery_id = oversized_delivery(factory)

    shot = capture_tracking_screenshot(factory, files_root, browser, delivery_id)
    shown = shot["events_shown"]
    assert shot["events_total"] == EVENTS and 0 < shown <= DEFAULT_BOUNDS.max_events and shot["texts_cut"] == 1
    png = (files_root / shot["path"]).read_bytes()
    assert decoded(png).size == (900, shot["height"]), "the unbroken 5 MB text does not widen the page"
    assert shot["height"] <= DEFAULT_BOUNDS.max_page_height and len(png) <= MAX_PNG_BYTES
    note = f"另有 {EVENTS - shown} 条较早记录未显示 / {EVENTS - shown} earlier events not shown"
    page_text = browser.page().inner_text("body")  # the page the PNG was captured from
    assert note in page_text and CUT_MARK in page_text and f"共 {EVENTS} 条记录，显示最新 {shown} 条" in page_text
    [screenshot_row] = file_rows(factory, delivery_id, "screenshot")
    assert screenshot_row.sha256 == sha256_of_file(files_root / shot["path"]) == shot["sha256"]

    receipt = generate_receipt(factory, files_root, delivery_id)
    pdf = files_root / receipt["path"]
    reader = PdfReader(pdf)
    text = squeezed("".join(page.extract_text() for page in reader.pages))
    assert len(reader.pages) <= DEFAULT_BOUNDS.max_receipt_pages and pdf.stat().st_size <= MAX_PDF_BYTES
    assert squeezed(note) in text and squeezed(CUT_MARK) in text
    assert squeezed(f"共 {EVENTS} 条，显示最新 {shown} 条") in text
    [receipt_row] = file_rows(factory, delivery_id, "receipt")
    assert (receipt_row.sha256, receipt_row.page_count, receipt_row.source_sha256) == (
        sha256_of_file(pdf), len(reader.pages), screenshot_row.sha256), "the record describes the file issued"


def test_long_texts_show_fewer_events_within_the_character_budget():
    events = [TrackingEvent(occurred_at=START + timedelta(hours=n), location="上海", description="中" * 2000,
                            fingerprint=str(n)) for n in range(300)]
    timeline = timeline_of(events)
    shown_chars = sum(len(event.description) for event in timeline.events)
    assert shown_chars <= DEFAULT_BOUNDS.max_total_chars and timeline.omitted == 300 - len(timeline.events)
    assert [event.occurred_at for event in timeline.events] == [START + timedelta(hours=299 - n)
                                                                for n in range(len(timeline.events))], "newest first"
    assert all(event.cut and len(event.description) < 600 for event in timeline.events)


def test_a_page_over_the_pixel_limit_is_refused_as_permanent_and_nothing_is_stored(browser, factory, files_root):
    delivery_id = add_delivered(factory, files_root, with_screenshot=False)
    with pytest.raises(EvidenceTooLargeError, match=r"the evidence page is 900x\d+ px, over the limit of "
                                                    r"1800x300 px") as raised:
        capture_tracking_screenshot(factory, files_root, browser, delivery_id,
                                    bounds=EvidenceBounds(max_page_height=300))
    assert isinstance(raised.value, PermanentError), "not retried"
    assert file_rows(factory, delivery_id, "screenshot") == [] and not list(files_root.rglob("*.png"))


@pytest.mark.needs_cjk_font
def test_a_receipt_refuses_a_stored_screenshot_over_the_pixel_limit(factory, files_root):
    tall = io.BytesIO()
    Image.new("1", (900, 40_000), 1).save(tall, "PNG")  # stored before the bounds, or by hand
    delivery_id = add_delivered(factory, files_root, screenshot=tall.getvalue())
    with pytest.raises(EvidenceTooLargeError, match="the screenshot is 900x40000 px, over the 29491200 pixels"):
        generate_receipt(factory, files_root, delivery_id)
    assert file_rows(factory, delivery_id, "receipt") == [] and not list(files_root.rglob("*.pdf"))


def test_a_receipt_over_the_page_limit_is_refused(font_path):
    events = [TrackingEvent(occurred_at=START + timedelta(hours=n), location="上海", description="中" * 400,
                            fingerprint=str(n)) for n in range(100)]
    two_pages = EvidenceBounds(max_receipt_pages=2)
    with pytest.raises(EvidenceTooLargeError, match="more than 2 pages"):
        build_receipt_pdf(new_delivery(), timeline_of(events, two_pages), screenshot_png(), "ab" * 32,
                          "HZ-20261102-00000001-1", START, font_path, two_pages)


def test_events_at_their_column_limits_still_fit_the_receipt(font_path):
    events = [TrackingEvent(occurred_at=START + timedelta(hours=n), location="上" * 200, description="中" * 119,
                            fingerprint=str(n)) for n in range(1_000)]  # 200: the location column's length
    pdf = build_receipt_pdf(new_delivery(), timeline_of(events), screenshot_png(), "ab" * 32,
                            "HZ-20261102-00000001-1", START, font_path)
    assert len(PdfReader(io.BytesIO(pdf)).pages) <= DEFAULT_BOUNDS.max_receipt_pages


@pytest.fixture
def tall_carrier_page():
    """A carrier tracking page on 127.0.0.1, 30,000 px tall."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!DOCTYPE html><html><body style='margin:0'><div style='height:30000px'>EMS</div></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/track"
    server.shutdown()
    server.server_close()


def test_a_carrier_page_over_the_limit_is_cut_and_its_name_says_so(browser, tall_carrier_page):
    png, name = capture_carrier_page(browser, tall_carrier_page, EvidenceBounds(max_page_height=2_000))
    assert decoded(png).size == (900, 2_000)
    assert name == "carrier page (top left 900x2000 of 900x30000 px)"
