"""Documents through a real worker on the embedded default, and `python -m app deliveries attach` as run by hand."""

import hashlib
import os
import shutil
import time

import pytest
from sqlalchemy import delete, select

from app.core.database import session_scope
from app.models import Delivery, DeliveryFile
from tests.support.app_cli import run_app
from tests.support.files import pdf_bytes

RESULT_TIMEOUT = 60


@pytest.fixture
def inbox(settings, tmp_path):
    """A directory of this test's own inside DOCUMENT_INBOX, the only place the task takes files from."""
    directory = settings.document_inbox_path / tmp_path.name
    directory.mkdir(parents=True)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def delivery_id(django_db):
    with session_scope() as session:
        delivery = Delivery(reference="CASE-DOC", recipient_name="张三", phone="13800138000", address="北京市",
                            carrier="ems", tracking_number="EMDOC0001")
        session.add(delivery)
        session.flush()
        # SQLite reuses a deleted row's id: rows another test left for an earlier delivery of this id go.
        session.execute(delete(DeliveryFile).where(DeliveryFile.delivery_id == delivery.id))
    yield delivery.id
    with session_scope() as session:
        session.execute(delete(DeliveryFile).where(DeliveryFile.delivery_id == delivery.id))
        session.execute(delete(Delivery).where(Delivery.id == delivery.id))


def test_register_document_task_stores_the_file(worker, celery_app, settings, delivery_id, inbox):
    data = pdf_bytes(pages=2)
    source = inbox / "upload.bin"
    source.write_bytes(data)
    result = celery_app.send_task("app.tasks.file_tasks.register_document",
                                  args=[delivery_id, str(source), "contract.pdf"]).get(timeout=RESULT_TIMEOUT)
    assert (result["sha256"], result["page_count"], result["duplicate"]) == (hashlib.sha256(data).hexdigest(), 2, False)
    assert (settings.files_path / result["path"]).read_bytes() == data
    with session_scope() as session:
        names = session.scalars(select(DeliveryFile.original_name).where(DeliveryFile.delivery_id == delivery_id))
        assert names.all() == ["contract.pdf"]


def test_register_document_task_rejects_without_retrying(worker, celery_app, delivery_id, inbox):
    source = inbox / "notes.pdf"
    source.write_text("not a pdf\n")
    outcome = celery_app.send_task("app.tasks.file_tasks.register_document", args=[delivery_id, str(source)])
    with pytest.raises(Exception, match=r"^notes.pdf is not a PDF or image \(plain text\?\)$"):
        outcome.get(timeout=RESULT_TIMEOUT)
    assert outcome.state == "FAILURE" and outcome.info.__class__.__name__ == "RejectedDocument"


def test_register_document_task_takes_a_path_relative_to_the_inbox(worker, celery_app, delivery_id, inbox):
    (inbox / "scan.pdf").write_bytes(pdf_bytes(pages=1))
    relative = f"{inbox.name}/scan.pdf"
    result = celery_app.send_task("app.tasks.file_tasks.register_document",
                                  args=[delivery_id, relative]).get(timeout=RESULT_TIMEOUT)
    assert (result["original_name"], result["page_count"]) == ("scan.pdf", 1)


@pytest.mark.parametrize("where", ["outside", "symlink", "dotdot"])
def test_register_document_task_refuses_a_path_outside_the_inbox_without_retrying(
        worker, celery_app, settings, delivery_id, inbox, tmp_path, where):
    outside = tmp_path / "contract.pdf"
    outside.write_bytes(pdf_bytes(pages=1))
    (inbox / "contract.pdf").symlink_to(outside)
    path = {"outside": str(outside), "symlink": str(inbox / "contract.pdf"),
            "dotdot": os.path.relpath(outside, settings.document_inbox_path)}[where]
    outcome = celery_app.send_task("app.tasks.file_tasks.register_document", args=[delivery_id, path])
    with pytest.raises(Exception, match=r" is not inside .*inbox$"):
        outcome.get(timeout=RESULT_TIMEOUT)
    assert outcome.state == "FAILURE" and outcome.info.__class__.__name__ == "OutsideRootError"
    with session_scope() as session:
        assert session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id)).all() == []


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
    assert rejected.stderr == "error: report.docx is not a PDF or image (a ZIP/Office file?)\n"
    missing = run_app(tmp_path / "var", "deliveries", "attach", "2", str(pdf))
    assert (missing.returncode, missing.stderr) == (1, "error: no delivery 2\n")


def test_deliveries_attach_of_a_symlink_to_a_secret_prints_none_of_it(tmp_path):
    added = run_app(tmp_path / "var", "deliveries", "add", "--reference", "CASE-1", "--recipient-name", "张三",
                    "--phone", "13800138000", "--address", "北京市", "--carrier", "ems", "--tracking-number", "EM123456789CN")
    assert added.returncode == 0, added.stderr
    shadow = tmp_path / "shadow"
    shadow.write_text("nobody:$6$S3CR3T$b7e1f00d:19876:0:99999:7:::\n")
    (tmp_path / "contract.pdf").symlink_to(shadow)
    attached = run_app(tmp_path / "var", "deliveries", "attach", "1", str(tmp_path / "contract.pdf"))
    assert (attached.returncode, attached.stdout) == (1, "")
    assert attached.stderr == "error: contract.pdf is not a PDF or image (plain text?)\n"
