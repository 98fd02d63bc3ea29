"""The real app plus one task that kills its own worker child, for a prefork worker subprocess.

Run as `celery -A tests.support.crashing_app worker -P prefork -Q crash_test`; each start of
the task is recorded in CRASH_LOG before the child dies.
"""

import os
import time

from celery.exceptions import SoftTimeLimitExceeded
from kombu import Exchange, Queue

from app.tasks.celery_app import app

CRASH_QUEUE = Queue("crash_test", Exchange("crash_test"), routing_key="crash_test")
# Never import this module into the test process: it adds a queue to the shared app.
app.conf.task_queues = [*app.conf.task_queues, CRASH_QUEUE]


@app.task(name="tests.kill_own_worker")
def kill_own_worker():
    with open(os.environ["CRASH_LOG"], "a") as log:
        log.write("started\n")
    os._exit(9)


@app.task(name="tests.sleep_past_hard_limit", soft_time_limit=0.5, time_limit=1)
def sleep_past_hard_limit():
    while True:  # ignores the soft limit; only the hard limit's SIGKILL stops it
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            pass
