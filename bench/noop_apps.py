"""The apps the throughput bench compares, each with a no-op task.

`ours`: the service's own app (seed limits, worker events, task_results.log, the delivery cap).
`bare`: plain Celery on the same broker and result backend, with the same acks_late/prefetch.
`bare_limits`: `bare` plus the seed's soft/hard time limits, which every deployment of the seed
pays (billiard arms two timers per task): the baseline for what this app itself adds.
"""

from celery import Celery

from app.core.config import get_settings
from app.tasks.celery_app import HARD_TIME_LIMIT, SOFT_TIME_LIMIT, app as ours

settings = get_settings()


def bare_app(name: str, **extra) -> Celery:
    bare = Celery(name, broker=settings.broker_url, backend=settings.result_backend_url)
    bare.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_default_queue=f"bench_{name}",
        broker_connection_retry_on_startup=True,
        **extra,
    )
    bare.task(name="bench.noop", shared=False)(noop)
    return bare


def noop(i):
    return i


bare = bare_app("bare")
bare_limits = bare_app("bare_limits", task_soft_time_limit=SOFT_TIME_LIMIT, task_time_limit=HARD_TIME_LIMIT)
ours.task(name="bench.noop", shared=False)(noop)
