"""WSGI entry point of the schedule admin: `gunicorn app.core.wsgi:application`."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.core.django_settings")

from app.core.config import get_settings  # noqa: E402  (exits with one line on a bad setting)

get_settings()

from django.core.wsgi import get_wsgi_application  # noqa: E402

from app.core.migrations import migrate_all  # noqa: E402
from app.tasks.celery_app import app as celery_app  # noqa: E402  (the admin lists this app's tasks)

celery_app.loader.import_default_modules()
migrate_all()  # the admin may be the first service started; a no-op once applied
application = get_wsgi_application()
