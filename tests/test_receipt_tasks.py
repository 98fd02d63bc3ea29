"""Receipts through a real worker on the embedded default, and `python -m app receipts` as operators run it."""

import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import delete

from app.core.database import SessionFactory, session_scope
from app.models import Delivery, DeliveryFile, TrackingEvent
from tests.services.test_receipt import add_delivered
from tests.support.app_cli import run_app
from tests.support.waiting import wait_until

TASK = "app.tasks.receipt_tasks.generate_receipt"
RESULT_TIMEOUT = 60


@pytest.fixture
def delivered(django_db, settings):
    """Makes delivered deliveries in the in-process app's database; removes them and their rows afterwards."""
    made = []

    def add(with_screenshot: bool = True, screenshot: bytes | None = None) -> int:
        made.append(add_delivered(SessionFactory, settings.files_path, screenshot, with_screenshot))
        return made[-1]

    yield add
    with session_scope() as session:
        session.execute(delete(DeliveryFile).where(DeliveryFile.delivery_id.in_(made)))
        session.execute(delete(TrackingEvent).where(TrackingEvent.delivery_id.in_(made)))
        session.execute(delete(Delivery).where(Delivery.id.in_(made)))


def evidence_of(delivery_id: int) -> tuple[str, str | None]:
    with session_scope() as session:
        delivery = session.get(Delivery, delivery_id)
        return delivery.evidence_status, delivery.evidence_error


def task_result_line(settings, task_id: str) -> dict:
    path = settings.logs_path / "task_results.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if found := [line for line in lines if line["id"] == task_id]:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no task_results.log line for {task_id}")


def test_receipt_task_carries_its_evidence_step(celery_app):
    from app.tasks.base import EvidenceTask

    task = celery_app.tasks[TASK]
    assert isinstance(task, EvidenceTask) and task.evidence_step == "receipt"


@pytest.mark.needs_cjk_font
def test_task_issues_the_receipt_once_and_completes_the_evidence(worker, celery_app, delivered, settings):
    delivery_id = delivered()
    result = celery_app.send_task(TASK, args=[delivery_id])
    summary = result.get(timeout=RESULT_TIMEOUT)

    assert summary["receipt_number"].endswith(f"-{delivery_id:08d}-1") and not summary["existing"]
    assert (settings.files_path / summary["path"]).is_file()
    assert evidence_of(delivery_id) == ("complete", None)
    assert task_result_line(settings, result.id)["queue"] == "receipt"
    again = celery_app.send_task(TASK, args=[delivery_id]).get(timeout=RESULT_TIMEOUT)
    assert again == {**summary, "existing": True}


def test_task_without_a_screenshot_fails_at_once_and_the_delivery_says_why(worker, celery_app, delivered, settings):
    delivery_id = delivered(with_screenshot=False)
    result = celery_app.send_task(TASK, args=[delivery_id])
    result.get(timeout=RESULT_TIMEOUT, propagate=False)

    assert result.failed()
    line = task_result_line(settings, result.id)
    assert line["state"] == "FAILURE" and line["retries"] == 0, "a missing screenshot is not retried"
    wait_until(lambda: evidence_of(delivery_id)[0] == "failed")
    assert evidence_of(delivery_id)[1] == (f"receipt: MissingScreenshotError: delivery {delivery_id} "
                                           "has no screenshot yet")


@pytest.mark.needs_cjk_font
def test_task_with_a_screenshot_too_large_to_embed_fails_at_once_saying_why(worker, celery_app, delivered, settings):
    tall = io.BytesIO()
    Image.new("1", (900, 40_000), 1).save(tall, "PNG")
    delivery_id = delivered(screenshot=tall.getvalue())
    result = celery_app.send_task(TASK, args=[delivery_id])
    result.get(timeout=RESULT_TIMEOUT, propagate=False)

    line = task_result_line(settings, result.id)
    assert line["state"] == "FAILURE" and line["retries"] == 0, "what cannot be rendered is not retried"
    wait_until(lambda: evidence_of(delivery_id)[0] == "failed")
    assert evidence_of(delivery_id)[1].startswith("receipt: EvidenceTooLargeError: the screenshot is 900x40000 px")


@pytest.mark.needs_cjk_font
def test_cli_generates_shows_and_verifies_a_receipt(cli_delivery, tmp_path):
    var_dir, delivery_id = cli_delivery
    generated = run_app(var_dir, "receipts", "generate", str(delivery_id))
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("issued receipt HZ-") and f"of delivery {delivery_id}" in generated.stdout
    [shown] = json.loads(run_app(var_dir, "receipts", "show", str(delivery_id), "--json").stdout)
    issued = Path(shown["file"])
    assert issued == var_dir / "files" / shown["path"] and issued.is_file()

    verified = run_app(var_dir, "receipts", "verify", str(issued))
    assert verified.returncode == 0
    assert verified.stdout.strip() == (f"OK: receipt {shown['receipt_number']} of delivery {delivery_id} "
                                       f"(reference （2026）京0105民初123号), sha256 {shown['sha256']}")

    altered = tmp_path / f"{shown['receipt_number']}.pdf"
    data = bytearray(issued.read_bytes())
    data[-100] ^= 0x20
    altered.write_bytes(bytes(data))
    mismatch = run_app(var_dir, "receipts", "verify", str(altered))
    assert mismatch.returncode == 1 and mismatch.stdout.startswith("MISMATCH: ")
    assert "modified since it was issued" in mismatch.stdout

    missing = run_app(var_dir, "receipts", "verify", str(tmp_path / "nowhere.pdf"))
    assert missing.returncode == 1 and missing.stderr.strip() == f"error: no such file: {tmp_path / 'nowhere.pdf'}"


def test_cli_show_without_a_receipt_and_help(cli_delivery):
    var_dir, delivery_id = cli_delivery
    shown = run_app(var_dir, "receipts", "show", str(delivery_id))
    assert shown.returncode == 1 and shown.stderr.strip() == f"error: delivery {delivery_id} has no receipt"
    for action in ("verify", "show", "generate"):
        assert run_app(var_dir, "receipts", action, "--help").returncode == 0
