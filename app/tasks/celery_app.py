"""The Celery application: configuration from the typed settings, queues, routes, signal hooks."""

import logging
import os
import time
from collections import deque

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.core.django_settings")
django.setup()

from celery import Celery, signals, states  # noqa: E402
from celery.exceptions import TimeLimitExceeded  # noqa: E402
from kombu import Exchange, Queue as KombuQueue  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from app.core.config import TIMEZONE, Settings, get_settings  # noqa: E402
from app.core.broker_transport import install as install_broker_transport  # noqa: E402
from app.core.logging import task_result_record, write_task_result  # noqa: E402
from app.core.network import connect_timeout, redis_options  # noqa: E402
from app.core.database import SessionFactory, engine  # noqa: E402
from app.core.migrations import migrate_all  # noqa: E402
from app.services.alerts import alert_job_outcome  # noqa: E402
from app.services.job_runs import finish_run, start_run  # noqa: E402
from app.tasks.policies import RETRY_BACKOFF_MAX  # noqa: E402
from app.tasks.queues import Queue  # noqa: E402

log = logging.getLogger(__name__)

SOFT_TIME_LIMIT = 300
HARD_TIME_LIMIT = 600
# Redis redelivers a message not acked within this time. An ETA retry waits unacked in the worker
# for up to RETRY_BACKOFF_MAX, then runs for up to HARD_TIME_LIMIT: anything shorter runs it twice.
VISIBILITY_TIMEOUT = 3 * (RETRY_BACKOFF_MAX + HARD_TIME_LIMIT)

# Always add routes here, never on decorators. Exact names win over the globs.
TASK_ROUTES = {
    "app.tasks.tracking_tasks.check_pending_tasks": {"queue": Queue.HIGH_PRIORITY},
    "app.tasks.tracking_tasks.system_health_check": {"queue": Queue.HIGH_PRIORITY},
    "app.tasks.file_tasks.check_disk_space": {"queue": Queue.HIGH_PRIORITY},
    "app.tasks.file_tasks.cleanup_*": {"queue": Queue.LOW_PRIORITY},
    "app.tasks.tracking_tasks.*": {"queue": Queue.TRACKING},
    "app.tasks.receipt_tasks.*": {"queue": Queue.RECEIPT},
    "app.tasks.screenshot_tasks.*": {"queue": Queue.SCREENSHOT},
    "app.tasks.maintenance_tasks.*": {"queue": Queue.LOW_PRIORITY},
    "app.tasks.report_tasks.*": {"queue": Queue.LOW_PRIORITY},
}

TASK_MODULES = ["app.tasks.tracking_tasks", "app.tasks.file_tasks", "app.tasks.maintenance_tasks",
                "app.tasks.screenshot_tasks", "app.tasks.receipt_tasks", "app.tasks.report_tasks"]


def celery_config(settings: Settings) -> dict:
    """Every Celery setting, the seed's first."""
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend_url,
        "timezone": TIMEZONE,
        "enable_utc": False,
        "beat_scheduler": "app.scheduling.scheduler:ScheduleTableScheduler",
        "task_queues": [KombuQueue(q.value, Exchange(q.value), routing_key=q.value) for q in Queue],
        # A task nobody routed still lands on a queue some worker consumes.
        "task_default_queue": Queue.LOW_PRIORITY.value,
        "task_create_missing_queues": False,
        "task_routes": TASK_ROUTES,
        "task_soft_time_limit": SOFT_TIME_LIMIT,
        "task_time_limit": HARD_TIME_LIMIT,
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        # A worker child that dies mid-task gives its message back (AppTask caps the redeliveries).
        "task_reject_on_worker_lost": True,
        "result_expires": 3600,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Flower sees every task from the worker's events (received, started, succeeded ...).
        # No task-sent event: it doubles each publish for producers (bench/throughput.py: 0.62 -> 0.91).
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_consumer": "app.tasks.consumer:EventBatchingConsumer",
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT,
                                     **_redis_transport_options(settings.broker_url, settings.network_timeout)},
        "broker_connection_retry_on_startup": True,
        # A worker cut off from the broker keeps reconnecting, however long the outage.
        "broker_connection_max_retries": None,
        **_result_backend_options(settings.result_backend_url, settings.network_timeout),
        # Under acks_late, a task still running when the broker connection drops is redelivered;
        # cancelling it keeps it from running twice.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_concurrency": settings.worker_concurrency,
        "include": TASK_MODULES,
    }


def _is_tcp(url: str) -> bool:
    return not url.startswith("redis+socket")


def _redis_transport_options(url: str, timeout: float) -> dict:
    """kombu's Redis transport gives a silent broker up after `timeout` (the BRPOP check included)."""
    if not _is_tcp(url):
        return {"socket_timeout": timeout, "health_check_interval": max(1, int(timeout / 2))}
    return redis_options(timeout)


def _result_backend_options(url: str, timeout: float) -> dict:
    """The Redis result backend: bounded waits, and a result that could not be stored is stored
    again until the backend answers, never turned into a failure of a task that succeeded."""
    options = {
        "redis_socket_timeout": timeout,
        "redis_socket_connect_timeout": connect_timeout(timeout),
        "redis_backend_health_check_interval": max(1, int(timeout / 2)),
        "result_backend_always_retry": True,
        "result_backend_max_sleep_between_retries_ms": 2000,
    }
    if _is_tcp(url):
        options["redis_socket_keepalive"] = True
    return options


# A broker that refuses writes (full disk, out of memory, a replica) is an outage to reconnect from.
install_broker_transport()
app = Celery("app", task_cls="app.tasks.base:AppTask")
app.conf.update(celery_config(get_settings()))

FINISHED_STATES = frozenset({states.SUCCESS, states.FAILURE, states.REJECTED})
_started: dict[str, float] = {}

# Celery reports one hard timeout through task_failure twice (on_timeout, then on_failure).
_timeouts_logged: deque[str] = deque(maxlen=1000)


@signals.worker_init.connect
def _migrate_before_consuming(**_):
    # A worker may start before beat on a new database; tasks need the tables.
    migrate_all()


@signals.worker_process_init.connect
def _own_database_connections(**_):
    # A forked pool child must never use the connections its parent pooled (worker_init migrates
    # through them): two processes on one PostgreSQL socket read each other's answers.
    engine.sa_engine.dispose(close=False)


@signals.task_prerun.connect
def _remember_start(task_id=None, task=None, **_):
    _started[task_id] = time.monotonic()
    job = _periodic_job_name(task)
    if job:
        _record_run(start_run, job, task_id)


def _periodic_job_name(task) -> str | None:
    # django-celery-beat puts the schedule entry's name in this header of every message it sends.
    return getattr(task.request, "periodic_task_name", None) if task else None


def _record_run(record, *args) -> None:
    """Keep the run history; a database hiccup here must not fail the task itself."""
    try:
        record(SessionFactory, *args)
    except SQLAlchemyError as error:
        log.warning("job run history not written: %s", error)


@signals.task_postrun.connect
def _log_finished_task(task_id=None, task=None, retval=None, state=None, **_):
    started = _started.pop(task_id, None)
    if state not in FINISHED_STATES:  # a retry, or a child dying at its hard limit
        return
    job = _periodic_job_name(task)
    if job:
        outcome = "success" if state == states.SUCCESS else state.lower()
        _record_run(finish_run, task_id, outcome, retval)
        alert_job_outcome(SessionFactory, job, outcome, retval, get_settings().alert_webhook_url)
    record = task_result_record(
        task_id=task_id,
        name=task.name,
        queue=(task.request.delivery_info or {}).get("routing_key"),
        state=state,
        runtime=None if started is None else time.monotonic() - started,
        retries=task.request.retries,
        outcome=retval,
    )
    write_task_result(get_settings().logs_path, record)


@signals.task_failure.connect
def _log_killed_task(sender=None, task_id=None, exception=None, **_):
    # A child killed at the hard time limit never reaches task_postrun; the main process reports it.
    if isinstance(exception, TimeLimitExceeded) and task_id not in _timeouts_logged:
        _timeouts_logged.append(task_id)
        record = task_result_record(
            task_id=task_id, name=sender.name, queue=None, state=states.FAILURE,
            runtime=float(exception.args[0]) if exception.args else None, retries=0, outcome=exception,
        )
        write_task_result(get_settings().logs_path, record)


from app.tasks import recovery as _recovery  # noqa: E402,F401  (restores a dead worker's messages at start)
from app.tasks import watchdog as _watchdog  # noqa: E402,F401  (a full data volume alerted without the broker)
