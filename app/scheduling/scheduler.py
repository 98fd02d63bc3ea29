"""The beat scheduler: django-celery-beat's DatabaseScheduler, synced from the schedule table at start."""

import logging

from django.core.management import call_command
from django_celery_beat.schedulers import DatabaseScheduler

from app.scheduling.sync import sync_schedule_table
from app.tasks.beat_schedules import BEAT_SCHEDULE

log = logging.getLogger(__name__)


def migrate_database() -> None:
    """Apply Django migrations (django-celery-beat's and ours); a no-op once applied."""
    call_command("migrate", interactive=False, verbosity=0)


class ScheduleTableScheduler(DatabaseScheduler):
    """DatabaseScheduler whose code-defined jobs come from `beat_schedules.py`.

    Stock DatabaseScheduler re-saves `beat_schedule` at every start (reverting admin edits) and
    never disables an entry removed from it; this syncs the table instead, before the first tick.
    Celery's default `celery.backend_cleanup` entry is not installed: `cleanup-expired-results`
    runs the backend's cleanup already.
    """

    def setup_schedule(self):
        migrate_database()
        sync_schedule_table(BEAT_SCHEDULE)
