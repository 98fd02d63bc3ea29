"""Faults provoked for real in a prefork worker: children killed mid-task, by their task or at a time limit.

A child killed mid-task is redelivered (acks_late, reject_on_worker_lost), but only up to the cap.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from kombu import Exchange, Queue
from sqlalchemy import func, select

from tests.support.waiting import wait_until

# Declared only inside the worker subprocess (tests/support/crashing_app.py), never on this app.
CRASH_QUEUE = Queue("crash_test", Exchange("crash_test"), routing_key="crash_test")

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class PreforkWorker:
    process: subprocess.Popen  # the worker's main process
    starts: Path  # one "started <child pid>" line per start of a crash-test task

    def start_pids(self) -> list[int]:
        text = self.starts.read_text() if self.starts.exists() else ""
        return [int(line.split()[1]) for line in text.splitlines()]

    def child_pids(self) -> set[int]:
        return {child.pid for child in psutil.Process(self.process.pid).children()}


@pytest.fixture
def prefork_worker(celery_app, tmp_path):
    """A real prefork worker subprocess (one child) on the crash-test queue of the embedded broker."""
    crash_log = tmp_path / "starts.log"
    env = {**os.environ, "CRASH_LOG": str(crash_log)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.support.crashing_app", "worker", "-P", "prefork",
         "-c", "1", "-Q", CRASH_QUEUE.name, "--loglevel", "warning", "--hostname", "crash@%h"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    yield PreforkWorker(worker, crash_log)
    worker.terminate()
    worker.wait(30)


def lines_for(settings, task_id):
    time.sleep(0.5)
    lines = [json.loads(line) for line in (settings.logs_path / "task_results.log").read_text().splitlines()]
    return [line for line in lines if line["id"] == task_id]


def test_task_killing_its_worker_is_dropped_after_the_delivery_cap(celery_app, settings, prefork_worker):
    result = celery_app.send_task("tests.kill_own_worker", queue=CRASH_QUEUE)
    result.get(timeout=90, propagate=False)
    assert result.state == "FAILURE"
    assert "keeps killing its worker" in str(result.result)
    assert len(prefork_worker.start_pids()) == settings.task_max_deliveries
    assert [line["state"] for line in lines_for(settings, result.id)] == ["REJECTED"]


def test_task_killed_at_the_hard_time_limit_is_logged_as_failed(celery_app, settings, prefork_worker):
    result = celery_app.send_task("tests.sleep_past_hard_limit", queue=CRASH_QUEUE)
    result.get(timeout=90, propagate=False)
    assert result.state == "FAILURE"
    [line] = lines_for(settings, result.id)
    assert line["state"] == "FAILURE" and "TimeLimitExceeded" in line["error"]
    assert line["runtime"] == 1.0


def test_worker_carries_on_in_a_new_child_after_one_is_killed_at_the_hard_limit(celery_app, prefork_worker):
    killed = celery_app.send_task("tests.sleep_past_hard_limit", queue=CRASH_QUEUE)
    killed.get(timeout=90, propagate=False)
    assert killed.state == "FAILURE"
    [killed_pid] = prefork_worker.start_pids()
    after = celery_app.send_task("tests.report_pids", queue=CRASH_QUEUE).get(timeout=60)
    assert after["parent"] == prefork_worker.process.pid and prefork_worker.process.poll() is None
    assert after["pid"] != killed_pid


def test_task_past_its_soft_limit_cleans_up_and_fails_with_the_soft_limit_error(celery_app, prefork_worker,
                                                                               tmp_path):
    scratch, marker = tmp_path / "scratch", tmp_path / "cleaned-up"
    result = celery_app.send_task("tests.clean_up_at_soft_limit", args=[str(scratch), str(marker)],
                                  queue=CRASH_QUEUE)
    result.get(timeout=60, propagate=False)
    assert result.state == "FAILURE"
    assert isinstance(result.result, SoftTimeLimitExceeded)
    assert marker.read_text() == "cleaned up" and not scratch.exists()


DELIVERIES_CSV = """reference,recipient_name,phone,address,carrier,tracking_number,deadline
CASE-KILL,张三,13800138000,北京市朝阳区建国路1号,ems,{tracking_number},
"""


def test_child_sigkilled_mid_task_is_redelivered_and_its_effect_happens_once(celery_app, django_db,
                                                                            prefork_worker, tmp_path):
    from app.core.database import session_scope
    from app.models import Delivery

    def registered() -> int:
        with session_scope() as session:
            return session.scalar(select(func.count()).select_from(Delivery)
                                  .where(Delivery.tracking_number == tracking_number))

    tracking_number = f"EM{uuid.uuid4().hex[:12].upper()}"
    deliveries, gate = tmp_path / "deliveries.csv", tmp_path / "gate"
    deliveries.write_text(DELIVERIES_CSV.format(tracking_number=tracking_number), encoding="utf-8")
    result = celery_app.send_task("tests.import_then_wait", args=[str(deliveries), str(gate)], queue=CRASH_QUEUE)
    [first_pid] = wait_until(prefork_worker.start_pids)
    assert first_pid in prefork_worker.child_pids()  # the pool's child, not the worker itself
    wait_until(registered)  # the import has committed; the task now waits, its message unacked

    os.kill(first_pid, signal.SIGKILL)
    gate.touch()

    # The second start found the delivery the first had committed, and inserted nothing.
    assert result.get(timeout=60) == {"inserted": 0, "duplicates": 1, "errors": [], "warnings": []}
    [killed, redelivered] = prefork_worker.start_pids()
    assert killed == first_pid and redelivered != first_pid
    assert registered() == 1


def test_task_events_reach_a_monitor_such_as_flower(celery_app, prefork_worker):
    seen: list[dict] = []
    with celery_app.connection_for_read() as connection:
        receiver = celery_app.events.Receiver(connection, handlers={"*": seen.append})
        listener = threading.Thread(target=receiver.capture, kwargs={"limit": None, "timeout": None}, daemon=True)
        listener.start()
        time.sleep(1)  # the fanout binding must exist before the events are published
        result = celery_app.send_task("app.tasks.file_tasks.check_disk_space", queue=CRASH_QUEUE)
        result.get(timeout=60)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "task-succeeded" not in _types_for(seen, result.id):
            time.sleep(0.1)
        receiver.should_stop = True
        listener.join(10)
    assert {"task-received", "task-started", "task-succeeded"} <= _types_for(seen, result.id)


def _types_for(events, task_id):
    return {event["type"] for event in list(events) if event.get("uuid") == task_id}
