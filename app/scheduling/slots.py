"""When a schedule fell due: the slot a due run stands for, for every schedule type the admin offers.

Every beat derives a job's slot from the job's stored last run and the clock, so two beats that
read the same row name the same slot.
"""

from datetime import datetime, timedelta

from celery.schedules import crontab, schedule as interval, solar
from django_celery_beat.clockedschedule import clocked

# Scanning crontab slots starts no further back than this; older ones are coalesced anyway.
SCAN_BACK = timedelta(days=2)


def _next_crontab_slot(schedule: crontab, after: datetime) -> datetime:
    tz = getattr(schedule, "tz", None)
    start, ends_in, _ = schedule.remaining_delta(after.astimezone(tz) if tz else after)
    return start + ends_in


def _latest_crontab_slot(schedule: crontab, last_run_at: datetime, now: datetime) -> datetime:
    cursor = max(last_run_at, now - SCAN_BACK)
    slot = _next_crontab_slot(schedule, cursor)
    if slot > now and cursor > last_run_at:  # a rare schedule: its last slot is further back
        slot = _next_crontab_slot(schedule, last_run_at)
    while (following := _next_crontab_slot(schedule, slot)) <= now:
        slot = following
    return slot


def _next_solar_event(schedule: solar, after: datetime) -> datetime:
    # remaining_estimate() measures from the schedule's own now(); add it back to get the event.
    now = schedule.maybe_make_aware(schedule.now())
    return (now + schedule.remaining_estimate(after)).replace(microsecond=0)


def _latest_solar_event(schedule: solar, last_run_at: datetime, now: datetime) -> datetime:
    event = _next_solar_event(schedule, max(last_run_at, now - SCAN_BACK))
    while event <= now and (following := _next_solar_event(schedule, event + timedelta(seconds=1))) <= now:
        event = following
    return min(event, now)


def latest_slot(schedule, last_run_at: datetime, now: datetime) -> datetime:
    """The latest time at or before `now` that `schedule` fell due after `last_run_at`.

    Runs missed in between are coalesced into this one. A crontab's slot does not depend on
    `last_run_at` at all; an interval's counts whole periods from it; a clocked one-off's is its
    clock time. A schedule type of no known kind is due when beat finds it due, to the second.
    """
    if isinstance(schedule, crontab):
        return _latest_crontab_slot(schedule, last_run_at, now)
    if isinstance(schedule, clocked):
        return schedule.clocked_time
    if isinstance(schedule, solar):
        return _latest_solar_event(schedule, last_run_at, now)
    if isinstance(schedule, interval):
        every = schedule.run_every
        periods = max(1, (now - last_run_at) // every)
        return last_run_at + periods * every
    return now.replace(microsecond=0)


def period_after(schedule, due_at: datetime) -> timedelta | None:
    """How long until the run after the one due at `due_at`; None for a one-off or an unknown kind."""
    if isinstance(schedule, crontab):
        return _next_crontab_slot(schedule, due_at) - due_at
    if isinstance(schedule, solar):
        return _next_solar_event(schedule, due_at + timedelta(seconds=1)) - due_at
    if isinstance(schedule, interval):
        return schedule.run_every
    return None
