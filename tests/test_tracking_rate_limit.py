"""Two prefork workers polling chunks at once stay under the carrier's rate limit together."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kombu import Exchange, Queue
from sqlalchemy import delete

from app.core.database import session_scope
from app.models import Delivery, TrackingEvent

ROOT = Path(__file__).resolve().parents[1]
# Declared only inside the worker subprocesses (tests/support/crashing_app.py).
TEST_QUEUE = Queue("crash_test", Exchange("crash_test"), routing_key="crash_test")
CARRIER_LIMIT = 40  # requests per second the simulated carrier accepts
OUR_LIMIT = 30  # what we configure: a wide margin for scheduling jitter between grant and arrival on a loaded CI machine


@pytest.fixture
def two_workers(celery_app):
    env = {**os.environ, "KUAIDI100_RATE_LIMIT": str(OUR_LIMIT), "CRASH_LOG": os.devnull}
    workers = [subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.support.crashing_app", "worker", "-P", "prefork", "-c", "2",
         "-Q", TEST_QUEUE.name, "--loglevel", "warning", "--hostname", f"limit{i}@%h"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    names = [f"limit{i}@{os.uname().nodename}" for i in range(2)]
    deadline = time.monotonic() + 60
    while len(celery_app.control.ping(destination=names, timeout=0.5)) < 2:
        assert time.monotonic() < deadline, "the two workers did not come up"
    yield workers
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(30)


def test_rate_limit_holds_across_two_workers(two_workers, celery_app, carrier_simulator, django_db):
    with session_scope() as session:
        rows = [Delivery(reference=f"R{i}", recipient_name="张三", phone="13800138000", address="北京市",
                         carrier="ems", tracking_number=f"EMRATE{i:05d}") for i in range(240)]
        session.add_all(rows)
    ids = [row.id for row in rows]
    simulator = carrier_simulator.simulator
    simulator.rate_limit = CARRIER_LIMIT
    before = simulator.stats.requests
    started = time.monotonic()
    try:
        results = [celery_app.send_task("app.tasks.tracking_tasks.poll_tracking_chunk",
                                        args=[ids[i:i + 30]], queue=TEST_QUEUE) for i in range(0, len(ids), 30)]
        summaries = [result.get(timeout=120) for result in results]
    finally:
        simulator.rate_limit = None
    elapsed = time.monotonic() - started
    try:
        assert sum(s["polled"] for s in summaries) == len(ids)
        assert simulator.stats.over_limit == 0, "not one request beyond the carrier's limit"
        assert simulator.stats.requests - before == len(ids)
        assert elapsed >= (len(ids) - 1) / OUR_LIMIT * 0.9, "the limit is shared, not per worker"
    finally:
        with session_scope() as session:
            session.execute(delete(TrackingEvent))
            session.execute(delete(Delivery).where(Delivery.id.in_(ids)))
