"""The real app plus tasks that die, or are killed, in their worker child, for a prefork worker subprocess.

Run as `celery -A tests.support.crashing_app worker -P prefork -Q crash_test`; each start of a
task here is recorded in CRASH_LOG ("started <child pid>") before anything can kill it.
"""

import os
import time
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from kombu import Exchange, Queue

from app.core.database import session_scope
from app.services.deliveries import import_csv
from app.tasks.celery_app import app

CRASH_QUEUE = Queue("crash_test", Exchange("crash_test"), routing_key="crash_test")
# Never import this module into the test process: it adds a queue to the shared app.
app.conf.task_queues = [*app.conf.task_queues, CRASH_QUEUE]

# Longer than any test waits, so a gate never opened cannot hold the worker's shutdown for ever.
GATE_TIMEOUT = 60


def _record_start() -> None:
    with open(os.environ["CRASH_LOG"], "a") as log:
        log.write(f"started {os.getpid()}\n")


@app.task(name="tests.kill_own_worker")
def kill_own_worker():
    _record_start()
    os._exit(9)


@app.task(name="tests.sleep_past_hard_limit", soft_time_limit=0.5, time_limit=1)
def sleep_past_hard_limit():
    _record_start()
    while True:  # ignores the soft limit; only the hard limit's SIGKILL stops it
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            pass


@app.task(name="tests.import_then_wait")
def import_then_wait(csv_path: str, gate_path: str) -> dict:
    """Import deliveries (committed), then wait for the test's gate: a task that may die before its ack."""
    _record_start()
    with session_scope() as session:
        report = import_csv(session, Path(csv_path))
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(gate_path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate_path} never appeared")
        time.sleep(0.05)
    return report.as_dict()


@app.task(name="tests.clean_up_at_soft_limit", soft_time_limit=0.5, time_limit=10)
def clean_up_at_soft_limit(scratch_path: str, marker_path: str):
    """Hold a scratch file past the soft limit; remove it, leave the marker and re-raise."""
    _record_start()
    scratch = Path(scratch_path)
    scratch.write_text("partial work")
    try:
        while True:
            time.sleep(0.1)
    except SoftTimeLimitExceeded:
        scratch.unlink()
        Path(marker_path).write_text("cleaned up")
        raise


@app.task(name="tests.report_pids")
def report_pids() -> dict:
    """The pid of the child running this task and of its parent, the worker's main process."""
    return {"pid": os.getpid(), "parent": os.getppid()}
