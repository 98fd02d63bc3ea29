"""PDF receipts (送达回证) built from a real PNG, stored by content and verified, on SQLite and PostgreSQL."""

import io
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from pypdf import PdfReader
from sqlalchemy import select

from app.models import Delivery, DeliveryFile, TrackingEvent
from app.services.errors import MissingDependencyError, PermanentError
from app.services.evidence.bounds import EvidenceBounds, timeline_of
from app.services.evidence.fonts import cjk_font_path, load_cjk_font
from app.services.evidence.receipt import (
    MissingScreenshotError,
    build_receipt_pdf,
    generate_receipt,
    verify_receipt,
)
from app.services.filestore import sha256_of_file, store_bytes

PHONE = "13912345678"
MASKED_PHONE = "139****5678"
NOW = datetime(2026, 11, 2, 1, 30, tzinfo=timezone.utc)  # 09:30 in Shanghai
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def screenshot_png(width: int = 800, height: int = 600) -> bytes:
    """A real PNG with something drawn on it, as the screenshot step would store."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 40, width // 2, height // 3), fill="#0969da")
    draw.line((0, height - 1, width - 1, 0), fill="#cf222e", width=6)
    output = io.BytesIO()
    image.save(output, "PNG")
    return output.getvalue()


def new_delivery(tracking_number: str = "EM123456789CN") -> Delivery:
    return Delivery(reference="（2026）京0105民初123号", recipient_name="张三", phone=PHONE,
                    address="北京市朝阳区建国路1号院2号楼", carrier="ems", tracking_number=tracking_number,
                    status="delivered", delivered_at=datetime(2026, 11, 1, 6, tzinfo=timezone.utc))


def new_events() -> list[TrackingEvent]:
    return [TrackingEvent(occurred_at=datetime(2026, 11, 1, hour, tzinfo=timezone.utc), location=where,
                          description=text, fingerprint=f"f{hour}")
            for hour, (where, text) in enumerate([("北京", "【北京】已揽收"), ("上海", "快件已到达【上海转运中心】"),
                                                 ("上海", "已签收，签收人：本人 <前台>")])]


def add_delivered(factory, files_root: Path, screenshot: bytes | None = None, with_screenshot: bool = True) -> int:
    """A delivered delivery with three events and, unless told otherwise, a stored screenshot."""
    with factory() as session:
        delivery = new_delivery(f"EM{uuid.uuid4().hex[:11].upper()}")
        session.add(delivery)
        session.flush()
        for event in new_events():
            event.delivery_id = delivery.id
            session.add(event)
        if with_screenshot:
            stored = store_bytes(files_root, screenshot or screenshot_png(), ".png")
            session.add(DeliveryFile(delivery_id=delivery.id, kind="screenshot", path=stored.path,
                                     sha256=stored.sha256, size=stored.size, content_type="image/png"))
        session.commit()
        return delivery.id


def receipt_rows(factory, delivery_id: int) -> list[DeliveryFile]:
    with factory() as session:
        return session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                          DeliveryFile.kind == "receipt")
                               .order_by(DeliveryFile.id)).all()


def stored_pdfs(files_root: Path) -> list[Path]:
    return sorted(files_root.rglob("*.pdf"))


@pytest.mark.needs_cjk_font
def test_receipt_pdf_has_the_chinese_title_masked_phone_timeline_and_screenshot(factory, files_root):
    delivery_id = add_delivered(factory, files_root)
    summary = generate_receipt(factory, files_root, delivery_id, now=NOW)

    path = files_root / summary["path"]
    reader = PdfReader(path)
    text = "".join(page.extract_text() for page in reader.pages)
    assert "送达回证" in text and "Delivery receipt" in text
    assert summary["receipt_number"] in text
    with factory() as session:
        delivery = session.get(Delivery, delivery_id)
        screenshot = session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                                DeliveryFile.kind == "screenshot")).one()
        assert delivery.tracking_number in text
        assert delivery.evidence_status == "complete"
    assert MASKED_PHONE in text and PHONE not in text, "the phone appears masked only"
    assert "已签收，签收人：本人 <前台>" in text and "2026-11-01 10:00:00" in text, "events in Asia/Shanghai time"
    assert screenshot.sha256 in text
    [image] = [image for page in reader.pages for image in page.images]
    assert image.image.size == (800, 600), "the screenshot is embedded at its full resolution"

    [row] = receipt_rows(factory, delivery_id)
    assert summary == {"delivery_id": delivery_id, "receipt_number": f"HZ-20261102-{delivery_id:08d}-1",
                       "path": row.path, "sha256": row.sha256, "size": path.stat().st_size,
                       "pages": len(reader.pages), "existing": False}
    assert row.sha256 == sha256_of_file(path)
    assert (row.content_type, row.page_count, row.source_sha256, row.created_at) == (
        "application/pdf", len(reader.pages), screenshot.sha256, NOW)


@pytest.mark.needs_cjk_font
def test_generating_twice_returns_the_same_receipt_and_stores_it_once(factory, files_root):
    delivery_id = add_delivered(factory, files_root)
    first = generate_receipt(factory, files_root, delivery_id, now=NOW)
    second = generate_receipt(factory, files_root, delivery_id, now=NOW + timedelta(days=3))
    assert second == {**first, "existing": True}
    assert len(receipt_rows(factory, delivery_id)) == 1
    assert stored_pdfs(files_root) == [files_root / first["path"]]


@pytest.mark.needs_cjk_font
def test_regenerate_issues_the_next_receipt_number(factory, files_root):
    delivery_id = add_delivered(factory, files_root)
    first = generate_receipt(factory, files_root, delivery_id, now=NOW)
    second = generate_receipt(factory, files_root, delivery_id, regenerate=True, now=NOW + timedelta(days=1))
    assert first["receipt_number"] == f"HZ-20261102-{delivery_id:08d}-1"
    assert second["receipt_number"] == f"HZ-20261103-{delivery_id:08d}-2"
    assert second["sha256"] != first["sha256"]
    assert [row.receipt_number for row in receipt_rows(factory, delivery_id)] == [first["receipt_number"],
                                                                               second["receipt_number"]]
    assert len(stored_pdfs(files_root)) == 2
    assert generate_receipt(factory, files_root, delivery_id)["receipt_number"] == second["receipt_number"]


@pytest.mark.needs_cjk_font
def test_verify_accepts_the_issued_file_and_detects_one_flipped_byte(factory, files_root, tmp_path):
    delivery_id = add_delivered(factory, files_root)
    summary = generate_receipt(factory, files_root, delivery_id, now=NOW)
    issued = files_root / summary["path"]
    downloaded = tmp_path / f"{summary['receipt_number']}.pdf"
    shutil.copyfile(issued, downloaded)
    altered = tmp_path / issued.name
    data = bytearray(issued.read_bytes())
    data[len(data) // 2] ^= 0x01
    altered.write_bytes(bytes(data))
    stranger = tmp_path / "other.pdf"
    stranger.write_bytes(bytes(data))

    with factory() as session:
        for good in (issued, downloaded):
            result = verify_receipt(session, files_root, good)
            assert result.ok and result.receipt_number == summary["receipt_number"]
            assert result.message == (f"receipt {summary['receipt_number']} of delivery {delivery_id} "
                                      f"(reference （2026）京0105民初123号), sha256 {summary['sha256']}")
        modified = verify_receipt(session, files_root, altered)
        unknown = verify_receipt(session, files_root, stranger)
        with pytest.raises(PermanentError, match="no such file"):
            verify_receipt(session, files_root, tmp_path / "missing.pdf")
    assert not modified.ok and "modified since it was issued" in modified.message
    assert modified.receipt_number == summary["receipt_number"] and str(issued) in modified.message
    assert not unknown.ok and unknown.receipt_number is None and "matches no receipt" in unknown.message


def test_a_receipt_needs_a_screenshot(factory, files_root):
    delivery_id = add_delivered(factory, files_root, with_screenshot=False)
    with pytest.raises(MissingScreenshotError, match=f"^delivery {delivery_id} has no screenshot yet$") as raised:
        generate_receipt(factory, files_root, delivery_id, now=NOW)
    assert isinstance(raised.value, PermanentError), "not retried"
    assert receipt_rows(factory, delivery_id) == [] and stored_pdfs(files_root) == []


def test_an_altered_screenshot_file_is_not_embedded(factory, files_root):
    delivery_id = add_delivered(factory, files_root)
    [png] = files_root.rglob("*.png")
    png.write_bytes(screenshot_png(640, 480))
    with pytest.raises(MissingScreenshotError, match="no longer matches its recorded SHA-256"):
        generate_receipt(factory, files_root, delivery_id, now=NOW)


def test_the_same_inputs_give_the_same_pdf_bytes(font_path):
    png = screenshot_png()

    def build(moment):
        return build_receipt_pdf(new_delivery(), timeline_of(new_events()), png, "ab" * 32, "HZ-20261102-00000001-1",
                                 moment, font_path)

    first = build(NOW)
    assert build(NOW) == first
    assert build(NOW + timedelta(seconds=1)) != first
    assert PdfReader(io.BytesIO(first)).metadata["/CreationDate"] == "D:20261102093000+08'00'"


def test_long_screenshots_and_events_still_lay_out(font_path):
    events = new_events() * 30
    events[0].description = "快件在【北京转运中心】完成分拣，准备发往下一站" * 120  # longer than a page
    unbounded_texts = EvidenceBounds(max_event_chars=10_000, max_total_chars=1_000_000, max_receipt_pages=1_000)
    pdf = build_receipt_pdf(new_delivery(), timeline_of(events, unbounded_texts), screenshot_png(400, 4000), "ab" * 32,
                            "HZ-20261102-00000001-1", NOW, font_path, unbounded_texts)
    reader = PdfReader(io.BytesIO(pdf))
    pages_with_images = [number for number, page in enumerate(reader.pages) if page.images]
    assert len(pages_with_images) == 1, "a long screenshot is shrunk onto one page"
    assert reader.pages[pages_with_images[0]].images[0].image.size == (400, 4000)
    assert f"共 {len(reader.pages)} 页" in reader.pages[-1].extract_text(), "every page numbered n of N"


@pytest.mark.needs_cjk_font
def test_cjk_font_comes_from_fontconfig_and_covers_chinese(settings):
    assert ord("送") in load_cjk_font(cjk_font_path(settings)).face.charToGlyph


def test_without_a_cjk_font_the_error_says_what_to_install(settings, tmp_path, monkeypatch):
    empty = tmp_path / "fonts.conf"
    empty.write_text('<?xml version="1.0"?><fontconfig><cachedir>' + str(tmp_path / "cache") +
                     "</cachedir></fontconfig>")
    monkeypatch.setenv("FONTCONFIG_FILE", str(empty))
    with pytest.raises(MissingDependencyError) as missing:
        cjk_font_path(settings)
    assert str(missing.value) == ("no CJK font: install Debian package fonts-wqy-microhei (or fonts-wqy-zenhei), "
                                  "or set CJK_FONT_PATH")
    with pytest.raises(MissingDependencyError, match="is not a file"):
        cjk_font_path(settings.model_copy(update={"cjk_font_path": tmp_path / "missing.ttc"}))


def test_a_font_without_chinese_is_refused(settings):
    if not DEJAVU.is_file():
        pytest.skip("DejaVu Sans (Debian fonts-dejavu-core) is not installed")
    with pytest.raises(MissingDependencyError, match="has no Chinese characters"):
        cjk_font_path(settings.model_copy(update={"cjk_font_path": DEJAVU}))
