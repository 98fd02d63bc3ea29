"""What `status` and `check` look at: broker, database, migrations, workers, queues, the next job. No printing."""

from dataclasses import dataclass
from datetime import datetime

import redis

from app.core.broker import redis_client
from app.core.config import Settings, masked_url
from app.tasks.queues import Queue

# kombu's Redis transport keeps each priority level of a queue in its own list.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str


def probe_broker(settings: Settings) -> Probe:
    try:
        redis_client(settings.broker_url, socket_timeout=2, socket_connect_timeout=2).ping()
    except (redis.RedisError, OSError) as error:
        return Probe(False, f"{masked_url(settings.broker_url)}: {error}")
    return Probe(True, masked_url(settings.broker_url))


def beat_liveness(settings: Settings):
    """Which beat leads and each beat's last tick, from the broker; None when it does not answer."""
    from app.scheduling.leader import beat_liveness as read_liveness

    try:
        client = redis_client(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
        return read_liveness(client, settings.beat_leader_timeout)
    except (redis.RedisError, OSError):
        return None


def probe_database(settings: Settings) -> Probe:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from app.core.database import engine

    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        return Probe(False, f"{masked_url(settings.sqlalchemy_url)}: {str(error).splitlines()[0]}")
    return Probe(True, masked_url(settings.sqlalchemy_url))


@dataclass(frozen=True)
class DueJob:
    """The enabled job that runs next; name and at are None when there is none (note says why)."""

    name: str | None
    at: datetime | None  # the CLI shows it in Asia/Shanghai
    note: str = ""


def next_due_job() -> DueJob:
    """The job of the schedule table whose next run comes first, read from the database."""
    import app.tasks.celery_app  # noqa: F401  (configures Django)
    from app.scheduling.overview import next_due
    from app.scheduling.table import load_schedule_table

    try:
        row = next_due(load_schedule_table())
    except Exception as error:  # noqa: BLE001 - a fresh database has no tables until beat starts
        return DueJob(None, None, f"schedule not readable yet ({type(error).__name__}); beat creates it at start")
    return DueJob(row.name, row.next_run) if row else DueJob(None, None, "no enabled job")


def pending_migrations() -> list[str]:
    """Migrations not yet applied, Alembic's and Django's (beat and workers apply them at start)."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from app.core.database import engine
    from app.core.migrations import pending_app_revisions

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    django_pending = [f"{migration.app_label}.{migration.name}" for migration, _ in plan]
    return [f"app.{revision}" for revision in pending_app_revisions(engine.sa_engine)] + django_pending


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting in each of the five queues."""
    client = redis_client(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
    pipeline = client.pipeline(transaction=False)
    for queue in Queue:
        for step in PRIORITY_STEPS:
            pipeline.llen(queue.value if step == 0 else f"{queue.value}{PRIORITY_SEPARATOR}{step}")
    lengths = pipeline.execute()
    per_queue = len(PRIORITY_STEPS)
    return {queue.value: sum(lengths[i * per_queue:(i + 1) * per_queue]) for i, queue in enumerate(Queue)}


def worker_queues(timeout: float = 1.5) -> dict[str, list[str]]:
    """Workers answering a ping, with the queues each consumes."""
    from app.tasks.celery_app import app

    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return {worker: sorted(q["name"] for q in queues) for worker, queues in sorted(replies.items())}


def worker_tasks(timeout: float = 1.5) -> dict[str, set[str]]:
    """The tasks each answering worker has registered."""
    from app.tasks.celery_app import app

    replies = app.control.inspect(timeout=timeout).registered() or {}
    return {worker: set(tasks) for worker, tasks in replies.items()}


def ping_workers(timeout: float) -> list[str]:
    """The names of the workers that answered a ping within `timeout` seconds."""
    from app.tasks.celery_app import app

    return sorted(name for reply in app.control.ping(timeout=timeout) or [] for name in reply)
