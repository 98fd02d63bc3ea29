"""The receipt as a 送达回证 form: every field from stored data, the QR claim it carries, and its checks."""

import io
import re
from datetime import datetime, timedelta, timezone

import pytest
import zxingcpp
from PIL import Image, ImageDraw
from pypdf import PdfReader
from reportlab.lib.pagesizes import A4
from reportlab.pdfbase.pdfmetrics import stringWidth
from sqlalchemy import update

from app.models import Delivery, DeliveryFile, TrackingEvent
from app.services.errors import PermanentError
from app.services.evidence.bounds import timeline_of
from app.services.evidence.fonts import load_cjk_font
from app.services.evidence.receipt import (QrClaim, ReceiptContext, build_receipt_pdf, facts_sha256, form_rows,
                                           generate_receipt, qr_claim_of, verify_qr, verify_receipt)
from app.services.filestore import store_bytes
from tests.services.test_receipt import NOW, new_delivery, new_events, screenshot_png

SIGNED_BY_PROXY = "已签收，签收人：李四（他人代收），如有疑问请联系派件员"
RASTER_SCALE = 4  # pixels per PDF point when the QR's rectangles are drawn for the decoder


def seal_png() -> bytes:
    image = Image.new("RGBA", (240, 240), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((8, 8, 232, 232), outline=(200, 0, 0, 220), width=10)
    output = io.BytesIO()
    image.save(output, "PNG")
    return output.getvalue()


def add_served(factory, files_root, carrier_page: bool = False) -> int:
    """A delivered delivery with case fields, two attached documents, a 代收 sign event and a screenshot."""
    with factory() as session:
        delivery = new_delivery()
        delivery.case_cause, delivery.case_number = "民间借贷纠纷", "（2026）京0105民初456号"
        delivery.documents, delivery.remarks = "起诉状副本×1;传票×2", "请于收到之日起十五日内答辩"
        session.add(delivery)
        session.flush()
        for event in new_events()[:2]:
            event.delivery_id = delivery.id
            session.add(event)
        session.add(TrackingEvent(delivery_id=delivery.id, occurred_at=datetime(2026, 11, 1, 6, tzinfo=timezone.utc),
                                  location="北京", description=SIGNED_BY_PROXY, carrier_status="签收",
                                  fingerprint="signed"))
        shots = [(screenshot_png(640, 480), "carrier page")] if carrier_page else []
        for png, name in [*shots, (screenshot_png(), "tracking timeline")]:
            stored = store_bytes(files_root, png, ".png")
            session.add(DeliveryFile(delivery_id=delivery.id, kind="screenshot", path=stored.path, sha256=stored.sha256,
                                     size=stored.size, content_type="image/png", original_name=name))
        for name, pages in (("起诉状副本.pdf", 3), ("传票.pdf", 1)):
            stored = store_bytes(files_root, f"%PDF-1.4 {name}".encode(), ".pdf")
            session.add(DeliveryFile(delivery_id=delivery.id, kind="document", path=stored.path, sha256=stored.sha256,
                                     size=stored.size, content_type="application/pdf", original_name=name,
                                     page_count=pages))
        session.commit()
        return delivery.id


def pdf_text(path_or_bytes) -> str:
    reader = PdfReader(io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes)
    return re.sub(r"\s+", "", "".join(page.extract_text() for page in reader.pages))


def decoded_qr(pdf: bytes) -> list[str]:
    """The QR codes on page 1, decoded by zxing-cpp from the page's own filled rectangles drawn as pixels."""
    page = PdfReader(io.BytesIO(pdf)).pages[0]
    modules = []

    def collect(operator, operands, cm, tm):
        if operator == b"re":
            x, y, width, height = (float(value) for value in operands)
            modules.append((cm[0] * x + cm[4], cm[3] * y + cm[5], cm[0] * width, cm[3] * height))

    page.extract_text(visitor_operand_before=collect)
    page_width, page_height = (float(value) for value in page.mediabox[2:])
    image = Image.new("L", (int(page_width * RASTER_SCALE), int(page_height * RASTER_SCALE)), 255)
    draw = ImageDraw.Draw(image)
    for x, y, width, height in modules:
        if 0 < height < 4:  # QR modules; table backgrounds are taller, borders are lines
            draw.rectangle((x * RASTER_SCALE, (page_height - y - height) * RASTER_SCALE,
                            (x + width) * RASTER_SCALE - 1, (page_height - y) * RASTER_SCALE - 1), fill=0)
    return [barcode.text for barcode in zxingcpp.read_barcodes(image)]


@pytest.mark.needs_cjk_font
def test_the_form_holds_every_field_of_a_served_delivery(factory, files_root, settings):
    delivery_id = add_served(factory, files_root, carrier_page=True)
    configured = settings.model_copy(update={"receipt_issuer": "北京市朝阳区人民法院", "receipt_server": "王五"})
    summary = generate_receipt(factory, files_root, delivery_id, now=NOW, settings=configured)
    text = pdf_text(files_root / summary["path"])
    for field in ("送达机关", "北京市朝阳区人民法院", "案由", "民间借贷纠纷", "案号", "（2026）京0105民初456号",
                  "送达文书名称及件数", "起诉状副本×1；传票×2（共3件/3intotal）",
                  "起诉状副本.pdf（3页pages）；传票.pdf（1页pages）（共2份/2files）",
                  "送达地址", "北京市朝阳区…", "送达方式", "邮寄送达/bypost：EMS(ems)，运单号WaybillNo.EM123456789CN",
                  "签收人及方式", "李四（他人代收/collectedbyanotherperson）", SIGNED_BY_PROXY.replace(" ", ""),
                  "签收时间", "2026-11-0114:00:00", "送达人", "王五", "备注", "请于收到之日起十五日内答辩",
                  summary["receipt_number"], "本系统根据承运商接口数据生成的时间线/timelinerenderedbythisservicefrom"
                  "thecarrier'sdata", "承运商官网页面截图/captureofthecarrier'sowntrackingpage",
                  "本系统时间线页面截图/captureofthisservice'stimelinepage(notthecarrier'spage)"):
        assert field in text, field
    assert "未设置" not in text


def test_unset_issuer_and_server_say_so(font_path):
    pdf = build_receipt_pdf(new_delivery(), timeline_of(new_events()), screenshot_png(), "ab" * 32,
                            "HZ-20261102-00000001-1", NOW, font_path)
    text = pdf_text(pdf)
    assert text.count("未设置/notconfigured") == 2, "送达机关 and 送达人 unset, never invented"
    assert "案由Casecause未填写/notgiven" in text and "未登记/nonerecorded" in text


def test_the_qr_code_decodes_to_the_receipt_number_screenshot_and_facts(font_path):
    delivery = new_delivery()
    pdf = build_receipt_pdf(delivery, timeline_of(new_events()), screenshot_png(), "ab" * 32, "HZ-20261102-00000001-1",
                            NOW, font_path)
    facts = facts_sha256(form_rows(delivery, "ab" * 32, "HZ-20261102-00000001-1", NOW, ReceiptContext()))
    expected = f"HZ-RECEIPT HZ-20261102-00000001-1 SCREENSHOT-SHA256 {'ab' * 32} FACTS-SHA256 {facts}"
    assert decoded_qr(pdf) == [expected]
    assert qr_claim_of(io.BytesIO(pdf)) == QrClaim.parse(expected), "the /Keywords carry what the QR encodes"
    delivery.remarks = "改过的备注"
    changed = build_receipt_pdf(delivery, timeline_of(new_events()), screenshot_png(), "ab" * 32,
                                "HZ-20261102-00000001-1", NOW, font_path)
    assert decoded_qr(changed) != [expected], "any printed fact changes the QR"


@pytest.mark.needs_cjk_font
def test_the_same_inputs_with_documents_seal_and_sign_event_give_the_same_bytes(factory, files_root, settings,
                                                                               tmp_path):
    delivery_id = add_served(factory, files_root)
    seal = tmp_path / "seal.png"
    seal.write_bytes(seal_png())
    sealed = settings.model_copy(update={"receipt_seal_path": seal})
    first = generate_receipt(factory, files_root, delivery_id, now=NOW, settings=sealed)
    second = generate_receipt(factory, files_root, delivery_id, regenerate=True, now=NOW, settings=sealed)
    assert first["receipt_number"] != second["receipt_number"]
    with factory() as session:  # same number again: delete the second row, issue it once more
        session.query(DeliveryFile).filter_by(receipt_number=second["receipt_number"]).delete()
        session.commit()
    third = generate_receipt(factory, files_root, delivery_id, regenerate=True, now=NOW, settings=sealed)
    assert third["sha256"] == second["sha256"], "deterministic bytes with every form input"
    images = PdfReader(files_root / first["path"]).pages[0].images
    assert any(image.image.size == (240, 240) for image in images), "the seal is drawn on the first page"


def test_a_seal_that_is_not_a_png_is_refused(factory, files_root, settings, tmp_path):
    delivery_id = add_served(factory, files_root)
    seal = tmp_path / "seal.jpg"
    Image.new("RGB", (50, 50), "red").save(seal, "JPEG")
    with pytest.raises(PermanentError, match="must be a PNG"):
        generate_receipt(factory, files_root, delivery_id, now=NOW,
                         settings=settings.model_copy(update={"receipt_seal_path": seal}))


def text_outside_the_page(pdf: bytes, font_name: str) -> list[tuple[int, str, float, float]]:
    """Every text run of `pdf` whose start or end lies outside its A4 page box: (page, text, x, y)."""
    outside = []
    for number, page in enumerate(PdfReader(io.BytesIO(pdf)).pages):
        assert [round(float(value)) for value in page.mediabox] == [0, 0, *map(round, A4)]

        def check(text, cm, tm, font, size):
            for line in filter(str.strip, text.split("\n")):
                x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
                y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
                width = stringWidth(line, font_name, size) * tm[0] * cm[0]
                if x < 0 or y < 0 or y + size > A4[1] or x + width > A4[0]:
                    outside.append((number, line, x, y))

        page.extract_text(visitor_text=check)
    return outside


def test_a_forty_event_timeline_and_long_fields_stay_inside_a4(font_path):
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    events = [TrackingEvent(occurred_at=start + timedelta(hours=i), location="上海市浦东新区转运中心" * 2,
                            description=f"快件已到达【上海转运中心】，正在分拣，准备发往【北京转运中心】第 {i} 站",
                            fingerprint=str(i)) for i in range(40)]
    delivery = new_delivery()
    delivery.documents, delivery.remarks = "起诉状副本×1;" * 30, "备注" * 240
    pdf = build_receipt_pdf(delivery, timeline_of(events), screenshot_png(), "ab" * 32, "HZ-20261102-00000001-1",
                            NOW, font_path)
    assert len(PdfReader(io.BytesIO(pdf)).pages) > 1
    assert "第39站" in pdf_text(pdf)
    assert text_outside_the_page(pdf, load_cjk_font(font_path).fontName) == []


@pytest.mark.needs_cjk_font
def test_verify_checks_the_qr_claim_against_the_record(factory, files_root):
    delivery_id = add_served(factory, files_root)
    summary = generate_receipt(factory, files_root, delivery_id, now=NOW)
    issued = files_root / summary["path"]
    claim = qr_claim_of(issued)
    assert decoded_qr(issued.read_bytes()) == [claim.payload]
    with factory() as session:
        assert verify_receipt(session, files_root, issued).ok
        assert verify_qr(session, files_root, claim.payload).ok
        assert verify_qr(session, files_root, "  " + claim.payload.replace(" ", "\n") + "\n").ok, "as a phone copies it"
        forged = QrClaim(claim.receipt_number, claim.screenshot_sha256, "0" * 64).payload
        other_shot = QrClaim(claim.receipt_number, "1" * 64, claim.facts_sha256).payload
        unknown = QrClaim("HZ-20261102-99999999-1", claim.screenshot_sha256, claim.facts_sha256).payload
        results = {name: verify_qr(session, files_root, payload) for name, payload in
                   (("forged", forged), ("other_shot", other_shot), ("unknown", unknown), ("garbage", "hello"))}
    assert not any(result.ok for result in results.values())
    assert "QR facts sha256 0000" in results["forged"].message
    assert f"QR screenshot sha256 {'1' * 64}, recorded {claim.screenshot_sha256}" in results["other_shot"].message
    assert results["unknown"].message == "no receipt HZ-20261102-99999999-1 on record"
    assert results["garbage"].message.startswith("not a receipt QR code")

    with factory() as session:  # the record altered: the issued file's QR no longer agrees with it
        session.execute(update(DeliveryFile).where(DeliveryFile.receipt_number == claim.receipt_number)
                        .values(source_sha256="2" * 64))
        session.commit()
        tampered_record = verify_receipt(session, files_root, issued)
        tampered_via_qr = verify_qr(session, files_root, claim.payload)
    assert not tampered_record.ok
    assert "byte for byte, but its QR code disagrees with the record" in tampered_record.message
    assert not tampered_via_qr.ok and f"recorded {'2' * 64}" in tampered_via_qr.message


@pytest.mark.needs_cjk_font
def test_verify_qr_refuses_when_the_issued_file_was_altered(factory, files_root):
    delivery_id = add_served(factory, files_root)
    summary = generate_receipt(factory, files_root, delivery_id, now=NOW)
    issued = files_root / summary["path"]
    payload = qr_claim_of(issued).payload
    data = bytearray(issued.read_bytes())
    data[-50] ^= 0x01
    issued.write_bytes(bytes(data))
    with factory() as session:
        result = verify_qr(session, files_root, payload)
    assert not result.ok and "missing or altered: its facts cannot be checked" in result.message
