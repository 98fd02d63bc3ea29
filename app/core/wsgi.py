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


def _close_connections_before_fork() -> None:
    """gunicorn runs with --preload: this module is imported once, in the master, and its workers
    are forked from it. A database connection opened here (the migration's) would be shared by
    every worker's process; each opens its own instead."""
    from django.db import connections

    from app.core.database import engine

    connections.close_all()
    engine.dispose()


_close_connections_before_fork()
