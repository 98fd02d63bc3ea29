"""Print when a 02:00 crontab job is due, as beat computes it, under this process's TZ.

Run in a subprocess with TZ set; VAR_DIR/LOGS_DIR point at a scratch directory.
"""

import json
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from celery.schedules import crontab

from app.tasks.celery_app import app

from django_celery_beat.models import PeriodicTask  # noqa: E402  (after django.setup in celery_app)
from django_celery_beat.schedulers import ModelEntry  # noqa: E402

from app.core.migrations import migrate_all  # noqa: E402
from app.scheduling.sync import sync_schedule_table  # noqa: E402

SHANGHAI = ZoneInfo("Asia/Shanghai")


def entry_at(last_run: datetime, now: datetime) -> dict:
    model = PeriodicTask.objects.get(name="nightly-job")
    model.last_run_at = last_run
    model.save()
    model.refresh_from_db()  # the round trip through the database, stored in UTC
    beat_entry = ModelEntry(model, app=app)
    beat_entry.schedule.nowfun = lambda: now
    due, next_check = beat_entry.is_due()
    return {"due": due, "next_check_seconds": next_check}


def main() -> None:
    time.tzset()
    migrate_all()
    sync_schedule_table({
        "nightly-job": {
            "task": "app.tasks.file_tasks.cleanup_logs",
            "schedule": crontab(minute=0, hour=2),
            "options": {"queue": "low_priority", "expire_seconds": 3600},
        }
    })
    last_run = datetime(2026, 11, 27, 2, 0, 5, tzinfo=SHANGHAI)
    results = {
        "local_tz": time.tzname[0],
        "before": entry_at(last_run, datetime(2026, 11, 28, 1, 59, 30, tzinfo=SHANGHAI)),
        "at": entry_at(last_run, datetime(2026, 11, 28, 2, 0, 1, tzinfo=SHANGHAI)),
        "utc_now_at": entry_at(last_run, datetime(2026, 11, 27, 18, 0, 1, tzinfo=ZoneInfo("UTC"))),
        "an_hour_early": entry_at(last_run, datetime(2026, 11, 28, 1, 0, 1, tzinfo=SHANGHAI)),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
