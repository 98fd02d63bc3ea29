"""Documents on SQLite and PostgreSQL: real PDFs and images in, everything else out, unreferenced files cleaned."""

import hashlib
import io
import os
import threading
import time
import zipfile
from datetime import timedelta

import pytest
from PIL import Image
from pypdf import PdfReader, PdfWriter
from sqlalchemy import func, select

from tests.support.files import pdf_bytes
from app.models import Delivery, DeliveryFile
from app.models.base import utcnow
from app.services.documents import (
    MAX_DOCUMENT_BYTES,
    RejectedDocument,
    detect_type,
    inspect_document,
    register_document,
    remove_unreferenced_files,
)
from app.services.errors import PermanentError
from app.services.files import OutsideRootError
from app.services.filestore import store_bytes
from app.services.retention import remove_expired_deliveries

HOUR = 3600
SWAP_TRIES = 40
SECRET = b"nobody:*:19876:0:99999:7:::\nS3CR3T-b7e1 \x13\x37\xbe\xef"


def add_delivery(factory, number="EM0001", status="pending", age_days=0):
    moment = utcnow() - timedelta(days=age_days)
    with factory() as session:
        delivery = Delivery(reference=f"CASE-{number}", recipient_name="张三", phone="13800138000", address="北京市",
                            carrier="ems", tracking_number=number, status=status, updated_at=moment)
        session.add(delivery)
        session.commit()
        return delivery.id


def image_bytes(pillow_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((320, 240), 64).convert("RGB").save(buffer, pillow_format)
    return buffer.getvalue()


def encrypted_pdf_bytes() -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes())))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def docx_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
    return buffer.getvalue()


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def stored_files(files_root):
    return sorted(p.relative_to(files_root).as_posix() for p in files_root.rglob("*") if not p.is_dir()) \
        if files_root.exists() else []


def file_rows(factory):
    with factory() as session:
        return session.scalars(select(DeliveryFile).order_by(DeliveryFile.id)).all()


def age(path, seconds):
    moment = time.time() - seconds
    os.utime(path, (moment, moment))


def test_pdf_registers_with_page_count_and_an_identical_copy(factory, files_root, tmp_path):
    delivery_id = add_delivery(factory)
    data = pdf_bytes(pages=3)
    source = write(tmp_path, "contract.pdf", data)
    result = register_document(factory, files_root, delivery_id, source)
    sha256 = hashlib.sha256(data).hexdigest()
    assert result == {"id": result["id"], "delivery_id": delivery_id,
                      "path": f"{sha256[:2]}/{sha256[2:4]}/{sha256}.pdf", "sha256": sha256, "size": len(data),
                      "content_type": "application/pdf", "page_count": 3, "original_name": "contract.pdf",
                      "duplicate": False}
    assert (files_root / result["path"]).read_bytes() == data, "the stored copy is byte-identical"
    assert (files_root / result["path"]).stat().st_mode & 0o077 == 0, "readable by its owner only"
    [row] = file_rows(factory)
    assert (row.kind, row.path, row.page_count) == ("document", result["path"], 3)


def test_png_registers_as_an_image_under_its_original_name(factory, files_root, tmp_path):
    delivery_id = add_delivery(factory)
    source = write(tmp_path, "upload-7f3a.tmp", image_bytes("PNG"))
    result = register_document(factory, files_root, delivery_id, source, original_name="signature.png")
    assert result["content_type"] == "image/png" and result["page_count"] is None
    assert result["original_name"] == "signature.png"
    assert result["path"].endswith(".png")


@pytest.mark.parametrize(("pillow_format", "content_type", "suffix"), [
    ("PNG", "image/png", ".png"), ("JPEG", "image/jpeg", ".jpg"), ("GIF", "image/gif", ".gif"),
    ("WEBP", "image/webp", ".webp"), ("TIFF", "image/tiff", ".tif"),
])
def test_detect_type_reads_the_content_not_the_name(tmp_path, pillow_format, content_type, suffix):
    detected = detect_type(write(tmp_path, "scan.pdf", image_bytes(pillow_format)))
    assert (detected.content_type, detected.suffix) == (content_type, suffix)


@pytest.mark.parametrize(("name", "make", "reason"), [
    ("report.docx", docx_bytes, "report.docx is not a PDF or image (a ZIP/Office file?)"),
    ("notes.pdf", lambda: "会议纪要 meeting notes\n".encode(),
     "notes.pdf is not a PDF or image (plain text?)"),
    ("photo.pdf", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00",
     "photo.pdf is not a PDF or image (a HEIC photo? export it as JPEG)"),
    ("empty.pdf", lambda: b"", "empty.pdf is empty"),
    ("cut.pdf", lambda: pdf_bytes()[:300], "cut.pdf is not a readable PDF (truncated or damaged? "),
    ("locked.pdf", encrypted_pdf_bytes, "locked.pdf is a password-protected PDF"),
    ("cut.jpg", lambda: image_bytes("JPEG")[:4000], "cut.jpg is not a readable JPEG image (truncated or damaged? OSError)"),
])
def test_what_is_not_a_readable_pdf_or_image_is_rejected_and_nothing_stored(factory, files_root, tmp_path,
                                                                             name, make, reason):
    delivery_id = add_delivery(factory)
    with pytest.raises(RejectedDocument) as rejected:
        register_document(factory, files_root, delivery_id, write(tmp_path, name, make()))
    assert str(rejected.value).startswith(reason)
    assert file_rows(factory) == [] and stored_files(files_root) == []


def test_a_file_over_the_size_limit_is_rejected_unread(tmp_path):
    path = write(tmp_path, "huge.pdf", b"%PDF-1.7\n")
    with path.open("r+b") as handle:
        handle.truncate(MAX_DOCUMENT_BYTES + 1)  # sparse: no disk used
    with pytest.raises(RejectedDocument, match=r"huge.pdf is 50.0 MiB, more than the 50 MiB limit"):
        detect_type(path)


def test_unknown_delivery_and_missing_file_are_permanent_errors(factory, files_root, tmp_path):
    with pytest.raises(PermanentError, match="^no delivery 999$"):
        register_document(factory, files_root, 999, write(tmp_path, "a.pdf", pdf_bytes()))
    with pytest.raises(PermanentError, match="^no such file: "):
        register_document(factory, files_root, add_delivery(factory), tmp_path / "gone.pdf")
    assert stored_files(files_root) == []


def test_registering_the_same_file_twice_keeps_one_row(factory, files_root, tmp_path):
    delivery_id = add_delivery(factory)
    other_id = add_delivery(factory, "EM0002")
    source = write(tmp_path, "contract.pdf", pdf_bytes())
    first = register_document(factory, files_root, delivery_id, source)
    again = register_document(factory, files_root, delivery_id, source, original_name="copy.pdf")
    assert again == {**first, "duplicate": True}
    other = register_document(factory, files_root, other_id, source)
    assert not other["duplicate"] and other["path"] == first["path"], "another delivery: its own row, one file"
    assert len(file_rows(factory)) == 2 and len(stored_files(files_root)) == 1


def test_registering_refreshes_an_old_stored_copy_so_cleanup_spares_it(factory, files_root, tmp_path):
    data = pdf_bytes()
    orphan = files_root / store_bytes(files_root, data, ".pdf").path
    age(orphan, 2 * HOUR)
    register_document(factory, files_root, add_delivery(factory), write(tmp_path, "a.pdf", data))
    assert time.time() - orphan.stat().st_mtime < 60


def test_cleanup_deletes_old_orphans_only(factory, files_root, tmp_path):
    delivery_id = add_delivery(factory)
    registered = register_document(factory, files_root, delivery_id, write(tmp_path, "a.pdf", pdf_bytes()))
    kept = files_root / registered["path"]
    old_orphan = files_root / store_bytes(files_root, b"old orphan", ".png").path
    fresh_orphan = files_root / store_bytes(files_root, b"fresh orphan", ".png").path
    old_partial = old_orphan.parent / ".partial-crashed"
    old_partial.write_bytes(b"12345")
    fresh_partial = kept.parent / ".partial-writing"
    fresh_partial.write_bytes(b"123")
    stray = files_root / "stray.txt"
    stray.write_bytes(b"stray")
    outside = tmp_path / "outside.pdf"
    outside.write_bytes(b"outside")
    (files_root / "link.pdf").symlink_to(outside)
    (files_root / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    for path in (kept, old_orphan, old_partial, stray, outside, files_root / "link.pdf"):
        os.utime(path, (time.time() - 2 * HOUR,) * 2, follow_symlinks=False)

    report = remove_unreferenced_files(factory, files_root, min_age_seconds=HOUR, batch_size=2)

    assert report.as_dict() == {"files_deleted": 2, "partial_files_deleted": 1,
                                "bytes_freed": len(b"old orphan") + 5 + len(b"stray"), "dirs_removed": 2,
                                "symlinks_skipped": 2, "errors": []}
    assert kept.exists() and fresh_orphan.exists() and fresh_partial.exists()
    assert not old_orphan.exists() and not old_orphan.parent.exists() and not old_orphan.parent.parent.exists()
    assert outside.read_bytes() == b"outside" and (tmp_path / "a.pdf").exists(), "nothing outside the root"
    assert files_root.is_dir()


def test_cleanup_of_a_missing_root_does_nothing(factory, tmp_path):
    assert remove_unreferenced_files(factory, tmp_path / "none").files_deleted == 0


def test_retention_removes_the_file_rows_of_removed_deliveries(factory, files_root, tmp_path):
    failed = add_delivery(factory, "EM0001", status="failed", age_days=100)
    recent = add_delivery(factory, "EM0002", status="failed", age_days=10)
    for delivery_id in (failed, recent):
        register_document(factory, files_root, delivery_id, write(tmp_path, "a.pdf", pdf_bytes()))
    assert remove_expired_deliveries(factory, utcnow() - timedelta(days=90)) == 1
    assert [row.delivery_id for row in file_rows(factory)] == [recent]
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 1


def test_swapping_the_source_while_attaching_never_stores_unchecked_bytes(factory, files_root, tmp_path):
    delivery_id = add_delivery(factory)
    pdf = write(tmp_path, "prepared.pdf", pdf_bytes(pages=300))
    html = write(tmp_path, "prepared.html", b"<html><body>not a contract</body></html>")
    source = write(tmp_path, "contract.pdf", pdf.read_bytes())
    stop = threading.Event()

    def swap():  # rename the HTML page over the source, then the PDF back, as fast as possible
        while not stop.is_set():
            for prepared in (html, pdf):
                os.link(prepared, tmp_path / "spare")
                os.replace(tmp_path / "spare", source)

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes = []
    try:
        for _ in range(SWAP_TRIES):
            try:
                outcomes.append(register_document(factory, files_root, delivery_id, source)["content_type"])
            except RejectedDocument:
                outcomes.append("rejected")
    finally:
        stop.set()
        swapper.join()
    rows = file_rows(factory)
    for row in rows:
        stored = files_root / row.path
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row.sha256
        assert what_it_is(stored) == (row.content_type, row.page_count), f"{row.path} is not what was recorded"
    assert [(row.content_type, row.page_count) for row in rows] == [("application/pdf", 300)]
    assert set(outcomes) == {"application/pdf", "rejected"}, "the swap raced the attaches: both contents were seen"
    assert stored_files(files_root) == [rows[0].path], "no private copy is left behind"


def what_it_is(path) -> tuple[str, int | None] | str:
    try:
        document = inspect_document(path)
    except RejectedDocument:
        return "rejected"
    return document.content_type, document.page_count


def leaked_runs(message: str, content: bytes) -> list[str]:
    """Every run of 4 bytes of `content` found in `message`, as text or as hex digits."""
    runs = [content[i:i + 4] for i in range(len(content) - 3)]
    return [run.decode("latin-1") for run in runs if run.decode("latin-1") in message] + \
           [run.hex() for run in runs if run.hex() in message.lower()]


@pytest.mark.parametrize("content", [
    SECRET,  # /etc/shadow
    b"\x13\x37\xbe\xef" + SECRET,  # binary
    b"%PDF-1.7\n1 0 obj\n" + SECRET + b"\nendobj\ntrailer\n<</Root 1 0 R>>\nstartxref\n9\n%%EOF\n",  # pypdf quotes it
], ids=["text", "binary", "pdf"])
def test_a_rejected_file_is_never_quoted_in_the_error(factory, files_root, tmp_path, content):
    secret = write(tmp_path, "shadow", content)
    (tmp_path / "link.pdf").symlink_to(secret)
    with pytest.raises(RejectedDocument) as rejected:
        register_document(factory, files_root, add_delivery(factory), tmp_path / "link.pdf")
    assert str(rejected.value).startswith("link.pdf is not a ")
    assert leaked_runs(str(rejected.value), content) == []
    assert file_rows(factory) == [] and stored_files(files_root) == []


def test_with_an_inbox_only_files_inside_it_are_read(factory, files_root, tmp_path):
    delivery_id = add_delivery(factory)
    inbox = tmp_path / "inbox"
    (inbox / "scans").mkdir(parents=True)
    write(inbox / "scans", "contract.pdf", pdf_bytes(pages=2))
    assert register_document(factory, files_root, delivery_id, "scans/contract.pdf", inbox=inbox)["page_count"] == 2
    outside = write(tmp_path, "shadow", SECRET)
    (inbox / "link.pdf").symlink_to(outside)
    (inbox / "out").symlink_to(tmp_path, target_is_directory=True)
    for path in (outside, inbox / "link.pdf", inbox / "out" / "shadow", "../shadow", inbox):
        with pytest.raises(OutsideRootError, match=" is not inside ") as refused:
            register_document(factory, files_root, delivery_id, path, inbox=inbox)
        assert leaked_runs(str(refused.value), SECRET) == []
    (inbox / "loop.pdf").symlink_to(inbox / "loop.pdf")
    with pytest.raises(PermanentError, match="loop.pdf: Too many levels of symbolic links$"):
        register_document(factory, files_root, delivery_id, "loop.pdf", inbox=inbox)
    assert len(file_rows(factory)) == 1 and len(stored_files(files_root)) == 1
