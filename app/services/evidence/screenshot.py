"""The tracking screenshot: the delivery's timeline rendered as an evidence page and captured as a PNG."""

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from django.template import Context, Engine
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from app.core.config import TIMEZONE
from app.core.database import session_scope
from app.models import Delivery, DeliveryFile, FileKind
from app.models.base import utcnow
from app.services.carriers.kuaidi100 import COMPANY_NAMES
from app.services.errors import MissingDependencyError, PermanentError
from app.services.evidence.bounds import (DEFAULT_BOUNDS, FIELD_CHARS, EvidenceBounds, Timeline, clip,
                                           load_timeline, refuse_oversized_page)
from app.services.evidence.browser import BrowserSession
from app.services.evidence.status import latest_file
from app.services.filestore import StoredFile, store_bytes

log = logging.getLogger(__name__)

SHANGHAI = ZoneInfo(TIMEZONE)
TEMPLATES = Engine(dirs=[str(Path(__file__).parent / "templates")], autoescape=True)
# Two different Han characters drawn alone: with no CJK font both become the same empty box.
GLYPH_PAGE = ('<html><body style="margin:0;font-family:\'WenQuanYi Micro Hei\',\'Noto Sans CJK SC\',sans-serif">'
              '<div id="g" style="font-size:96px;line-height:120px;width:120px;text-align:center">{}</div></body></html>')
GLYPH_PAIR = ("中", "国")
PAGE_SIZE = "() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"


class ScreenshotError(Exception):
    """The page hung or the browser crashed (Playwright's TimeoutError, or its Error twice): transient, retried."""


@dataclass(frozen=True)
class CapturedPage:
    png: bytes
    width: int
    height: int


def _shanghai(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def render_tracking_page(delivery: Delivery, timeline: Timeline, captured_at: datetime) -> str:
    """The evidence page: carrier, tracking number, the shown events newest first and a note of those left
    out, capture time (Asia/Shanghai)."""
    carrier = clip(delivery.carrier, FIELD_CHARS)
    context = {
        "carrier": carrier,
        "carrier_name": COMPANY_NAMES.get(delivery.carrier, carrier),
        "tracking_number": clip(delivery.tracking_number, FIELD_CHARS),
        "reference": clip(delivery.reference, FIELD_CHARS),
        "status": clip(delivery.status, FIELD_CHARS),
        "events": [{"time": _shanghai(e.occurred_at), "location": e.location, "description": e.description}
                   for e in timeline.events],
        "total": timeline.total,
        "omitted_note": timeline.omitted_note,
        "captured_at": _shanghai(captured_at),
    }
    return TEMPLATES.get_template("tracking_page.html").render(Context(context))


def _with_browser(browser: BrowserSession, capture):
    """Run `capture(page)`; a hung page is abandoned, a crashed browser relaunched and tried once more."""
    from playwright.sync_api import Error as PlaywrightError, TimeoutError as PlaywrightTimeout

    for attempt in (1, 2):
        try:
            return capture(browser.page())
        except PlaywrightTimeout as error:
            browser.abandon_page()
            raise ScreenshotError(f"page did not render within the timeout: {error.message.splitlines()[0]}") from None
        except PlaywrightError as error:
            log.warning("Chromium failed (%s); relaunching it", error.message.splitlines()[0])
            browser.close()
            if attempt == 2:
                raise ScreenshotError(f"Chromium failed twice: {error.message.splitlines()[0]}") from None


def render_png(browser: BrowserSession, html: str, selector: str | None = None,
               bounds: EvidenceBounds = DEFAULT_BOUNDS) -> CapturedPage:
    """`html` rendered in the reused page and captured (the whole page, or one element);
    EvidenceTooLargeError, before any capture, when the page is larger than `bounds` allow."""
    def capture(page):
        page.set_content(html, wait_until="load")
        size = page.evaluate(PAGE_SIZE)
        refuse_oversized_page(*size, bounds)
        target = page.locator(selector) if selector else page
        png = target.screenshot(type="png", **({} if selector else {"full_page": True}))
        return CapturedPage(png, *size)

    return _with_browser(browser, capture)


def chinese_renders(browser: BrowserSession) -> bool:
    """True when two different Han characters give two different images (no CJK font: two equal boxes)."""
    first, second = (render_png(browser, GLYPH_PAGE.format(char), "#g").png for char in GLYPH_PAIR)
    return first != second


def ensure_chinese_renders(browser: BrowserSession) -> None:
    if not browser.chinese_checked:
        if not chinese_renders(browser):
            raise MissingDependencyError("Chinese renders as empty boxes: install a CJK font (Debian package "
                                         "fonts-wqy-microhei or fonts-noto-cjk), then restart the worker")
        browser.chinese_checked = True


def capture_carrier_page(browser: BrowserSession, url: str,
                         bounds: EvidenceBounds = DEFAULT_BOUNDS) -> tuple[bytes, str]:
    """The carrier's own tracking page, in a page of its own, and its name on record: the top and left of
    a page larger than `bounds` allow, the name saying so."""
    def capture(_):
        page = browser.new_page()
        try:
            page.goto(url, wait_until="load")
            width, height = page.evaluate(PAGE_SIZE)
            shown = min(width, bounds.max_page_width), min(height, bounds.max_page_height)
            png = page.screenshot(type="png", full_page=True,
                                  clip={"x": 0, "y": 0, "width": shown[0], "height": shown[1]})
            cut = "" if shown == (width, height) else f" (top left {shown[0]}x{shown[1]} of {width}x{height} px)"
            return png, f"carrier page{cut}"
        finally:
            page.close()

    return _with_browser(browser, capture)


def _load(factory: sessionmaker, delivery_id: int, bounds: EvidenceBounds) -> tuple[Delivery, Timeline]:
    with session_scope(factory) as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            raise PermanentError(f"no delivery {delivery_id}")
        timeline = load_timeline(session, delivery_id, bounds)
        session.expunge_all()
        return delivery, timeline


def _file_summary(row: DeliveryFile, existing: bool) -> dict:
    return {"delivery_id": row.delivery_id, "path": row.path, "sha256": row.sha256, "size": row.size,
            "existing": existing}


def _recorded(session, delivery_id: int, stored: StoredFile, name: str) -> DeliveryFile:
    """The delivery's screenshot row for these bytes, added unless the same bytes are recorded already."""
    row = session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                     DeliveryFile.kind == FileKind.SCREENSHOT,
                                                     DeliveryFile.sha256 == stored.sha256)).first()
    if row is None:
        row = DeliveryFile(delivery_id=delivery_id, kind=FileKind.SCREENSHOT, path=stored.path, sha256=stored.sha256,
                           size=stored.size, content_type="image/png", original_name=name)
        session.add(row)
        session.flush()
    return row


def capture_tracking_screenshot(factory: sessionmaker, files_root: Path, browser: BrowserSession, delivery_id: int,
                                carrier_page_url: str | None = None, regenerate: bool = False,
                                bounds: EvidenceBounds = DEFAULT_BOUNDS) -> dict:
    """Capture and store the delivery's evidence page; an existing screenshot is kept unless `regenerate`.
    The summary says how many events the page shows of how many stored, and how many texts it cut."""
    if not regenerate:
        with session_scope(factory) as session:
            if existing := latest_file(session, delivery_id, FileKind.SCREENSHOT):
                return _file_summary(existing, existing=True)
    delivery, timeline = _load(factory, delivery_id, bounds)
    ensure_chinese_renders(browser)
    rows = []
    if carrier_page_url:
        url = carrier_page_url.format(carrier=delivery.carrier, tracking_number=delivery.tracking_number)
        png, name = capture_carrier_page(browser, url, bounds)
        rows.append((store_bytes(files_root, png, ".png"), name))
    page = render_png(browser, render_tracking_page(delivery, timeline, utcnow()), bounds=bounds)
    rows.append((store_bytes(files_root, page.png, ".png"), "tracking timeline"))
    with session_scope(factory) as session:
        stored = [_recorded(session, delivery_id, f, name) for f, name in rows]
        log.info("screenshot of delivery %d stored (%s, %d bytes, %d of %d events)", delivery_id,
                 stored[-1].sha256[:12], stored[-1].size, len(timeline.events), timeline.total)
        return {**_file_summary(stored[-1], existing=False), "width": page.width, "height": page.height,
                **timeline.summary()}
