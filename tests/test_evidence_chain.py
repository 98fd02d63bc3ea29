"""Evidence through real workers: the chain after a simulated delivery, and Chromium under the hard limit."""

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import delete, select

from app.core.database import session_scope
from app.models import Delivery, DeliveryFile, TrackingEvent
from kombu import Exchange, Queue

from tests.support.browser import chromium_path

# Declared only inside the worker subprocess (tests/support/crashing_app.py), never on this app.
CRASH_QUEUE = Queue("crash_test", Exchange("crash_test"), routing_key="crash_test")

ROOT = Path(__file__).resolve().parents[1]
RESULT_TIMEOUT = 120


@pytest.fixture
def delivery(django_db, carrier_simulator):
    with session_scope() as session:
        row = Delivery(reference="CASE-EVIDENCE", recipient_name="张三", phone="13800138000", address="北京市",
                       carrier="ems", tracking_number=f"EMEV{time.time_ns() % 10**9}")
        session.add(row)
    yield row.id
    with session_scope() as session:
        session.execute(delete(TrackingEvent))
        session.execute(delete(DeliveryFile))
        session.execute(delete(Delivery))


def evidence_of(delivery_id: int) -> tuple[str, str | None, list[str]]:
    with session_scope() as session:
        row = session.get(Delivery, delivery_id)
        kinds = sorted(session.scalars(select(DeliveryFile.kind).where(DeliveryFile.delivery_id == delivery_id)))
        return row.evidence_status, row.evidence_error, kinds


def wait_for(condition, timeout=RESULT_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.3)
    return value


@pytest.mark.needs_cjk_font
@pytest.mark.needs_chromium
def test_a_delivered_delivery_gets_its_screenshot_then_its_receipt(worker, celery_app, delivery):
    for _ in range(5):  # the simulator signs for a plain number at the fifth poll
        celery_app.send_task("app.tasks.tracking_tasks.update_tracking_status").get(timeout=RESULT_TIMEOUT)
        time.sleep(0.5)
    wait_for(lambda: evidence_of(delivery)[0] == "complete")
    status, error, kinds = evidence_of(delivery)
    assert error is None and kinds == ["receipt", "screenshot"]

    again = celery_app.send_task("app.tasks.tracking_tasks.check_pending_tasks").get(timeout=RESULT_TIMEOUT)
    assert again["evidence"] == 0, "complete evidence is not asked for again"


@pytest.mark.needs_cjk_font
@pytest.mark.needs_chromium
def test_missing_evidence_is_sent_again_by_check_pending_tasks(worker, celery_app, delivery):
    with session_scope() as session:
        row = session.get(Delivery, delivery)
        row.status = "delivered"  # delivered while the evidence chain was lost
    sent = celery_app.send_task("app.tasks.tracking_tasks.check_pending_tasks").get(timeout=RESULT_TIMEOUT)
    assert sent["evidence"] == 1
    assert celery_app.send_task("app.tasks.tracking_tasks.check_pending_tasks").get(timeout=RESULT_TIMEOUT)["evidence"] == 0, \
        "never twice while one is in flight"
    wait_for(lambda: evidence_of(delivery)[0] == "complete")


@pytest.fixture
def silent_url():
    """A URL on 127.0.0.1 whose server accepts and never answers."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/track/{{tracking_number}}"
    listener.close()


def chromium_family(root_pid: int) -> list[psutil.Process]:
    """Chromium processes below the worker `root_pid`."""
    try:
        below = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    return [p for p in below if _is_chromium(p)]


def _is_chromium(process: psutil.Process) -> bool:
    """False for one that ended since it was listed (a Chromium helper or the worker's child may)."""
    try:
        name = process.name().lower()
    except psutil.NoSuchProcess:
        return False
    return "chromium" in name or "chrome" in name


@pytest.fixture
def shot_worker(silent_url):
    """A prefork worker subprocess whose screenshots also load a carrier page that never answers."""
    chromium_path()
    env = {**os.environ, "CARRIER_PAGE_URL": silent_url, "SCREENSHOT_TIMEOUT": "300", "CRASH_LOG": os.devnull}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.support.crashing_app", "worker", "-P", "prefork", "-c", "1",
         "-Q", CRASH_QUEUE.name, "--loglevel", "warning", "--hostname", "shots@%h"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield worker
    worker.terminate()
    worker.wait(30)


def hung_screenshot(celery_app, worker, delivery_id, **limits):
    """Send a screenshot that hangs on the carrier page; the Chromium processes it started."""
    result = celery_app.send_task("app.tasks.screenshot_tasks.capture_tracking_screenshot", args=[delivery_id],
                                  queue=CRASH_QUEUE, **limits)
    return result, wait_for(lambda: chromium_family(worker.pid), timeout=60)


def test_no_chromium_survives_a_task_killed_at_the_hard_time_limit(celery_app, delivery, shot_worker):
    result, browsers = hung_screenshot(celery_app, shot_worker, delivery, time_limit=8, soft_time_limit=4)
    for process in browsers:  # a frozen browser: even closing it at the soft limit hangs
        process.suspend()
    result.get(timeout=RESULT_TIMEOUT, propagate=False)
    assert result.state == "FAILURE" and "TimeLimitExceeded" in repr(result.result)
    gone, alive = psutil.wait_procs(browsers, timeout=15)
    assert alive == [], f"Chromium left behind: {[p.pid for p in alive]}"
    wait_for(lambda: evidence_of(delivery)[0] == "failed")


def test_the_soft_time_limit_closes_the_browser_of_the_task(celery_app, delivery, shot_worker):
    result, browsers = hung_screenshot(celery_app, shot_worker, delivery, time_limit=60, soft_time_limit=6)
    gone, alive = psutil.wait_procs(browsers, timeout=30)
    assert alive == [], f"Chromium left behind: {[p.pid for p in alive]}"
    assert shot_worker.poll() is None, "the worker carries on"
