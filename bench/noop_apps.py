"""The two apps the throughput bench compares, each with a no-op task.

`ours`: the service's own app (events, task_results.log, track_started, the delivery cap).
`bare`: plain Celery on the same broker and result backend, with the same acks_late/prefetch.
"""

from celery import Celery

from app.core.config import get_settings
from app.tasks.celery_app import app as ours

settings = get_settings()

bare = Celery("bare", broker=settings.broker_url, backend=settings.result_backend_url)
bare.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue="bench_bare",
    broker_connection_retry_on_startup=True,
)


@ours.task(name="bench.noop", shared=False)
def noop_ours(i):
    return i


@bare.task(name="bench.noop", shared=False)
def noop_bare(i):
    return i
