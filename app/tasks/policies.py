"""The seed's retry policies, as keyword arguments for `@app.task`.

The seed writes `retry_kwargs={'countdown': N}` beside `retry_backoff=True`; Celery ignores that
countdown when backoff is on (the backoff factor would be 1 s), so N is the backoff factor here:
waits of about N, 2N, 4N ... seconds (full jitter), capped at RETRY_BACKOFF_MAX.

The seed retries every Exception; here only TRANSIENT_ERRORS are retried, the errors that may be gone
on the next try. Anything else (a TypeError, a KeyError: a bug) fails at once, and a periodic job's
failure opens its `job:<name>` alert at once instead of after minutes of retries.
"""

import httpx
import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery.exceptions import SoftTimeLimitExceeded
from django.db import utils as django_db
# The class playwright.sync_api exports, from the module that defines it: importing sync_api itself
# costs every worker, beat and CLI process about a third of a second, for a name in a tuple
# (tests/test_retry_policy.py checks both are the same class).
from playwright._impl._errors import Error as PlaywrightError

from app.services.backups import BackupError
from app.services.carriers.base import CarrierError
from app.services.errors import PermanentError
from app.services.evidence.screenshot import ScreenshotError

RETRY_BACKOFF_MAX = 600

TRANSIENT_ERRORS = (
    # The database: a lost or refused connection, a lock or a pool slot not had in time. Not the
    # SQLAlchemy InterfaceError/ProgrammingError a bad parameter (a dict for an id) gives.
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,
    django_db.OperationalError,
    django_db.InterfaceError,
    # The broker (BusyLoadingError and the refused writes of app.core.broker_transport are ConnectionErrors).
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    # HTTP, and the carrier: its PermanentError subclasses are excluded by dont_autoretry_for.
    httpx.TransportError,
    CarrierError,
    # The browser: screenshot.py raises ScreenshotError for Playwright's errors (TimeoutError among them).
    ScreenshotError,
    PlaywrightError,
    # pg_dump or the backup's verification; a socket refused, reset or timed out; the soft time limit.
    BackupError,
    ConnectionError,
    TimeoutError,
    SoftTimeLimitExceeded,
)


def _policy(max_retries: int, countdown: int) -> dict:
    return {
        "autoretry_for": TRANSIENT_ERRORS,
        "dont_autoretry_for": (PermanentError,),
        "retry_kwargs": {"max_retries": max_retries},
        "retry_backoff": countdown,
        "retry_backoff_max": RETRY_BACKOFF_MAX,
        "retry_jitter": True,
    }


DEFAULT_POLICY = _policy(max_retries=3, countdown=60)
CRITICAL_POLICY = _policy(max_retries=5, countdown=30)
RETRY_POLICIES = {"default": DEFAULT_POLICY, "critical": CRITICAL_POLICY}
