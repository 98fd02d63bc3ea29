"""The beat scheduler: django-celery-beat's DatabaseScheduler, synced from the schedule table at start."""

import logging

from django_celery_beat.schedulers import DatabaseScheduler

from app.core.migrations import migrate_all

from app.scheduling.sync import sync_schedule_table
from app.tasks.beat_schedules import BEAT_SCHEDULE

log = logging.getLogger(__name__)


class ScheduleTableScheduler(DatabaseScheduler):
    """DatabaseScheduler whose code-defined jobs come from `beat_schedules.py`.

    Stock DatabaseScheduler re-saves `beat_schedule` at every start (reverting admin edits) and
    never disables an entry removed from it; this syncs the table instead, before the first tick.
    Celery's default `celery.backend_cleanup` entry is not installed: `cleanup-expired-results`
    runs the backend's cleanup already.
    """

    def setup_schedule(self):
        migrate_all()
        sync_schedule_table(BEAT_SCHEDULE)
