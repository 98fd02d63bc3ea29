"""Sync the schedule table (`beat_schedules.py`) into django-celery-beat's tables."""

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from zoneinfo import ZoneInfo

from celery.schedules import crontab, schedule as interval_schedule
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from app.core.config import TIMEZONE
from app.core.locks import SCHEDULE_SYNC, transaction_lock
from app.scheduling.job_policy import policy_of
from app.scheduling.models import CodeDefinedJob, SchedulePolicy

log = logging.getLogger(__name__)

# The option keys django-celery-beat's DatabaseScheduler stores; any other key would be dropped.
KEPT_OPTION_KEYS = frozenset({"queue", "exchange", "routing_key", "priority", "headers", "expire_seconds"})
ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "policy"})


class ScheduleEntryError(ValueError):
    """An entry of the schedule table cannot be stored as a periodic task."""


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    replaced_overrides: dict[str, list[str]] = field(default_factory=dict)  # job -> fields an admin had edited


def crontab_fields(entry_schedule: crontab) -> dict[str, str]:
    return {
        "minute": str(entry_schedule._orig_minute),
        "hour": str(entry_schedule._orig_hour),
        "day_of_week": str(entry_schedule._orig_day_of_week),
        "day_of_month": str(entry_schedule._orig_day_of_month),
        "month_of_year": str(entry_schedule._orig_month_of_year),
    }


def _schedule_spec(entry_schedule) -> dict:
    if isinstance(entry_schedule, crontab):
        return {"crontab": crontab_fields(entry_schedule)}
    if isinstance(entry_schedule, timedelta):
        return {"interval": entry_schedule.total_seconds()}
    if isinstance(entry_schedule, interval_schedule):
        return {"interval": entry_schedule.run_every.total_seconds()}
    raise ScheduleEntryError(f"unsupported schedule {entry_schedule!r}: use crontab(...) or a timedelta")


def validate_entry(name: str, entry: dict) -> None:
    """Raise ScheduleEntryError naming the entry when it would be stored wrongly or not at all."""
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise ScheduleEntryError(f"{name}: unknown keys {sorted(unknown)}")
    if not isinstance(entry.get("task"), str):
        raise ScheduleEntryError(f"{name}: 'task' must be the dotted task name as a string")
    dropped = set(entry.get("options", {})) - KEPT_OPTION_KEYS
    if dropped:
        raise ScheduleEntryError(f"{name}: options {sorted(dropped)} would be dropped by the database scheduler")
    if "queue" not in entry.get("options", {}):
        raise ScheduleEntryError(f"{name}: options must name a queue")
    try:
        _schedule_spec(entry["schedule"])
    except ScheduleEntryError as error:
        raise ScheduleEntryError(f"{name}: {error}") from None


def entry_fingerprint(entry: dict) -> str:
    """A digest of everything in an entry, so a change in the file is told from an admin edit."""
    canonical = {
        "task": entry["task"],
        "schedule": _schedule_spec(entry["schedule"]),
        "args": entry.get("args", []),
        "kwargs": entry.get("kwargs", {}),
        "options": entry.get("options", {}),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def desired_state(entry: dict) -> dict:
    """The comparable fields an entry asks for, without touching the database."""
    options = entry.get("options", {})
    return {
        "task": entry["task"],
        "schedule": _schedule_spec(entry["schedule"]),
        "args": entry.get("args", []),
        "kwargs": entry.get("kwargs", {}),
        "queue": options.get("queue"),
        "expire_seconds": options.get("expire_seconds"),
        "enabled": True,
    }


def stored_state(task: PeriodicTask) -> dict:
    """The same fields as `desired_state`, read from a periodic task row."""
    if task.crontab is not None:
        schedule = {"crontab": {f: getattr(task.crontab, f) for f in
                                ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")}}
    elif task.interval is not None:
        schedule = {"interval": float(timedelta(**{task.interval.period: task.interval.every}).total_seconds())}
    else:
        schedule = {"other": str(task.solar or task.clocked)}
    return {
        "task": task.task,
        "schedule": schedule,
        "args": json.loads(task.args or "[]"),
        "kwargs": json.loads(task.kwargs or "{}"),
        "queue": task.queue,
        "expire_seconds": task.expire_seconds,
        "enabled": task.enabled,
    }


# A pause (`enabled` off, from `pause` or the admin) is no edit of the entry: it stands whatever the
# file's entry says or later says, until `resume`. An entry removed from the file is disabled too, but
# its record goes, so the entry added back starts enabled.
PAUSE_FIELD = "enabled"


def drift(task: PeriodicTask, entry: dict) -> list[str]:
    """The fields of a code-defined job that the database holds differently from the file (a pause is none)."""
    desired, stored = desired_state(entry), stored_state(task)
    return [field for field in desired if field != PAUSE_FIELD and desired[field] != stored[field]]


def _first_or_create(model, **fields):
    """The oldest row with `fields`, created if there is none. Not get_or_create: duplicate rows
    (left by concurrent syncs before they took the lock) must not stop beat with MultipleObjectsReturned."""
    return model.objects.filter(**fields).order_by("id").first() or model.objects.create(**fields)


def _schedule_model_fields(entry_schedule) -> dict:
    fields = {"crontab": None, "interval": None, "solar": None, "clocked": None}
    spec = _schedule_spec(entry_schedule)
    if "crontab" in spec:
        fields["crontab"] = _first_or_create(CrontabSchedule, **spec["crontab"], timezone=ZoneInfo(TIMEZONE))
    else:
        fields["interval"] = _first_or_create(IntervalSchedule, every=int(spec["interval"]),
                                              period=IntervalSchedule.SECONDS)
    return fields


def periodic_task_fields(entry: dict) -> dict:
    options = entry.get("options", {})
    return {
        **_schedule_model_fields(entry["schedule"]),
        "task": entry["task"],
        "args": json.dumps(entry.get("args", [])),
        "kwargs": json.dumps(entry.get("kwargs", {})),
        "queue": options.get("queue"),
        "exchange": options.get("exchange"),
        "routing_key": options.get("routing_key"),
        "priority": options.get("priority"),
        "headers": json.dumps(options.get("headers", {})),
        "expire_seconds": options.get("expire_seconds"),
        "one_off": False,
        "enabled": True,
        "description": "defined in app/tasks/beat_schedules.py",
    }


def _overwritten_admin_edits(name: str, record: CodeDefinedJob | None, entry: dict) -> list[str]:
    """Fields edited in the admin since the last sync that the file's new `entry` sets otherwise."""
    if record is None or not record.synced_state:
        return []
    stored = stored_state(PeriodicTask.objects.select_related("crontab", "interval").get(name=name))
    desired = desired_state(entry)
    return [key for key, value in record.synced_state.items()
            if key != PAUSE_FIELD and value != stored.get(key) != desired.get(key)]


def _sync_policy(name: str, entry: dict, record: CodeDefinedJob) -> None:
    """Save the entry's policy for beat and the admin when the file's differs from the last one synced.

    Like the other fields, a policy edited in the admin stands until the entry's policy changes
    in the file (the policy is not part of the fingerprint, so adding it rewrote no admin edits).
    """
    policy = asdict(policy_of(entry))
    if record.synced_state.get("policy") == policy:
        return
    SchedulePolicy.objects.update_or_create(task=PeriodicTask.objects.get(name=name), defaults=policy)
    record.synced_state = {**record.synced_state, "policy": policy}
    record.save(update_fields=["synced_state"])


def sync_schedule_table(table: dict[str, dict]) -> SyncReport:
    """Make the database match the table: create and update changed entries, disable removed ones.

    An entry whose file text is unchanged since the last sync is left alone, so an edit made
    in the admin stands until the entry itself is changed in the file. One sync at a time: beats
    starting together would otherwise each create the same schedule rows.
    """
    for name, entry in table.items():
        validate_entry(name, entry)
    report = SyncReport()
    with transaction.atomic():
        transaction_lock(SCHEDULE_SYNC)  # a row lock would lock nothing on an empty table
        records = {record.name: record for record in CodeDefinedJob.objects.all()}
        for name, entry in table.items():
            fingerprint = entry_fingerprint(entry)
            record = records.pop(name, None)
            exists = PeriodicTask.objects.filter(name=name).exists()
            if record is not None and exists and record.fingerprint == fingerprint:
                report.unchanged.append(name)
                _sync_policy(name, entry, record)
                continue
            replaced = _overwritten_admin_edits(name, record, entry) if exists else []
            fields = periodic_task_fields(entry)
            if record is not None and exists and not PeriodicTask.objects.get(name=name).enabled:
                fields[PAUSE_FIELD] = False  # paused: the changed entry applies from `resume` on
            task, _ = PeriodicTask.objects.update_or_create(name=name, defaults=fields)
            record, _ = CodeDefinedJob.objects.update_or_create(name=name, defaults={
                "fingerprint": fingerprint, "synced_state": stored_state(task), "replaced_fields": replaced})
            _sync_policy(name, entry, record)
            (report.updated if exists else report.created).append(name)
            if replaced:
                report.replaced_overrides[name] = replaced
                log.warning("%s: the changed entry in beat_schedules.py replaced an admin edit of %s",
                            name, ", ".join(replaced))
        for name, record in records.items():
            PeriodicTask.objects.filter(name=name).update(enabled=False)
            record.delete()
            report.disabled.append(name)
        if report.disabled:
            PeriodicTasks.update_changed()
    log.info(
        "schedule table synced: %d created, %d updated, %d unchanged, %d disabled (%s)",
        len(report.created), len(report.updated), len(report.unchanged), len(report.disabled),
        ", ".join(report.disabled) or "none",
    )
    return report


def reset_schedule(table: dict[str, dict], everything: bool = False) -> tuple[int, SyncReport]:
    """Delete the code-defined jobs (every job with `everything`) and recreate them from `table`.

    Run history (last run, run count) of the deleted rows is lost; admin-created jobs survive
    unless `everything`.
    """
    with transaction.atomic():
        transaction_lock(SCHEDULE_SYNC)
        rows = PeriodicTask.objects.all()
        if not everything:
            code_defined = set(CodeDefinedJob.objects.values_list("name", flat=True)) | set(table)
            rows = rows.filter(name__in=code_defined)
        deleted = rows.count()
        rows.delete()
        CodeDefinedJob.objects.all().delete()
        PeriodicTasks.update_changed()
        return deleted, sync_schedule_table(table)
