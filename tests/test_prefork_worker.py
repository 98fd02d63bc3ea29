"""A task that kills its worker child is redelivered (acks_late), but only up to the cap."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kombu import Exchange, Queue

# Declared only inside the worker subprocess (tests/support/crashing_app.py), never on this app.
CRASH_QUEUE = Queue("crash_test", Exchange("crash_test"), routing_key="crash_test")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def prefork_worker(celery_app, tmp_path):
    """A real prefork worker subprocess on the crash-test queue of the embedded broker."""
    crash_log = tmp_path / "starts.log"
    env = {**os.environ, "CRASH_LOG": str(crash_log)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.support.crashing_app", "worker", "-P", "prefork",
         "-c", "1", "-Q", CRASH_QUEUE.name, "--loglevel", "warning", "--hostname", "crash@%h"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    yield crash_log
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
    assert prefork_worker.read_text().count("started") == settings.task_max_deliveries
    assert [line["state"] for line in lines_for(settings, result.id)] == ["REJECTED"]


def test_task_killed_at_the_hard_time_limit_is_logged_as_failed(celery_app, settings, prefork_worker):
    result = celery_app.send_task("tests.sleep_past_hard_limit", queue=CRASH_QUEUE)
    result.get(timeout=90, propagate=False)
    assert result.state == "FAILURE"
    [line] = lines_for(settings, result.id)
    assert line["state"] == "FAILURE" and "TimeLimitExceeded" in line["error"]
    assert line["runtime"] == 1.0


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
