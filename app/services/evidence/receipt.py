"""The PDF delivery receipt (送达回证): delivery data, timeline and screenshot, with its SHA-256 on record."""

import hashlib
import io
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from PIL import Image as PilImage
from pypdf import PdfReader
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (CondPageBreak, Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table,
                                TableStyle)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import TIMEZONE, get_settings
from app.core.database import session_scope
from app.models import ArchivedDelivery, Delivery, DeliveryFile, FileKind
from app.models.base import utcnow
from app.services.carriers.kuaidi100 import COMPANY_NAMES
from app.services.deliveries import mask_address, mask_phone
from app.services.errors import PermanentError
from app.services.evidence.bounds import (DEFAULT_BOUNDS, FIELD_CHARS, EvidenceBounds, EvidenceTooLargeError,
                                          Timeline, clip, load_timeline)
from app.services.evidence.fonts import cjk_font_path, load_cjk_font
from app.services.evidence.status import latest_file, mark_complete
from app.services.filestore import sha256_of_file, store_bytes

log = logging.getLogger(__name__)

SHANGHAI = ZoneInfo(TIMEZONE)
MARGIN = 18 * mm
FRAME_PADDING = 12  # points: reportlab's frame pads 6 on each side
TIMELINE_MIN_ROOM = 30 * mm  # less room than this left: the timeline starts on a new page
SCREENSHOT_HEADING_ROOM = 48  # points kept on the screenshot's page for its heading and caption
GREY = colors.HexColor("#57606a")
RULE = colors.HexColor("#d0d7de")
STATUS_NAMES = {"pending": "待揽收", "in_transit": "运输中", "out_for_delivery": "派送中", "delivered": "已签收",
                "problem": "问题件", "returning": "退回中", "returned": "已退回", "rejected": "已拒收",
                "timeout": "超时未签收", "failed": "无法跟踪"}


class MissingScreenshotError(PermanentError):
    """The receipt embeds the tracking screenshot, and there is none (or its file is gone or altered)."""


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    sha256: str
    message: str
    receipt_number: str | None = None
    delivery_id: int | None = None


@dataclass(frozen=True)
class _Inputs:
    """What a receipt is built from, read in one transaction."""

    delivery: Delivery
    timeline: Timeline
    screenshot: bytes
    screenshot_sha256: str
    receipt_number: str


def _shanghai(moment: datetime | None) -> str:
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _pdf_date(moment: datetime) -> str:
    """`moment` as a PDF date string, in Asia/Shanghai."""
    return moment.astimezone(SHANGHAI).strftime("D:%Y%m%d%H%M%S+08'00'")


def _styles(font: str) -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("body", fontName=font, fontSize=9.5, leading=13, wordWrap="CJK")
    return {
        "title": ParagraphStyle("title", base, fontSize=24, leading=30, alignment=TA_CENTER),
        "subtitle": ParagraphStyle("subtitle", base, fontSize=11, leading=16, alignment=TA_CENTER, textColor=GREY),
        "heading": ParagraphStyle("heading", base, fontSize=12.5, leading=18, spaceBefore=10, spaceAfter=4),
        "label": ParagraphStyle("label", base, textColor=GREY),
        "body": base,
        "small": ParagraphStyle("small", base, fontSize=8, leading=11, textColor=GREY),
    }


def _numbered_canvas(font: str, receipt_number: str, generated_at: datetime, max_pages: int):
    """A canvas class stamping "page n of N" on every page and the PDF dates from `generated_at`;
    EvidenceTooLargeError as soon as the document grows past `max_pages`."""

    class NumberedCanvas(Canvas):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.setDateFormatter(lambda *_: _pdf_date(generated_at))
            self._page_states = []

        def showPage(self):  # held back until the page count is known
            if len(self._page_states) == max_pages:
                raise EvidenceTooLargeError(f"the receipt would have more than {max_pages} pages")
            self._page_states.append(dict(self.__dict__))
            self._startPage()

        def save(self):
            total = len(self._page_states)
            for state in self._page_states:
                self.__dict__.update(state)
                self.setFont(font, 8)
                self.setFillColor(GREY)
                self.drawCentredString(A4[0] / 2, MARGIN / 2,
                                       f"回证编号 {receipt_number} · 第 {self._pageNumber} 页 / 共 {total} 页")
                super().showPage()
            super().save()

    return NumberedCanvas


def _facts(delivery: Delivery, screenshot_sha256: str, receipt_number: str, generated_at: datetime,
           styles: dict) -> Table:
    carrier = COMPANY_NAMES.get(delivery.carrier, delivery.carrier)
    rows = [("回证编号 Receipt No.", receipt_number),
            ("案号 Reference", delivery.reference),
            ("收件人 Recipient", delivery.recipient_name),
            ("联系电话 Phone", mask_phone(delivery.phone)),
            ("收件地址 Address", mask_address(delivery.address)),
            ("快递公司 Carrier", f"{carrier} ({delivery.carrier})"),
            ("运单号 Tracking No.", delivery.tracking_number),
            ("投递状态 Status", f"{STATUS_NAMES.get(delivery.status, delivery.status)} ({delivery.status})"),
            ("签收时间 Delivered at", _shanghai(delivery.delivered_at)),
            ("截图 SHA-256", screenshot_sha256),
            ("生成时间 Generated at", _shanghai(generated_at))]
    table = Table([[Paragraph(escape(label), styles["label"]),
                    Paragraph(escape(clip(str(value), FIELD_CHARS)), styles["body"])]
                   for label, value in rows], colWidths=[42 * mm, None])
    table.setStyle(TableStyle([("LINEBELOW", (0, 0), (-1, -1), 0.4, RULE), ("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return table


def _timeline(timeline: Timeline, styles: dict) -> Table:
    """The shown events, oldest first, after a row saying how many earlier ones are left out."""
    header = [Paragraph(text, styles["label"]) for text in ("时间 Time", "地点 Location", "详情 Description")]
    rows = [[Paragraph(_shanghai(e.occurred_at), styles["body"]), Paragraph(escape(e.location or "-"), styles["body"]),
             Paragraph(escape(e.description), styles["body"])]
            for e in reversed(timeline.events)]
    if not rows:
        rows = [[Paragraph("-", styles["body"]), Paragraph("-", styles["body"]),
                 Paragraph("暂无物流信息 / no tracking events", styles["body"])]]
    spans = []
    if timeline.omitted:
        rows.insert(0, [Paragraph(timeline.omitted_note, styles["label"]), "", ""])
        spans = [("SPAN", (0, 1), (-1, 1))]
    # splitInRow: an event longer than a page continues on the next one instead of failing the layout.
    table = Table([header, *rows], colWidths=[36 * mm, 32 * mm, None], repeatRows=1, splitInRow=1)
    table.setStyle(TableStyle([("LINEBELOW", (0, 0), (-1, -1), 0.4, RULE), ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f6f8fa")), *spans]))
    return table


def _screenshot(png: bytes, width: float, height: float, max_pixels: int) -> Image:
    """The screenshot at the frame's width, aspect kept; shrunk to one frame when taller than that.
    EvidenceTooLargeError, before decoding it, when it has more than `max_pixels` pixels."""
    try:
        pixels_wide, pixels_high = PilImage.open(io.BytesIO(png)).size
    except PilImage.DecompressionBombError as error:
        raise EvidenceTooLargeError(f"the screenshot is too large to embed ({error})") from None
    if pixels_wide * pixels_high > max_pixels:
        raise EvidenceTooLargeError(f"the screenshot is {pixels_wide}x{pixels_high} px, over the {max_pixels} "
                                    "pixels a receipt embeds: capture it again (regenerate=True)")
    scale = min(width / pixels_wide, height / pixels_high)
    return Image(io.BytesIO(png), width=pixels_wide * scale, height=pixels_high * scale)


def _timeline_heading(timeline: Timeline) -> str:
    shown = f"，显示最新 {len(timeline.events)} 条 / newest {len(timeline.events)} shown" if timeline.omitted else ""
    return f"物流轨迹 Tracking events（共 {timeline.total} 条{shown}，北京时间 Asia/Shanghai）"


def build_receipt_pdf(delivery: Delivery, timeline: Timeline, screenshot_bytes: bytes, screenshot_sha256: str,
                      receipt_number: str, generated_at: datetime, font_path: Path,
                      bounds: EvidenceBounds = DEFAULT_BOUNDS) -> bytes:
    """The receipt as PDF bytes; the same inputs give the same bytes (reportlab's invariant mode).
    EvidenceTooLargeError when it would exceed `bounds` (pages, screenshot pixels)."""
    font = load_cjk_font(font_path)
    pdfmetrics.registerFont(font)
    styles = _styles(font.fontName)
    output = io.BytesIO()
    document = SimpleDocTemplate(output, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                                 bottomMargin=MARGIN, invariant=1, lang="zh-CN", title=f"送达回证 {receipt_number}",
                                 subject=f"{delivery.carrier} {delivery.tracking_number}",
                                 author="delivery evidence", creator="delivery evidence")
    story = [
        Paragraph("送达回证", styles["title"]),
        Paragraph("Delivery receipt", styles["subtitle"]),
        Spacer(1, 6 * mm),
        _facts(delivery, screenshot_sha256, receipt_number, generated_at, styles),
        CondPageBreak(TIMELINE_MIN_ROOM),
        Paragraph(escape(_timeline_heading(timeline)), styles["heading"]),
        _timeline(timeline, styles),
        KeepTogether([Paragraph("物流截图 Tracking screenshot", styles["heading"]),
                      _screenshot(screenshot_bytes, document.width - FRAME_PADDING,
                                  document.height - FRAME_PADDING - SCREENSHOT_HEADING_ROOM,
                                  bounds.max_embedded_pixels),
                      Paragraph(f"截图 SHA-256: {screenshot_sha256}", styles["small"])]),
    ]
    document.build(story, canvasmaker=_numbered_canvas(font.fontName, receipt_number, generated_at,
                                                       bounds.max_receipt_pages))
    return output.getvalue()


def _summary(row: DeliveryFile, existing: bool) -> dict:
    return {"delivery_id": row.delivery_id, "receipt_number": row.receipt_number, "path": row.path,
            "sha256": row.sha256, "size": row.size, "pages": row.page_count, "existing": existing}


def _receipt_count(session: Session, delivery_id: int) -> int:
    return session.scalar(select(func.count()).select_from(DeliveryFile).where(
        DeliveryFile.delivery_id == delivery_id, DeliveryFile.kind == FileKind.RECEIPT))


def _existing_receipt(factory: sessionmaker, delivery_id: int) -> dict | None:
    """The delivery's newest receipt (marking its evidence complete), or None."""
    with session_scope(factory) as session:
        row = latest_file(session, delivery_id, FileKind.RECEIPT)
        if row is None:
            return None
        mark_complete(session, delivery_id)
        return _summary(row, existing=True)


def _screenshot_bytes(files_root: Path, row: DeliveryFile) -> bytes:
    """The screenshot's bytes, refused when the file is gone or no longer what was recorded."""
    path = files_root / row.path
    if not path.is_file():
        raise MissingScreenshotError(f"screenshot file {row.path} of delivery {row.delivery_id} is missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != row.sha256:
        raise MissingScreenshotError(f"screenshot file {row.path} no longer matches its recorded SHA-256")
    return data


def receipt_number(delivery_id: int, generated_at: datetime, sequence: int) -> str:
    """HZ-<YYYYMMDD Asia/Shanghai>-<delivery id, 8 digits>-<n-th receipt of the delivery>."""
    return f"HZ-{generated_at.astimezone(SHANGHAI):%Y%m%d}-{delivery_id:08d}-{sequence}"


def _load_inputs(factory: sessionmaker, files_root: Path, delivery_id: int, generated_at: datetime,
                 bounds: EvidenceBounds) -> _Inputs:
    with session_scope(factory) as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            raise PermanentError(f"no delivery {delivery_id}")
        screenshot = latest_file(session, delivery_id, FileKind.SCREENSHOT)
        if screenshot is None:
            raise MissingScreenshotError(f"delivery {delivery_id} has no screenshot yet")
        timeline = load_timeline(session, delivery_id, bounds)
        number = receipt_number(delivery_id, generated_at, _receipt_count(session, delivery_id) + 1)
        session.expunge_all()
    return _Inputs(delivery, timeline, _screenshot_bytes(files_root, screenshot), screenshot.sha256, number)


def generate_receipt(factory: sessionmaker, files_root: Path, delivery_id: int, regenerate: bool = False,
                     now: datetime | None = None, bounds: EvidenceBounds = DEFAULT_BOUNDS) -> dict:
    """Issue the delivery's PDF receipt; an existing one is returned as it is unless `regenerate`.
    EvidenceTooLargeError (permanent) when even the bounded receipt exceeds `bounds`."""
    # 1. Idempotent: a receipt once issued is the receipt.
    if not regenerate and (existing := _existing_receipt(factory, delivery_id)):
        return existing
    # 2. Build the PDF from the delivery, its shown events and its newest screenshot.
    generated_at = now or utcnow()
    inputs = _load_inputs(factory, files_root, delivery_id, generated_at, bounds)
    pdf = build_receipt_pdf(inputs.delivery, inputs.timeline, inputs.screenshot, inputs.screenshot_sha256,
                            inputs.receipt_number, generated_at, cjk_font_path(get_settings()), bounds)
    # 3. Store it by content, then record it; the row is what `verify` checks files against.
    stored = store_bytes(files_root, pdf, ".pdf")
    row = DeliveryFile(delivery_id=delivery_id, kind=FileKind.RECEIPT, path=stored.path, sha256=stored.sha256,
                       size=stored.size, content_type="application/pdf",
                       page_count=len(PdfReader(io.BytesIO(pdf)).pages),
                       original_name=f"{inputs.receipt_number}.pdf", receipt_number=inputs.receipt_number,
                       source_sha256=inputs.screenshot_sha256, created_at=generated_at)
    # Two workers racing on one delivery both pick the same number: the unique receipt number fails
    # the second insert, and its retry finds the first one's receipt.
    with session_scope(factory) as session:
        session.add(row)
        mark_complete(session, delivery_id)
        session.flush()
        summary = _summary(row, existing=False)
    log.info("receipt %s of delivery %d stored (%s, %d pages)", summary["receipt_number"], delivery_id,
             summary["sha256"][:12], summary["pages"])
    return summary


def _delivery_reference(session: Session, delivery_id: int) -> str | None:
    """The reference of the delivery, live or archived."""
    delivery = session.get(Delivery, delivery_id) or session.get(ArchivedDelivery, delivery_id)
    return delivery.reference if delivery else None


def _receipt_where(session: Session, condition) -> DeliveryFile | None:
    return session.scalars(select(DeliveryFile).where(DeliveryFile.kind == FileKind.RECEIPT, condition)
                           .limit(1)).first()


def verify_receipt(session: Session, files_root: Path, file_path: Path) -> VerifyResult:
    """Whether the file at `file_path` is, byte for byte, a receipt this service issued."""
    if not file_path.is_file():
        raise PermanentError(f"no such file: {file_path}")
    sha256 = sha256_of_file(file_path)
    if row := _receipt_where(session, DeliveryFile.sha256 == sha256):
        reference = _delivery_reference(session, row.delivery_id)
        return VerifyResult(True, sha256, f"receipt {row.receipt_number} of delivery {row.delivery_id} "
                                          f"(reference {reference or 'unknown'}), sha256 {sha256}",
                            row.receipt_number, row.delivery_id)
    # A file still named as issued (by its SHA-256 in the files root, or by its receipt number).
    named = _receipt_where(session, (DeliveryFile.sha256 == file_path.stem.lower())
                           | (DeliveryFile.receipt_number == file_path.stem))
    if named:
        return VerifyResult(False, sha256, f"{file_path.name} is receipt {named.receipt_number} of delivery "
                                           f"{named.delivery_id} modified since it was issued (sha256 {sha256}, "
                                           f"recorded {named.sha256}; the issued file is {files_root / named.path})",
                            named.receipt_number, named.delivery_id)
    return VerifyResult(False, sha256, f"sha256 {sha256} matches no receipt on record")


def receipt_details(session: Session, files_root: Path, delivery_id: int) -> list[dict]:
    """The delivery's receipts, newest first, as operators see them; PermanentError when there is none."""
    rows = session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                      DeliveryFile.kind == FileKind.RECEIPT)
                           .order_by(DeliveryFile.id.desc())).all()
    if not rows:
        raise PermanentError(f"delivery {delivery_id} has no receipt")
    return [{"receipt_number": row.receipt_number, "file": str(files_root / row.path), "path": row.path,
             "sha256": row.sha256, "size": row.size, "pages": row.page_count,
             "generated_at": row.created_at.astimezone(SHANGHAI).isoformat(timespec="seconds"),
             "screenshot_sha256": row.source_sha256} for row in rows]
