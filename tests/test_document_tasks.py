"""Documents through a real worker on the embedded default, and `python -m app deliveries attach` as run by hand."""

import hashlib
import os
import time

import pytest
from sqlalchemy import delete, select

from app.core.database import session_scope
from app.models import Delivery, DeliveryFile
from tests.support.app_cli import run_app
from tests.support.files import pdf_bytes

RESULT_TIMEOUT = 60


@pytest.fixture
def delivery_id(django_db):
    with session_scope() as session:
        delivery = Delivery(reference="CASE-DOC", recipient_name="张三", phone="13800138000", address="北京市",
                            carrier="ems", tracking_number="EMDOC0001")
        session.add(delivery)
    yield delivery.id
    with session_scope() as session:
        session.execute(delete(DeliveryFile).where(DeliveryFile.delivery_id == delivery.id))
        session.execute(delete(Delivery).where(Delivery.id == delivery.id))


def test_register_document_task_stores_the_file(worker, celery_app, settings, delivery_id, tmp_path):
    data = pdf_bytes(pages=2)
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    result = celery_app.send_task("app.tasks.file_tasks.register_document",
                                  args=[delivery_id, str(source), "contract.pdf"]).get(timeout=RESULT_TIMEOUT)
    assert (result["sha256"], result["page_count"], result["duplicate"]) == (hashlib.sha256(data).hexdigest(), 2, False)
    assert (settings.files_path / result["path"]).read_bytes() == data
    with session_scope() as session:
        names = session.scalars(select(DeliveryFile.original_name).where(DeliveryFile.delivery_id == delivery_id))
        assert names.all() == ["contract.pdf"]


def test_register_document_task_rejects_without_retrying(worker, celery_app, delivery_id, tmp_path):
    source = tmp_path / "notes.pdf"
    source.write_text("not a pdf\n")
    outcome = celery_app.send_task("app.tasks.file_tasks.register_document", args=[delivery_id, str(source)])
    with pytest.raises(Exception, match=r"notes.pdf is not a PDF or image \(starts with not a pd…: plain text\?\)"):
        outcome.get(timeout=RESULT_TIMEOUT)
    assert outcome.state == "FAILURE" and outcome.info.__class__.__name__ == "RejectedDocument"


def test_cleanup_unreferenced_files_task_deletes_an_old_orphan(worker, celery_app, settings, django_db):
    orphan = settings.files_path / "ab" / "cd" / ("ab" + "cd" + "0" * 60 + ".png")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    os.utime(orphan, (time.time() - 7200,) * 2)
    report = celery_app.send_task("app.tasks.file_tasks.cleanup_unreferenced_files").get(timeout=RESULT_TIMEOUT)
    assert report["files_deleted"] >= 1 and report["errors"] == []
    assert not orphan.exists()


def test_deliveries_attach_stores_a_pdf_and_rejects_a_docx(tmp_path):
    added = run_app(tmp_path / "var", "deliveries", "add", "--reference", "CASE-1", "--recipient-name", "张三",
                "--phone", "13800138000", "--address", "北京市", "--carrier", "ems", "--tracking-number", "EM123456789CN")
    assert added.returncode == 0, added.stderr
    data = pdf_bytes(pages=3)
    pdf = tmp_path / "contract.pdf"
    pdf.write_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()
    stored = tmp_path / "var" / "files" / sha256[:2] / sha256[2:4] / f"{sha256}.pdf"

    attached = run_app(tmp_path / "var", "deliveries", "attach", "1", str(pdf))
    assert attached.returncode == 0, attached.stderr
    assert attached.stdout == (f"attached to delivery 1: stored as {stored}, sha256 {sha256}, "
                               "application/pdf, 3 pages\n")
    assert stored.read_bytes() == data
    assert run_app(tmp_path / "var", "deliveries", "attach", "1", str(pdf)).stdout.startswith("already attached to delivery 1:")

    docx = tmp_path / "report.docx"
    docx.write_bytes(b"PK\x03\x04" + bytes(40))
    rejected = run_app(tmp_path / "var", "deliveries", "attach", "1", str(docx))
    assert rejected.returncode == 1
    assert rejected.stderr == "error: report.docx is not a PDF or image (starts with PK…: a ZIP/Office file?)\n"
    missing = run_app(tmp_path / "var", "deliveries", "attach", "2", str(pdf))
    assert (missing.returncode, missing.stderr) == (1, "error: no delivery 2\n")
