"""The PDF delivery receipt (送达回证): a form of the delivery's facts, the timeline and the screenshots,
with its SHA-256 on record.

The QR code cannot hold the SHA-256 of the file it is printed in. It holds what the page proves:
`HZ-RECEIPT <receipt number> SCREENSHOT-SHA256 <the embedded timeline screenshot's SHA-256>
FACTS-SHA256 <SHA-256 of the form's rows as printed>` (see `qr_payload`). The same text is the PDF's
/Keywords, so `verify_receipt` checks an issued file's QR claim against the record, and `verify_qr`
checks a claim read by a phone against the record and the issued file on record.
"""

import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from PIL import Image as PilImage
from pypdf import PdfReader
from reportlab.lib import colors
from reportlab.graphics.barcode import qrencoder
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (CondPageBreak, Flowable, Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer,
                                Table, TableStyle)
from sqlalchemy import func, not_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import TIMEZONE, Settings, get_settings
from app.core.database import session_scope
from app.models import ArchivedDelivery, Delivery, DeliveryFile, FileKind, TrackingEvent
from app.models.base import utcnow
from app.services.carriers.kuaidi100 import COMPANY_NAMES
from app.services.deliveries import mask_address, mask_phone, parse_documents
from app.services.errors import PermanentError
from app.services.evidence.bounds import (DEFAULT_BOUNDS, FIELD_CHARS, EvidenceBounds, EvidenceTooLargeError,
                                          Timeline, clip, load_timeline)
from app.services.evidence.fonts import cjk_font_path, load_cjk_font
from app.services.evidence.signing import is_sign_text, parse_signing
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
FORM_RULE = colors.HexColor("#24292f")
LABEL_BACKGROUND = colors.HexColor("#f6f8fa")
STATUS_NAMES = {"pending": "待揽收", "in_transit": "运输中", "out_for_delivery": "派送中", "delivered": "已签收",
                "problem": "问题件", "returning": "退回中", "returned": "已退回", "rejected": "已拒收",
                "timeout": "超时未签收", "failed": "无法跟踪"}
NOT_CONFIGURED = "未设置 / not configured"
NOT_GIVEN = "未填写 / not given"
LONG_FIELD_CHARS = 500  # documents and remarks: a row of about 12 lines
LISTED_DOCUMENTS = 20  # attached files named on the form; more are counted
SIGN_EVENT_CANDIDATES = 20  # the newest events searched for the carrier's sign event
SIGN_EVENT_CHARS = 300
QR_SIZE = 34 * mm
QR_QUIET_MODULES = 4  # the blank border a QR code needs around it, in modules
SEAL_SIZE = 36 * mm
SEAL_MAX_PIXELS = 2_000 * 2_000
QR_PAYLOAD = re.compile(r"^HZ-RECEIPT\s+(?P<receipt_number>[A-Za-z0-9-]{1,40})\s+SCREENSHOT-SHA256\s+"
                        r"(?P<screenshot_sha256>[0-9a-f]{64})\s+FACTS-SHA256\s+(?P<facts_sha256>[0-9a-f]{64})$")
CARRIER_CAPTURE_NAME = "carrier page"  # how screenshot.py names a capture of the carrier's own page


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
class QrClaim:
    """What a receipt's QR code states: its number, its timeline screenshot, the facts of its form."""

    receipt_number: str
    screenshot_sha256: str
    facts_sha256: str

    @property
    def payload(self) -> str:
        return (f"HZ-RECEIPT {self.receipt_number} SCREENSHOT-SHA256 {self.screenshot_sha256} "
                f"FACTS-SHA256 {self.facts_sha256}")

    @classmethod
    def parse(cls, payload: str | None) -> "QrClaim | None":
        match = QR_PAYLOAD.match((payload or "").strip())
        return cls(**match.groupdict()) if match else None


@dataclass(frozen=True)
class AttachedDocument:
    name: str
    pages: int | None


@dataclass(frozen=True)
class CarrierCapture:
    """A capture of the carrier's own tracking page (screenshot.capture_carrier_page)."""

    png: bytes
    sha256: str


@dataclass(frozen=True)
class ReceiptContext:
    """What the form states beyond the delivery row: serving body, server and seal (settings), the attached
    documents, the carrier's sign event and the carrier page capture."""

    issuer: str | None = None
    server: str | None = None
    seal_png: bytes | None = None
    documents: tuple[AttachedDocument, ...] = ()
    documents_total: int = 0
    sign_event: str | None = None
    carrier_capture: CarrierCapture | None = None


@dataclass(frozen=True)
class _Inputs:
    """What a receipt is built from, read in one transaction."""

    delivery: Delivery
    timeline: Timeline
    screenshot: bytes
    screenshot_sha256: str
    receipt_number: str
    context: ReceiptContext = field(default_factory=ReceiptContext)



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


class _Sealed(Flowable):
    """A form value with the seal drawn over it, as a stamp is: the seal takes no room of its own."""

    def __init__(self, value: Paragraph, seal_png: bytes):
        super().__init__()
        self.value, self.seal = value, ImageReader(io.BytesIO(seal_png))

    def wrap(self, available_width, available_height):
        self.width, self.height = self.value.wrap(available_width, available_height)
        return self.width, self.height

    def draw(self):
        self.value.drawOn(self.canv, 0, 0)
        self.canv.drawImage(self.seal, self.width * 0.35 - SEAL_SIZE / 2, self.height / 2 - SEAL_SIZE / 2,
                            SEAL_SIZE, SEAL_SIZE, mask="auto", preserveAspectRatio=True, anchor="c")


def _or(value: str | None, default: str = NOT_GIVEN) -> str:
    return value.strip() if value and value.strip() else default


def _documents_lines(delivery: Delivery, context: ReceiptContext) -> list[str]:
    """The documents served: those declared at registration with their counts, then the attached files."""
    lines = []
    if declared := parse_documents(delivery.documents):
        items = [f"{name} × {count}" if count else f"{name}（件数未注明 / count not stated）" for name, count in declared]
        total = "" if any(count is None for _, count in declared) else \
            f"（共 {sum(count for _, count in declared)} 件 / {sum(count for _, count in declared)} in total）"
        lines.append(f"登记 Declared: {'；'.join(items)}{total}")
    if context.documents_total:
        items = [f"{document.name}（{document.pages} 页 pages）" if document.pages else document.name
                 for document in context.documents]
        more = context.documents_total - len(context.documents)
        items += [f"另有 {more} 份 / {more} more"] if more > 0 else []
        lines.append(f"附件 Attached files: {'；'.join(items)}（共 {context.documents_total} 份 / "
                     f"{context.documents_total} files）")
    return lines or ["未登记 / none recorded"]


def _signing_lines(delivery: Delivery, context: ReceiptContext) -> tuple[str, str]:
    """Who signed and how, and the carrier's sign event verbatim."""
    if not context.sign_event:
        return "承运商未提供签收记录 / the carrier reported no sign event", "-"
    return parse_signing(context.sign_event, delivery.recipient_name).described, context.sign_event


def form_rows(delivery: Delivery, screenshot_sha256: str, receipt_number: str, generated_at: datetime,
              context: ReceiptContext) -> list[tuple[str, str]]:
    """The form's (label, value) rows as printed, values clipped; FACTS-SHA256 is the hash of these."""
    carrier = COMPANY_NAMES.get(delivery.carrier, delivery.carrier)
    signed_by, sign_event = _signing_lines(delivery, context)
    rows = [("送达机关 Serving body", _or(context.issuer, NOT_CONFIGURED)),
            ("案由 Case cause", _or(delivery.case_cause)),
            ("案号 Case number", _or(delivery.case_number)),
            ("内部编号 Reference", delivery.reference),
            ("受送达人 Recipient", delivery.recipient_name),
            ("联系电话 Phone", mask_phone(delivery.phone)),
            ("送达地址 Service address", mask_address(delivery.address)),
            ("送达文书名称及件数 Documents served", "\n".join(_documents_lines(delivery, context))),
            ("送达方式 Method", f"邮寄送达 / by post：{carrier} ({delivery.carrier})，运单号 Waybill No. "
                              f"{delivery.tracking_number}"),
            ("投递状态 Status", f"{STATUS_NAMES.get(delivery.status, delivery.status)} ({delivery.status})"),
            ("签收人及方式 Signed by", signed_by),
            ("承运商签收记录 Carrier's sign event", sign_event),
            ("签收时间 Signed at", _shanghai(delivery.delivered_at)),
            ("送达人 Server", _or(context.server, NOT_CONFIGURED)),
            ("备注 Remarks", _or(delivery.remarks, "无 / none")),
            ("回证编号 Receipt No.", receipt_number),
            ("时间线截图 SHA-256 Timeline screenshot", screenshot_sha256)]
    if context.carrier_capture:
        rows.append(("承运商页面截图 SHA-256 Carrier page", context.carrier_capture.sha256))
    rows.append(("生成时间 Generated at", _shanghai(generated_at)))
    long_rows = {"送达文书名称及件数 Documents served", "备注 Remarks", "承运商签收记录 Carrier's sign event"}
    return [(label, clip(str(value), LONG_FIELD_CHARS if label in long_rows else FIELD_CHARS)) for label, value in rows]


def facts_sha256(rows: list[tuple[str, str]]) -> str:
    """SHA-256 of the form's rows as compact UTF-8 JSON: [[label, value], ...]."""
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def _value(text: str, style: ParagraphStyle) -> Paragraph:
    return Paragraph("<br/>".join(escape(line) for line in text.split("\n")), style)


def _form(rows: list[tuple[str, str]], styles: dict, seal_png: bytes | None) -> Table:
    """The rows as a bordered form, label beside value, the seal (if any) over the serving body."""
    cells = [[Paragraph(escape(label), styles["label"]), _value(value, styles["body"])] for label, value in rows]
    if seal_png:
        cells[0][1] = _Sealed(cells[0][1], seal_png)
    table = Table(cells, colWidths=[46 * mm, None], splitInRow=1)
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.6, FORM_RULE), ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                               ("BACKGROUND", (0, 0), (0, -1), LABEL_BACKGROUND)]))
    return table


class _QrCode(Flowable):
    """`payload` as a QR code (reportlab's encoder, level M), each run of dark modules one rectangle of a
    single filled path: drawing the modules as separate shapes costs more than the rest of the receipt."""

    def __init__(self, payload: str, size: float):
        super().__init__()
        self.width = self.height = size
        code = qrencoder.QRCode(None, qrencoder.QRErrorCorrectLevel.M)
        code.addData(payload)
        code.make()
        self.modules = code.modules

    def draw(self):
        box = self.width / (len(self.modules) + 2 * QR_QUIET_MODULES)
        path = self.canv.beginPath()
        for row_number, row in enumerate(self.modules):
            y = self.height - (row_number + 1 + QR_QUIET_MODULES) * box
            column = 0
            while column < len(row):
                if not row[column]:
                    column += 1
                    continue
                run = next((end for end in range(column, len(row)) if not row[end]), len(row)) - column
                path.rect((column + QR_QUIET_MODULES) * box, y, run * box, box)
                column += run
        self.canv.drawPath(path, stroke=0, fill=1)


def _qr_block(claim: QrClaim, styles: dict) -> Table:
    """The QR code beside what it holds and how to check it."""
    text = [Paragraph("核验二维码 Verification QR", styles["label"]),
            Paragraph("二维码内容为回证编号、本页所嵌时间线截图的 SHA-256 与本表各栏内容的 SHA-256，"
                      "可用 celery_beat_manager.py receipts verify --qr 与存档核对 / it holds the receipt number, the SHA-256 of "
                      "the embedded timeline screenshot and the SHA-256 of this form's rows; check it against the "
                      "record with `celery_beat_manager.py receipts verify --qr`.", styles["small"]),
            Paragraph(escape(claim.payload), styles["small"])]
    table = Table([[_QrCode(claim.payload, QR_SIZE), text]], colWidths=[QR_SIZE + 4 * mm, None])
    table.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.6, FORM_RULE), ("VALIGN", (0, 0), (-1, -1), "MIDDLE")]))
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
    return (f"本系统根据承运商接口数据生成的时间线 / timeline rendered by this service from the carrier's data"
            f"（共 {timeline.total} 条{shown}，北京时间 Asia/Shanghai）")


def _capture(heading: str, png: bytes, sha256: str, document: SimpleDocTemplate, styles: dict,
             bounds: EvidenceBounds) -> KeepTogether:
    return KeepTogether([Paragraph(escape(heading), styles["heading"]),
                         _screenshot(png, document.width - FRAME_PADDING,
                                     document.height - FRAME_PADDING - SCREENSHOT_HEADING_ROOM,
                                     bounds.max_embedded_pixels),
                         Paragraph(f"SHA-256: {sha256}", styles["small"])])


def build_receipt_pdf(delivery: Delivery, timeline: Timeline, screenshot_bytes: bytes, screenshot_sha256: str,
                      receipt_number: str, generated_at: datetime, font_path: Path,
                      bounds: EvidenceBounds = DEFAULT_BOUNDS, context: ReceiptContext = ReceiptContext()) -> bytes:
    """The receipt as PDF bytes; the same inputs give the same bytes (reportlab's invariant mode).
    EvidenceTooLargeError when it would exceed `bounds` (pages, screenshot pixels)."""
    font = load_cjk_font(font_path)
    pdfmetrics.registerFont(font)
    styles = _styles(font.fontName)
    rows = form_rows(delivery, screenshot_sha256, receipt_number, generated_at, context)
    claim = QrClaim(receipt_number, screenshot_sha256, facts_sha256(rows))
    output = io.BytesIO()
    document = SimpleDocTemplate(output, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                                 bottomMargin=MARGIN, invariant=1, lang="zh-CN", title=f"送达回证 {receipt_number}",
                                 subject=f"{delivery.carrier} {delivery.tracking_number}", keywords=claim.payload,
                                 author="delivery evidence", creator="delivery evidence")
    story = [
        Paragraph("送达回证", styles["title"]),
        Paragraph("Delivery receipt", styles["subtitle"]),
        Spacer(1, 4 * mm),
        _form(rows, styles, context.seal_png),
        Spacer(1, 3 * mm),
        KeepTogether(_qr_block(claim, styles)),
        CondPageBreak(TIMELINE_MIN_ROOM),
        Paragraph(escape(_timeline_heading(timeline)), styles["heading"]),
        _timeline(timeline, styles),
        _capture("本系统时间线页面截图 / capture of this service's timeline page (not the carrier's page)",
                 screenshot_bytes, screenshot_sha256, document, styles, bounds),
    ]
    if context.carrier_capture:
        story.append(_capture("承运商官网页面截图 / capture of the carrier's own tracking page",
                              context.carrier_capture.png, context.carrier_capture.sha256, document, styles, bounds))
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


def _newest_screenshot(session: Session, delivery_id: int, condition) -> DeliveryFile | None:
    return session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                      DeliveryFile.kind == FileKind.SCREENSHOT, condition)
                           .order_by(DeliveryFile.id.desc()).limit(1)).first()


def _carrier_capture_condition():
    return DeliveryFile.original_name.startswith(CARRIER_CAPTURE_NAME)


def _attached_documents(session: Session, delivery_id: int) -> tuple[tuple[AttachedDocument, ...], int]:
    """The first LISTED_DOCUMENTS attached files (name, pages), and how many there are."""
    where = (DeliveryFile.delivery_id == delivery_id, DeliveryFile.kind == FileKind.DOCUMENT)
    total = session.scalar(select(func.count()).select_from(DeliveryFile).where(*where))
    rows = session.execute(select(DeliveryFile.original_name, DeliveryFile.page_count, DeliveryFile.sha256)
                           .where(*where).order_by(DeliveryFile.id).limit(LISTED_DOCUMENTS)).all()
    return tuple(AttachedDocument(clip(name or sha256[:12], FIELD_CHARS // 2), pages)
                 for name, pages, sha256 in rows), total


def _sign_event(session: Session, delivery_id: int) -> str | None:
    """The text of the carrier's newest sign event among its newest events, or None."""
    rows = session.execute(select(func.substr(TrackingEvent.description, 1, SIGN_EVENT_CHARS),
                                  TrackingEvent.carrier_status)
                           .where(TrackingEvent.delivery_id == delivery_id)
                           .order_by(TrackingEvent.occurred_at.desc(), TrackingEvent.id.desc())
                           .limit(SIGN_EVENT_CANDIDATES)).all()
    return next((text for text, status in rows if is_sign_text(text, status)), None)


def _seal_png(path: Path | None) -> bytes | None:
    """The PNG at RECEIPT_SEAL_PATH, checked; PermanentError when it is set and not a usable PNG."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
        with PilImage.open(io.BytesIO(data)) as image:
            size, kind = image.size, image.format
    except (OSError, PilImage.DecompressionBombError) as error:
        raise PermanentError(f"RECEIPT_SEAL_PATH={path} is not a readable PNG: {error}") from None
    if kind != "PNG" or size[0] * size[1] > SEAL_MAX_PIXELS:
        raise PermanentError(f"RECEIPT_SEAL_PATH={path} must be a PNG of at most {SEAL_MAX_PIXELS} pixels "
                             f"(it is {kind} {size[0]}x{size[1]})")
    return data


def _load_inputs(factory: sessionmaker, files_root: Path, delivery_id: int, generated_at: datetime,
                 bounds: EvidenceBounds, settings_context: ReceiptContext) -> _Inputs:
    with session_scope(factory) as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            raise PermanentError(f"no delivery {delivery_id}")
        screenshot = _newest_screenshot(session, delivery_id, or_(DeliveryFile.original_name.is_(None),
                                                                  not_(_carrier_capture_condition())))
        if screenshot is None:
            raise MissingScreenshotError(f"delivery {delivery_id} has no screenshot yet")
        carrier_page = _newest_screenshot(session, delivery_id, _carrier_capture_condition())
        documents, documents_total = _attached_documents(session, delivery_id)
        sign_event = _sign_event(session, delivery_id)
        timeline = load_timeline(session, delivery_id, bounds)
        number = receipt_number(delivery_id, generated_at, _receipt_count(session, delivery_id) + 1)
        session.expunge_all()
    capture = CarrierCapture(_screenshot_bytes(files_root, carrier_page), carrier_page.sha256) if carrier_page else None
    context = ReceiptContext(settings_context.issuer, settings_context.server, settings_context.seal_png, documents,
                             documents_total, sign_event, capture)
    return _Inputs(delivery, timeline, _screenshot_bytes(files_root, screenshot), screenshot.sha256, number, context)


def generate_receipt(factory: sessionmaker, files_root: Path, delivery_id: int, regenerate: bool = False,
                     now: datetime | None = None, bounds: EvidenceBounds = DEFAULT_BOUNDS,
                     settings: Settings | None = None) -> dict:
    """Issue the delivery's PDF receipt; an existing one is returned as it is unless `regenerate`.
    RECEIPT_ISSUER, RECEIPT_SERVER and RECEIPT_SEAL_PATH come from `settings` (default: the process's).
    EvidenceTooLargeError (permanent) when even the bounded receipt exceeds `bounds`."""
    # 1. Idempotent: a receipt once issued is the receipt.
    if not regenerate and (existing := _existing_receipt(factory, delivery_id)):
        return existing
    # 2. Build the PDF from the delivery, its shown events, its screenshots, documents and the settings.
    settings = settings or get_settings()
    generated_at = now or utcnow()
    configured = ReceiptContext(settings.receipt_issuer, settings.receipt_server, _seal_png(settings.receipt_seal_path))
    inputs = _load_inputs(factory, files_root, delivery_id, generated_at, bounds, configured)
    pdf = build_receipt_pdf(inputs.delivery, inputs.timeline, inputs.screenshot, inputs.screenshot_sha256,
                            inputs.receipt_number, generated_at, cjk_font_path(settings), bounds, inputs.context)
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


def qr_claim_of(path: Path) -> QrClaim | None:
    """The claim a receipt's QR code encodes, as its /Keywords carry the same string; None without one."""
    return QrClaim.parse((PdfReader(path).metadata or {}).get("/Keywords"))


def _claim_problems(row: DeliveryFile, claim: QrClaim | None, issued: QrClaim | None) -> list[str]:
    """How a QR claim differs from the record: the receipt row, and the claim of the file issued."""
    if claim is None:
        return ["it carries no QR claim"]
    problems = []
    if claim.receipt_number != row.receipt_number:
        problems.append(f"QR receipt number {claim.receipt_number}, recorded {row.receipt_number}")
    if claim.screenshot_sha256 != row.source_sha256:
        problems.append(f"QR screenshot sha256 {claim.screenshot_sha256}, recorded {row.source_sha256}")
    if issued is None or claim.facts_sha256 != issued.facts_sha256:
        problems.append(f"QR facts sha256 {claim.facts_sha256}, issued {issued.facts_sha256 if issued else 'none'}")
    return problems


def verify_receipt(session: Session, files_root: Path, file_path: Path) -> VerifyResult:
    """Whether the file at `file_path` is, byte for byte, a receipt this service issued, and its QR claim
    (receipt number, screenshot) still what the record says."""
    if not file_path.is_file():
        raise PermanentError(f"no such file: {file_path}")
    sha256 = sha256_of_file(file_path)
    if row := _receipt_where(session, DeliveryFile.sha256 == sha256):
        reference = _delivery_reference(session, row.delivery_id)
        issued = f"receipt {row.receipt_number} of delivery {row.delivery_id} (reference {reference or 'unknown'})"
        claim = qr_claim_of(file_path)
        if claim is not None and (problems := _claim_problems(row, claim, claim)):
            return VerifyResult(False, sha256, f"{file_path.name} is {issued} byte for byte, but its QR code "
                                               f"disagrees with the record: {'; '.join(problems)}",
                                row.receipt_number, row.delivery_id)
        return VerifyResult(True, sha256, f"{issued}, sha256 {sha256}", row.receipt_number, row.delivery_id)
    # A file still named as issued (by its SHA-256 in the files root, or by its receipt number).
    named = _receipt_where(session, (DeliveryFile.sha256 == file_path.stem.lower())
                           | (DeliveryFile.receipt_number == file_path.stem))
    if named:
        return VerifyResult(False, sha256, f"{file_path.name} is receipt {named.receipt_number} of delivery "
                                           f"{named.delivery_id} modified since it was issued (sha256 {sha256}, "
                                           f"recorded {named.sha256}; the issued file is {files_root / named.path})",
                            named.receipt_number, named.delivery_id)
    return VerifyResult(False, sha256, f"sha256 {sha256} matches no receipt on record")


def verify_qr(session: Session, files_root: Path, payload: str) -> VerifyResult:
    """Whether a receipt's QR content (as a phone reads it) is what the record and the issued file state."""
    claim = QrClaim.parse(payload)
    if claim is None:
        return VerifyResult(False, "", "not a receipt QR code: expected 'HZ-RECEIPT <number> SCREENSHOT-SHA256 "
                                       "<64 hex> FACTS-SHA256 <64 hex>'")
    row = _receipt_where(session, DeliveryFile.receipt_number == claim.receipt_number)
    if row is None:
        return VerifyResult(False, "", f"no receipt {claim.receipt_number} on record", claim.receipt_number)
    issued = files_root / row.path
    if not issued.is_file() or sha256_of_file(issued) != row.sha256:
        return VerifyResult(False, row.sha256, f"the issued file of receipt {row.receipt_number} ({issued}) is "
                                               "missing or altered: its facts cannot be checked",
                            row.receipt_number, row.delivery_id)
    if problems := _claim_problems(row, claim, qr_claim_of(issued)):
        return VerifyResult(False, row.sha256, f"QR code of receipt {row.receipt_number} disagrees with the record: "
                                               f"{'; '.join(problems)}", row.receipt_number, row.delivery_id)
    return VerifyResult(True, row.sha256, f"QR code matches receipt {row.receipt_number} of delivery "
                                          f"{row.delivery_id} (issued file sha256 {row.sha256})",
                        row.receipt_number, row.delivery_id)


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
