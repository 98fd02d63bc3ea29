"""Tracking screenshots on the `screenshot` queue: one reused Chromium per worker process."""

import logging
import os
from functools import lru_cache

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown

from app.core.config import get_settings
from app.core.database import SessionFactory
from app.services.evidence.browser import BrowserSession, reap_orphaned_browsers
from app.services.evidence.screenshot import capture_tracking_screenshot as capture
from app.tasks.base import EvidenceTask
from app.tasks.celery_app import app
from app.tasks.policies import DEFAULT_POLICY

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def browser() -> BrowserSession:
    """This process's browser (created in the worker child, after the fork).

    Playwright's sync API keeps an asyncio loop running in this thread between calls, which
    Django's async-safety check takes for async code and refuses every ORM call after (the
    beat tables, Celery's Django fixup). The code here is synchronous, so the check is lifted
    for this process.
    """
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    return BrowserSession(get_settings())


@worker_process_init.connect
def _reap_browsers(**_) -> None:
    """A child replacing one killed at the hard time limit clears away the browser that one left."""
    reap_orphaned_browsers()


@worker_process_shutdown.connect
def _close_browser(**_) -> None:
    if browser.cache_info().currsize:
        browser().close()


@app.task(base=EvidenceTask, evidence_step="screenshot", **DEFAULT_POLICY)
def capture_tracking_screenshot(delivery_id: int, regenerate: bool = False) -> dict:
    """Render the delivery's tracking timeline and store its PNG (kept if one exists, unless regenerate)."""
    settings = get_settings()
    try:
        return capture(SessionFactory, settings.files_path, browser(), delivery_id,
                       settings.carrier_page_url, regenerate)
    except SoftTimeLimitExceeded:
        log.warning("screenshot of delivery %d hit the soft time limit; closing Chromium", delivery_id)
        browser().close()
        raise
