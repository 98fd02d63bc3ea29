"""The beat scheduler: django-celery-beat's DatabaseScheduler, synced from the schedule table at
start, sending only while it holds the leader lease, following each job's policy, and recording
every due run."""

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from celery.beat import SchedulingError
from celery.utils import uuid
from django.db import connection
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.core.broker import redis_client
from app.core.config import TIMEZONE, get_settings
from app.core.database import SessionFactory
from app.core.migrations import migrate_all
from app.models.base import utcnow
from app.scheduling.job_policy import DEFAULT_POLICY, JobPolicy, policy_of
from app.scheduling.leader import Leadership
from app.scheduling.slots import latest_slot
from app.scheduling.sync import sync_schedule_table
from app.scheduling.table import ScheduleTableError, checked_schedule_table
from app.services.job_runs import SENT, SKIPPED_MISSED, mark_sent, mark_unsent, record_due_run

log = logging.getLogger(__name__)

SHANGHAI = ZoneInfo(TIMEZONE)
# How soon a run that could not be recorded or published is tried again.
RETRY_INTERVAL = 1.0


class RunRecordingEntry(ModelEntry):
    """A ModelEntry whose last run is written with one UPDATE (stock `save()` fetches the row and
    saves all of it, touching `date_changed`), and can be written inside the run's history record."""

    def save(self):
        type(self.model)._default_manager.filter(pk=self.model.pk).update(
            last_run_at=self.model.last_run_at, total_run_count=self.model.total_run_count)

    def write_last_run(self, session: Session) -> None:
        """The same UPDATE through `session`: one transaction records a due run and advances the job.

        A beat taking over reads this last run; without it, it could send an interval job's run
        again under a due time computed from an older one.
        """
        table = self.model._meta.db_table
        session.execute(
            text(f"UPDATE {table} SET last_run_at = :last_run_at, total_run_count = :count WHERE id = :id"),
            {"last_run_at": connection.ops.adapt_datetimefield_value(self.model.last_run_at),
             "count": self.model.total_run_count, "id": self.model.pk})


@dataclass
class DueRun:
    """One due run of one job, kept until it is recorded and published."""

    entry: ModelEntry
    due_at: datetime
    policy: JobPolicy
    task_id: str = field(default_factory=uuid)
    recorded: bool = False
    publish_failed: bool = False  # its row says `sending` until a retry publishes it

    def describe(self) -> str:
        return f"{self.entry.name} due {self.due_at.astimezone(SHANGHAI):%Y-%m-%d %H:%M:%S}"


class ScheduleTableScheduler(DatabaseScheduler):
    """DatabaseScheduler whose code-defined jobs come from `beat_schedules.py`, one beat sending.

    Stock DatabaseScheduler re-saves `beat_schedule` at every start (reverting admin edits) and
    never disables an entry removed from it; this syncs the table instead, before the first tick.
    Celery's default `celery.backend_cleanup` entry is not installed: `cleanup-expired-results`
    runs the backend's cleanup already.

    Any number of these may run; only the holder of the leader lease sends, and it checks the
    lease again before every send. Each due run is recorded in `job_runs` under (job, due time)
    before it is published, so no two beats ever send the same run.
    """

    Entry = RunRecordingEntry

    def __init__(self, *args, table: dict[str, dict] | None = None, **kwargs):
        """`table` replaces beat_schedules.py's BEAT_SCHEDULE (for tests and benchmarks)."""
        self.table = table
        self.policies: dict[str, JobPolicy] = {}
        self._pending: list[DueRun] = []
        super().__init__(*args, **kwargs)
        settings = get_settings()
        client = redis_client(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
        self.leadership = Leadership(client, settings.beat_leader_timeout, self.max_interval)
        self.max_interval = self.leadership.tick_interval

    def setup_schedule(self):
        try:
            table = checked_schedule_table(self.app, self.table)
        except ScheduleTableError as error:
            log.critical("beat not started: %s", error)
            raise SystemExit(1) from None
        migrate_all()
        sync_schedule_table(table)
        self.policies = {name: policy_of(entry) for name, entry in table.items()}

    def tick(self, *args, **kwargs):
        was_leading = self.leadership.leading
        if not self._renewed_recently() and not self.leadership.renew():
            return self.max_interval
        if not was_leading:
            self._reload_schedule()
        self._pending = [run for run in self._pending if not self._dispatch(run, self.producer)]
        interval = super().tick(*args, **kwargs)
        return min(interval, RETRY_INTERVAL) if self._pending else interval

    def _renewed_recently(self) -> bool:
        """A leader ticking in quick succession renews at most twice per tick interval; the lease
        outlives that many times over, and every send renews it anyway."""
        leadership = self.leadership
        return leadership.leading and time.monotonic() - leadership.renewed_at < leadership.tick_interval / 2

    def _reload_schedule(self) -> None:
        """Read every entry afresh: the last runs of a previous leader are in the database, not here."""
        self._schedule = self.all_as_schedule()
        self._initial_read = False
        self._last_full_sync = datetime.now()
        self._heap = None

    def apply_entry(self, entry, producer=None):
        if not self.leadership.renew():
            log.warning("%s not sent: this beat no longer holds the leader lease", entry.name)
            return
        run = DueRun(entry, latest_slot(entry.schedule, entry.last_run_at, self.app.now()),
                     self.policies.get(entry.name, DEFAULT_POLICY))
        if not self._dispatch(run, producer):
            self._pending.append(run)

    def _dispatch(self, run: DueRun, producer) -> bool:
        """Record and publish (or skip) one due run; False when it has to be tried again."""
        try:
            if not run.recorded and not self._record(run, self.app.now()):
                return True
        except SQLAlchemyError as error:
            log.error("%s not recorded yet (%s); trying again", run.describe(), error)
            return False
        try:
            self._publish(run, producer)
        except SchedulingError as error:
            log.error("%s not sent yet (%s); trying again", run.describe(), error)
            self._note(mark_unsent, run.task_id)
            run.publish_failed = True
            return False
        if run.publish_failed:
            self._note(mark_sent, run.task_id, run.due_at, utcnow())
        return True

    def _note(self, record, *args) -> None:
        """Bookkeeping of the history after a publish: a database error must not send a run twice."""
        try:
            record(SessionFactory, *args)
        except SQLAlchemyError as error:
            log.warning("run history not updated: %s", error)

    def _record(self, run: DueRun, now: datetime) -> bool:
        """Write the run's history row; False when it is skipped or another beat recorded it."""
        policy = run.policy
        missed = policy.missed == "skip" and (now - run.due_at).total_seconds() > policy.grace
        busy_since = now - self._run_horizon(run) if policy.overlap == "skip" and not missed else None
        outcome = record_due_run(SessionFactory, run.entry.name, run.due_at, now,
                                 outcome=SKIPPED_MISSED if missed else SENT, task_id=None if missed else run.task_id,
                                 unless_running_since=busy_since, alongside=run.entry.write_last_run)
        if outcome is None:
            log.info("%s already sent by another beat", run.describe())
            return False
        if outcome != SENT:
            log.info("%s skipped: %s", run.describe(), outcome)
            return False
        run.recorded = True
        return True

    def _run_horizon(self, run: DueRun) -> timedelta:
        """How long an unfinished run may still be queued or running before it no longer counts."""
        task = self.app.tasks.get(run.entry.task)
        limit = getattr(task, "time_limit", None) or self.app.conf.task_time_limit or 0
        expires = run.entry.options.get("expires")
        queued = expires if isinstance(expires, (int, float)) else 0
        return timedelta(seconds=limit + queued + run.policy.jitter)

    def _publish(self, run: DueRun, producer) -> None:
        entry, options = run.entry, run.entry.options
        entry.options = {**options, "task_id": run.task_id}
        if run.policy.jitter:
            entry.options["countdown"] = random.uniform(0, run.policy.jitter)
        late = (self.app.now() - run.due_at).total_seconds()
        log.info("Scheduler: Sending due task %s (%s), due %s, %.1f s late", entry.name, entry.task,
                 f"{run.due_at.astimezone(SHANGHAI):%H:%M:%S}", late)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        finally:
            entry.options = options

    def close(self):
        self.leadership.release()
        super().close()
