"""The beat scheduler: django-celery-beat's DatabaseScheduler, synced from the schedule table at
start, sending only while it holds the leader lease, following each job's policy, and recording
every due run.

One sender, by construction: a run is recorded in the transaction that moves its job's last run
forward by compare-and-set (so of two beats that read the same row only one records it), and its
message is pushed by a script that checks the lease in the same Redis (so a beat that lost the
lease cannot publish, however long it stalled). The history's engine bounds every wait of that
transaction well inside the lease.
"""

import logging
import random
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

from celery.beat import SchedulingError
from celery.schedules import schedule as interval_schedule
from celery.utils import uuid
from django.db import DatabaseError, InterfaceError
from django.db import connection as django_connection
from kombu.exceptions import OperationalError as KombuOperationalError
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry
from django_celery_beat.schedulers import logger as stock_logger
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.engine import Connection
from sqlalchemy.orm import sessionmaker

from app.core.broker import redis_client
from app.core.config import TIMEZONE, get_settings
from app.core.database import SessionFactory, make_engine
from app.core.exit_codes import EXIT_CONFIG_REFUSED
from app.core.logging import one_line
from app.core.migrations import migrate_all
from app.models.base import utcnow
from app.scheduling.fenced_transport import NotLeading, fence
from app.scheduling.job_policy import STOCK_POLICY, JobPolicy, policy_of, stored_policies
from app.scheduling.leader import LEASE_KEY, Leadership
from app.scheduling.outages import OutageLog
from app.scheduling.slots import latest_slot, period_after
from app.scheduling.sync import sync_schedule_table
from app.scheduling.table import ScheduleTableError, checked_schedule_table
from app.services.alerts import clear_incident, raise_incident
from app.services.job_runs import (SENDING, SKIPPED_MISSED, BusyWindow, mark_published, mark_unpublished,
                                   record_due_run)

log = logging.getLogger(__name__)

SHANGHAI = ZoneInfo(TIMEZONE)
# How soon a run that could not be recorded or published is tried again.
RETRY_INTERVAL = 1.0
# A wall clock that falls this far behind the monotonic clock between two ticks went back.
CLOCK_JUMP_TOLERANCE = 10.0
CLOCK_INCIDENT = "beat:clock"
# Recording runs can fail on its own (a lock, a statement timeout) while reads still answer: a
# successful read must not end that outage.
RUN_HISTORY = "database (run history)"
# Celery's beat raises SystemExit from its SIGTERM/SIGINT handler, wherever the main thread is.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# A run not started yet blocks the next one (overlap: skip) for this many of its periods at most.
QUEUED_PERIODS = 1.5
# How long a started run of a task without any time limit blocks the next one.
UNLIMITED_RUN = 24 * 3600


class RunRecordingEntry(ModelEntry):
    """A ModelEntry whose last run is written only with its run's record, by compare-and-set.

    `stored_last_run_at` is the row as read: the record moves it forward only if the row still
    holds it, so a stale entry (another beat sent the run, the admin edited or disabled the job)
    records nothing. A last run ahead of the clock (the clock went back) is due again from now.
    """

    next_slot_at: float | None = None  # an interval job's next slot (UTC timestamp), for the heap

    def __init__(self, model, app=None):
        self.stored_last_run_at = model.last_run_at
        super().__init__(model, app=app)
        last, now = self.last_run_at, self._default_now()
        aware = last.tzinfo is not None and now.tzinfo is not None  # naive times: stock's settings, no clock check
        if aware and last > now + timedelta(seconds=CLOCK_JUMP_TOLERANCE):
            log.warning("%s last ran at %s, ahead of this host's clock: due again from now",
                        self.name, f"{last.astimezone(SHANGHAI):%Y-%m-%d %H:%M:%S}")
            self.last_run_at = now

    def advance(self, connection: Connection, last_run_at: datetime, run_count: int) -> bool:
        """Move the job's last run to `last_run_at` on `connection`, only if its row is still as read."""
        table = self.model._meta.db_table
        adapt = django_connection.ops.adapt_datetimefield_value
        unchanged = "last_run_at IS NULL" if self.stored_last_run_at is None else "last_run_at = :expected"
        result = connection.execute(
            text(f"UPDATE {table} SET last_run_at = :last_run_at, total_run_count = :count "
                 f"WHERE id = :id AND enabled AND {unchanged}"),
            {"last_run_at": adapt(last_run_at), "count": run_count, "id": self.model.pk,
             "expected": adapt(self.stored_last_run_at)})
        return result.rowcount == 1


def _caused_by(error: BaseException, kind: type | tuple[type, ...]) -> bool:
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


@dataclass
class DueRun:
    """One due run of one job, kept until it is recorded and published."""

    entry: RunRecordingEntry  # as it was before the run: what the compare-and-set expects
    due_at: datetime
    policy: JobPolicy
    task_id: str = field(default_factory=uuid)
    recorded: bool = False

    def describe(self) -> str:
        return f"{self.entry.name} due {self.due_at.astimezone(SHANGHAI):%Y-%m-%d %H:%M:%S}"


class ScheduleTableScheduler(DatabaseScheduler):
    """DatabaseScheduler whose code-defined jobs come from `beat_schedules.py`, one beat sending.

    Stock DatabaseScheduler re-saves `beat_schedule` at every start (reverting admin edits) and
    never disables an entry removed from it; this syncs the table instead, before the first tick.
    Celery's default `celery.backend_cleanup` entry is not installed: `cleanup-expired-results`
    runs the backend's cleanup already.

    Any number of these may run; only the holder of the leader lease sends. Every schedule type
    the admin offers (interval, crontab, solar, clocked) is sent as stock sends it, and whatever
    goes wrong with one entry is logged with its name and skips that entry only.
    """

    Entry = RunRecordingEntry

    def __init__(self, *args, table: dict[str, dict] | None = None, **kwargs):
        """`table` replaces beat_schedules.py's BEAT_SCHEDULE (for tests and benchmarks)."""
        self.table = table
        self.policies: dict[str, JobPolicy] = {}  # of beat_schedules.py's jobs, as the file gives them
        self.saved_policies: dict[str, JobPolicy] = {}
        self._reserved: dict[str, DueRun] = {}
        self._pending: list[DueRun] = []
        self._published: list[tuple[str, datetime, datetime]] = []
        self.outages = OutageLog(log)
        self._clock_reading: tuple[float, float] | None = None
        self._clock_incident_until: float | None = None
        # Celery builds a second, lazy scheduler for its start-up banner before the one that runs;
        # a filter left by it would swallow stock's records before this one's counts them.
        for stale in [installed for installed in stock_logger.filters if isinstance(installed, OutageLog)]:
            stock_logger.removeFilter(stale)
        stock_logger.addFilter(self.outages)
        super().__init__(*args, **kwargs)
        settings = get_settings()
        client = redis_client(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
        self.leadership = Leadership(client, settings.beat_leader_timeout, self.max_interval)
        self.max_interval = self.leadership.tick_interval
        # The run history is written through an engine of its own whose waits end well inside the lease.
        self._history_engine = make_engine(settings.sqlalchemy_url, wait_limit_ms=max(500, self.leadership.ttl_ms // 3),
                                           network_timeout=settings.network_timeout)
        self.history = sessionmaker(bind=self._history_engine, expire_on_commit=False)
        self._connect_history()

    def _connect_history(self) -> None:
        """Open the history's connection at start, not on the first due run's time."""
        try:
            self._history_engine.connect().close()
        except SQLAlchemyError as error:
            self.outages.failed("database", error)

    def setup_schedule(self):
        try:
            table = checked_schedule_table(self.app, self.table)
            migrate_all()
            sync_schedule_table(table)
        except ScheduleTableError as error:
            log.critical("beat not started: %s", error)
            raise SystemExit(EXIT_CONFIG_REFUSED) from None
        except Exception as error:
            # One line, then exit 1: raised on, the traceback Python prints at exit would reach the
            # log through Celery's stdout/stderr redirection one write() (a word, a "^") per line.
            log.debug("beat not started", exc_info=True)
            log.critical("beat not started: %s", one_line(error))
            raise SystemExit(1) from None
        self.policies = {name: policy_of(entry) for name, entry in table.items()}
        self._take_change_mark()

    @cached_property
    def connection(self):
        """Beat's publishing connection: its pushes are fenced by the leader lease."""
        return fence(self.app.connection_for_write(), LEASE_KEY, self.leadership.identity)

    def tick(self, *args, **kwargs):
        self._watch_clock()
        was_leading = self.leadership.leading
        if not self._renewed_recently() and not self.leadership.renew():
            return self.max_interval
        if not was_leading:
            self._reload_schedule()
        self._pending = [run for run in self._pending if not self._dispatch_safely(run, self.producer)]
        interval = super().tick(*args, **kwargs)
        if interval:
            self._note_published()
        return min(interval, RETRY_INTERVAL) if self._pending else interval

    def _renewed_recently(self) -> bool:
        """A leader ticking in quick succession renews at most twice per tick interval; the lease
        outlives that many times over, and every send checks it anyway."""
        leadership = self.leadership
        return leadership.leading and time.monotonic() - leadership.renewed_at < leadership.tick_interval / 2

    def _reload_schedule(self) -> None:
        """Read every entry afresh: the last runs of a previous leader are in the database, not here."""
        self._take_change_mark()
        self._schedule = self.all_as_schedule()
        self._initial_read = False
        self._last_full_sync = datetime.now()
        self._heap = None
        self._reserved.clear()

    def _take_change_mark(self) -> None:
        """Note the admin's latest change before reading entries, so any later one is noticed at the
        next tick (stock notes it only at its first check, missing a change made before that)."""
        try:
            self._last_timestamp = self.Changes.last_change()
        except (DatabaseError, InterfaceError) as error:
            self.outages.failed("database", error)

    def all_as_schedule(self):
        """Every enabled entry, read afresh; one that cannot be scheduled is named and left out."""
        failures = self.outages.failures("database")
        try:
            models = self.enabled_models()
            self.saved_policies = stored_policies()
        except (DatabaseError, InterfaceError) as error:
            self.outages.failed("database", error)
            self._initial_read = self._schedule is None  # nothing read yet: read at the next tick
            return self._schedule or {}
        if failures:
            self.outages.recovered("database")
        schedule = {}
        for model in models:
            try:
                schedule[model.name] = self.Entry(model, app=self.app)
            except Exception as error:  # noqa: BLE001 - one bad row must never stop the others
                log.error("%s cannot be scheduled (%s: %s); left out until it is fixed",
                          model.name, type(error).__name__, error)
        return schedule

    def schedule_changed(self):
        failures = self.outages.failures("database")
        changed = super().schedule_changed()
        if failures and self.outages.failures("database") == failures:
            self.outages.recovered("database")
        return changed

    def policy_of(self, name: str) -> JobPolicy:
        """The saved policy; a job nobody saved one for follows its file entry, or stock's ways."""
        return self.saved_policies.get(name) or self.policies.get(name) or STOCK_POLICY

    def reserve(self, entry):
        """The entry as its due run will leave it, last run at the run's slot. Unlike stock, nothing
        is marked for `sync()` to save later, unconditionally: the run's record writes it, or nobody
        does (a job disabled meanwhile keeps its cleared last run)."""
        try:
            run = DueRun(entry, latest_slot(entry.schedule, entry.last_run_at, self.app.now()), self.policy_of(entry.name))
        except Exception:  # noqa: BLE001 - one entry's schedule must never stop the others
            log.exception("%s: cannot tell when it fell due; not sent, checked again later", entry.name)
            return entry
        self._reserved[entry.name] = run
        entry.model.last_run_at, entry.model.total_run_count = run.due_at, entry.total_run_count + 1
        following = self.Entry(entry.model, app=self.app)
        if isinstance(entry.schedule, interval_schedule):
            following.next_slot_at = (run.due_at + entry.schedule.run_every).timestamp()
        return following

    def _when(self, entry, next_time_to_run, *args, **kwargs):
        """When the heap next looks at `entry`. Stock puts a sent interval job a whole period after
        the send: every late send made the runs after it as late, the delays adding up until a slot
        was skipped. Here it is looked at at its next slot."""
        next_slot_at = getattr(entry, "next_slot_at", None)
        if next_time_to_run and next_slot_at is not None:
            entry.next_slot_at = None
            return next_slot_at
        return super()._when(entry, next_time_to_run, *args, **kwargs)

    def apply_entry(self, entry, producer=None):
        run = self._reserved.pop(entry.name, None)
        if run is None:
            return
        if not self.leadership.renew():  # recording a run it then cannot push would lose that run
            log.warning("%s not sent: this beat no longer holds the leader lease", run.describe())
            return
        waiting = next((old for old in self._pending if old.entry.name == entry.name and not old.recorded), None)
        if waiting is not None:  # still unrecorded after an outage: one run, at the latest slot
            waiting.due_at = run.due_at
            return
        if not self._dispatch_safely(run, producer):
            self._pending.append(run)

    def _dispatch_safely(self, run: DueRun, producer) -> bool:
        """`_dispatch`, with anything unforeseen logged under the job's name and that run given up.

        A stop arriving between the record's commit and the push would leave the run recorded (its
        slot taken) and never sent: it waits until this run is through.
        """
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return self._dispatch(run, producer)
        except Exception:  # noqa: BLE001 - one entry's failure must never stop the others
            log.exception("%s not sent", run.describe())
            return True
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _dispatch(self, run: DueRun, producer) -> bool:
        """Record and publish (or skip) one due run; False when it has to be tried again."""
        if not run.recorded:
            try:
                outcome = self._record(run, self.app.now())
            except SQLAlchemyError as error:
                self.outages.failed(RUN_HISTORY, error)
                return False
            self.outages.recovered(RUN_HISTORY)
            if outcome is None:
                log.info("%s not sent: the job changed since this beat read it (another beat sent it, or "
                         "it was edited); reading the schedule again", run.describe())
                self._reload_schedule()
                return True
            if outcome != SENDING:
                log.info("%s skipped: %s", run.describe(), outcome)
                return True
            run.recorded = True
        return self._publish(run, producer)

    def _record(self, run: DueRun, now: datetime) -> str | None:
        """Write the run's history row and advance its job; its outcome, or None when the job moved on."""
        policy = run.policy
        missed = policy.missed == "skip" and (now - run.due_at).total_seconds() > policy.grace
        busy = self._busy_window(run, now) if policy.overlap == "skip" and not missed else None
        if busy is not None:
            # A run sent late earlier in this burst must count as sent now, not at its old due time.
            self._note_published()

        def advance(connection: Connection) -> bool:
            return run.entry.advance(connection, run.due_at, run.entry.total_run_count + 1)

        return record_due_run(self._history_engine, run.entry.name, run.due_at, now, advance=advance,
                              outcome=SKIPPED_MISSED if missed else SENDING,
                              task_id=None if missed else run.task_id, unless_busy=busy)

    def _busy_window(self, run: DueRun, now: datetime) -> BusyWindow:
        """A started run counts until its time limit; one not started, until it expires, at most
        QUEUED_PERIODS periods: a lost message costs one run of the job, not more."""
        task = self.app.tasks.get(run.entry.task)
        limit = getattr(task, "time_limit", None) or self.app.conf.task_time_limit or UNLIMITED_RUN
        expires = run.entry.options.get("expires")
        period = period_after(run.entry.schedule, run.due_at)
        bounds = [seconds for seconds in (expires if isinstance(expires, (int, float)) else None,
                                          period.total_seconds() if period else None) if seconds]
        queued = QUEUED_PERIODS * min(bounds) if bounds else limit
        return BusyWindow(started_since=now - timedelta(seconds=limit),
                          queued_since=now - timedelta(seconds=queued + run.policy.jitter))

    def _publish(self, run: DueRun, producer) -> bool:
        """Send the recorded run; False when the broker failed and it has to be tried again."""
        entry, options = run.entry, run.entry.options
        entry.options = {**options, "task_id": run.task_id}
        if run.policy.jitter:
            entry.options["countdown"] = random.uniform(0, run.policy.jitter)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except SchedulingError as error:
            cause = error.__context__ or error
            if _caused_by(error, NotLeading):
                log.warning("%s not sent: another beat took the leader lease after it was recorded; "
                            "marked lost", run.describe())
                self._note(mark_unpublished, run.task_id, "not published: the beat that recorded it lost the lease")
                return True
            if not _caused_by(error, (*self.connection.connection_errors, KombuOperationalError, OSError)):
                log.error("%s not sent: %s; marked lost", run.describe(), one_line(cause))
                self._note(mark_unpublished, run.task_id, f"not published: {one_line(cause)}")
                return True
            self.outages.failed("broker", cause)
            return False
        finally:
            entry.options = options
        self.outages.recovered("broker")
        sent_at = utcnow()
        log.info("Scheduler: Sending due task %s (%s), due %s, %.1f s late", entry.name, entry.task,
                 f"{run.due_at.astimezone(SHANGHAI):%H:%M:%S}", (sent_at - run.due_at).total_seconds())
        self._published.append((run.task_id, run.due_at, sent_at))
        if entry.model.one_off:
            self._disable_one_off(entry)
        return True

    def _disable_one_off(self, entry) -> None:
        """A one-off is disabled once sent, as stock does at its next check."""
        model = entry.model
        model.enabled, model.total_run_count, model.no_changes = False, 0, False
        try:
            model.save()
        except DatabaseError as error:
            log.warning("%s: one-off not disabled yet (%s); the next check disables it", entry.name, error)

    def _note_published(self) -> None:
        """Write the publish times of the runs sent since the last idle tick, in one transaction;
        kept for the next idle tick when the history cannot be written now (a lock, say)."""
        published, self._published = self._published, []
        if published and not self._note(mark_published, published):
            self._published[:0] = published

    def _note(self, record, *args) -> bool:
        """Bookkeeping of the history after a publish: a database error must not send a run twice."""
        try:
            record(self.history, *args)
        except SQLAlchemyError as error:
            log.warning("run history not updated: %s", error)
            return False
        return True

    def _watch_clock(self) -> None:
        """Notice the host's wall clock going back: alert, and let every job fall due from now."""
        reading = time.time(), time.monotonic()
        previous, self._clock_reading = self._clock_reading, reading
        if self._clock_incident_until is not None and reading[1] >= self._clock_incident_until:
            self._clock_incident_until = None
            clear_incident(SessionFactory, CLOCK_INCIDENT, webhook_url=get_settings().alert_webhook_url)
        if previous is None:
            return
        went_back = (reading[1] - previous[1]) - (reading[0] - previous[0])
        if went_back <= CLOCK_JUMP_TOLERANCE:
            return
        summary = (f"the clock of beat's host went back by {went_back:.0f} s: jobs fall due again from the "
                   "new time (runs of the repeated interval are sent again); check the host's time sync")
        log.critical(summary)
        raise_incident(SessionFactory, CLOCK_INCIDENT, "critical", summary, webhook_url=get_settings().alert_webhook_url)
        self._clock_incident_until = reading[1] + went_back
        self._reload_schedule()

    def close(self):
        self._note_published()
        self.leadership.release()
        stock_logger.removeFilter(self.outages)
        super().close()
        self._history_engine.dispose()
