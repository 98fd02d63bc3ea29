"""What an operator does to one job: pause it, resume it, run it now. No printing.

A pause is the job's `enabled` off, as the admin's checkbox sets it: a running beat reads the
schedule again within a tick, and the compare-and-set that records each due run refuses a disabled
job, so not even a run beat was about to send goes out. The sync of beat_schedules.py keeps a
paused code-defined job paused, even when its entry changes in the file (app/scheduling/sync.py).
Django's save() of a disabled job clears its last run, so a resumed job runs at its next slot
from the resume on, without catching up the runs of the pause.
"""

import json
from dataclasses import dataclass

from django.db import transaction
from django_celery_beat.models import PeriodicTask


class UnknownJob(LookupError):
    """No periodic task of that name in the database."""


@dataclass(frozen=True)
class JobCall:
    """What one run of a job sends: the task, its arguments and its queue."""

    name: str
    task: str
    args: list
    kwargs: dict
    queue: str | None


@dataclass(frozen=True)
class PauseChange:
    name: str
    paused: bool  # as the job is now
    changed: bool  # False when it already was


def _job(name: str) -> PeriodicTask:
    task = PeriodicTask.objects.select_for_update().filter(name=name).first()
    if task is None:
        raise UnknownJob(name)
    return task


def set_paused(name: str, paused: bool) -> PauseChange:
    """Pause (or resume) job `name`; UnknownJob when the database has no such job."""
    with transaction.atomic():
        task = _job(name)
        if task.enabled != paused:
            return PauseChange(name, paused, changed=False)
        task.enabled = not paused
        task.save()  # also marks the schedule changed, which a running beat checks every tick
    return PauseChange(name, paused, changed=True)


def stored_call(name: str) -> JobCall:
    """The call job `name` makes, as the database holds it (an admin edit included)."""
    task = PeriodicTask.objects.filter(name=name).first()
    if task is None:
        raise UnknownJob(name)
    return JobCall(name, task.task, json.loads(task.args or "[]"), json.loads(task.kwargs or "{}"), task.queue)


def entry_call(name: str, entry: dict) -> JobCall:
    """The call an entry of beat_schedules.py makes."""
    return JobCall(name, entry["task"], entry.get("args", []), entry.get("kwargs", {}), entry["options"]["queue"])


def send_now(celery_app, call: JobCall):
    """Send one run of the job now; its AsyncResult. The job's name goes in the header beat's
    messages carry, so the worker records the run in the job's history (with no due time)."""
    return celery_app.send_task(call.task, args=call.args, kwargs=call.kwargs, queue=call.queue,
                                headers={"periodic_task_name": call.name})
