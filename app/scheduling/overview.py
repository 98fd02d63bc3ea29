"""Every periodic job as operators see it: schedule in words, last and next run and how the last one went, source, drift."""

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from app.core.config import TIMEZONE
from app.core.database import SessionFactory
from app.scheduling.job_policy import DEFAULT_POLICY, STOCK_POLICY, policy_of, stored_policies
from app.scheduling.models import CodeDefinedJob
from app.scheduling.slots import period_after
from app.scheduling.sync import desired_state, drift
from app.services.job_runs import LastRun, last_runs

SHANGHAI = ZoneInfo(TIMEZONE)


@dataclass
class JobRow:
    name: str
    task: str
    schedule: str  # in words
    expression: str  # crontab fields or "every N seconds"
    queue: str | None
    enabled: bool
    last_run: datetime | None
    next_run: datetime | None  # None when disabled
    source: str  # "beat_schedules.py" or "admin"
    drift: list[str]
    replaced_admin_edit: list[str]  # fields of an admin edit that a change in the file overwrote
    last_outcome: str | None = None  # of the latest recorded run: success, failure, skipped_overlap ...
    last_lateness_seconds: float | None = None  # how long after its due time beat sent it
    policy: dict = field(default_factory=lambda: asdict(STOCK_POLICY))  # overlap, missed, grace, jitter
    upcoming: list[datetime] = field(default_factory=list)  # its next runs, when asked for (job_rows' upcoming)
    id: int | None = None  # of its periodic task; None when not in the database yet

    def as_dict(self) -> dict:
        """For JSON: times ISO 8601 in Asia/Shanghai with their offset."""
        row = asdict(self)
        for key in ("last_run", "next_run"):
            row[key] = _iso(row[key])
        row["upcoming"] = [_iso(moment) for moment in self.upcoming]
        return row


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(SHANGHAI).isoformat(timespec="seconds") if moment else None


def _expression_of(c: CrontabSchedule) -> str:
    return f"{c.minute} {c.hour} {c.day_of_month} {c.month_of_year} {c.day_of_week}"


def _words_of(c: CrontabSchedule) -> str:
    return c.human_readable.removesuffix(f" {c.timezone}")


def _expression(task: PeriodicTask) -> str:
    if task.crontab:
        return _expression_of(task.crontab)
    if task.interval:
        return f"every {task.interval.every} {task.interval.period}"
    return str(task.solar or task.clocked)


def _words(task: PeriodicTask) -> str:
    if task.crontab:
        return _words_of(task.crontab)
    return str(task.interval or task.solar or task.clocked)


def due_after(schedule, last: datetime, now: datetime) -> datetime:
    """When `schedule`, last run at `last`, falls due next: in the past while the job is overdue."""
    upcoming = now + schedule.remaining_estimate(last)  # measured from the schedule's own, later, now()
    return (upcoming + timedelta(microseconds=500_000)).replace(microsecond=0)


def fire_times(task: PeriodicTask, now: datetime, count: int = 5) -> list[datetime]:
    """When beat will send the job's next `count` runs (the first now, if it is overdue), whatever its
    schedule type; fewer for a one-off, none when disabled."""
    if not task.enabled:
        return []
    schedule = task.schedule
    times = [max(due_after(schedule, task.last_run_at or task.date_changed or now, now), now)]
    while len(times) < count and (step := period_after(schedule, times[-1])):
        times.append(times[-1] + step)
    return times


def _file_policy(entry: dict):
    try:
        return policy_of(entry)
    except ValueError:  # a bad policy is reported by `check`; beat refuses to start with it
        return DEFAULT_POLICY


NOT_SYNCED = "not in the database yet: beat writes it at its next start"


def _unsynced_row(name: str, entry: dict) -> JobRow:
    """A table entry beat has not written yet, described from the file alone."""
    spec = desired_state(entry)["schedule"]
    if "crontab" in spec:
        cron = CrontabSchedule(**spec["crontab"], timezone=SHANGHAI)
        words, expression = _words_of(cron), _expression_of(cron)
    else:
        words = expression = f"every {int(spec['interval'])} seconds"
    return JobRow(name=name, task=entry["task"], schedule=words, expression=expression,
                  queue=entry["options"]["queue"], enabled=True, last_run=None, next_run=None,
                  source="beat_schedules.py", drift=[NOT_SYNCED], replaced_admin_edit=[],
                  policy=asdict(_file_policy(entry)))


def job_rows(table: dict[str, dict], now: datetime | None = None, tasks=None,
             runs: dict[str, LastRun] | None = None, upcoming: int = 0) -> list[JobRow]:
    """One row per periodic task in the database, and per table entry not written there yet.

    Given `tasks` (a query of some periodic tasks, e.g. one page of them) and the latest `runs`
    of those, the rows of those tasks only, in the query's order. With `upcoming`, each row also
    has that many of its next runs.
    """
    now = now or timezone.now()
    subset = tasks is not None
    tasks = list((PeriodicTask.objects.order_by("name") if tasks is None else tasks)
                 .select_related("crontab", "interval", "solar", "clocked"))
    names = [task.name for task in tasks] if subset else None
    records = CodeDefinedJob.objects.all() if names is None else CodeDefinedJob.objects.filter(name__in=names)
    code_defined = dict(records.values_list("name", "replaced_fields"))
    runs = last_runs(SessionFactory) if runs is None else runs
    policies = stored_policies(names)
    rows = []
    for task in tasks:
        from_file = task.name in code_defined
        ahead = fire_times(task, now, max(upcoming, 1))
        rows.append(JobRow(
            name=task.name,
            task=task.task,
            schedule=_words(task),
            expression=_expression(task),
            queue=task.queue,
            enabled=task.enabled,
            last_run=task.last_run_at,
            next_run=ahead[0] if ahead else None,
            source="beat_schedules.py" if from_file else "admin",
            drift=drift(task, table[task.name]) if from_file and task.name in table else [],
            replaced_admin_edit=code_defined.get(task.name) or [],
            last_outcome=runs[task.name].outcome if task.name in runs else None,
            last_lateness_seconds=runs[task.name].lateness_seconds if task.name in runs else None,
            policy=asdict(policies.get(task.name) or (_file_policy(table[task.name]) if from_file and task.name in table
                                                      else STOCK_POLICY)),
            upcoming=ahead if upcoming else [],
            id=task.pk,
        ))
    if subset:
        return rows
    stored = {row.name for row in rows}
    rows += [_unsynced_row(name, entry) for name, entry in table.items() if name not in stored]
    return sorted(rows, key=lambda row: row.name)


def unsynced_jobs(table: dict[str, dict]) -> list[str]:
    """The table's entries beat has not written into the database yet."""
    stored = set(PeriodicTask.objects.filter(name__in=list(table)).values_list("name", flat=True))
    return sorted(set(table) - stored)


def next_due(table: dict[str, dict], now: datetime | None = None) -> JobRow | None:
    """The enabled job whose next run comes first."""
    upcoming = [row for row in job_rows(table, now) if row.next_run]
    return min(upcoming, key=lambda row: row.next_run, default=None)
