"""When a schedule fell due: the slot a due run stands for, the same for every beat."""

from datetime import datetime, timedelta

from celery.schedules import crontab

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


def latest_slot(schedule, last_run_at: datetime, now: datetime) -> datetime:
    """The latest time at or before `now` that `schedule` fell due after `last_run_at`.

    Runs missed in between are coalesced into this one. For a crontab the slot does not depend
    on `last_run_at` at all, so two beats that disagree on the last run name the same slot.
    """
    if isinstance(schedule, crontab):
        return _latest_crontab_slot(schedule, last_run_at, now)
    every = schedule.run_every
    periods = max(1, (now - last_run_at) // every)
    return last_run_at + periods * every
