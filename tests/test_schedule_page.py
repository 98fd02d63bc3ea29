"""The admin's schedule page in real headless Chromium, served from this process beside a real beat
(in this process) and the session's worker: every job listed, a job's runs, pause, resume, run now."""

import time
from datetime import timedelta

import httpx
import pytest
from celery.schedules import crontab
from django.contrib.admin.models import LogEntry
from django_celery_beat.models import PeriodicTask

from app.scheduling.scheduler import ScheduleTableScheduler
from tests.support.admin_server import STAFF_PASSWORD, STAFF_USER, logged_in_client, serving_admin
from tests.support.browser import launch
from tests.support.inprocess_beat import history
from tests.support.waiting import wait_until

TASK = "app.tasks.file_tasks.cleanup_temp_files"
OFTEN = "page-every-second"
TABLE = {
    OFTEN: {"task": TASK, "schedule": timedelta(seconds=1), "options": {"queue": "low_priority", "expire_seconds": 60},
            "policy": {"overlap": "allow"}},
    "page-nightly": {"task": TASK, "schedule": crontab(minute=30, hour=3),
                     "options": {"queue": "low_priority", "expire_seconds": 3600}},
}


def runs_of(name: str) -> list:
    return history([name]).get(name, [])


def tick_until(scheduler, condition, what: str, timeout: float = 20):
    """Let beat tick until `condition()` holds."""
    def ticked():
        scheduler.tick()
        return condition()
    return wait_until(ticked, timeout, what)


def tick_for_periods(scheduler, periods: int, every: float = 1.0) -> None:
    """Let beat tick through `periods` periods of a job due every `every` seconds."""
    deadline = time.monotonic() + periods * every
    while time.monotonic() < deadline:
        scheduler.tick()
        time.sleep(0.05)


def audited(name: str) -> list[str]:
    return list(LogEntry.objects.filter(object_repr__startswith=name).order_by("id")
                .values_list("change_message", flat=True))


@pytest.fixture
def beat(celery_app, beat_broker, clean_history):
    LogEntry.objects.filter(object_repr__startswith="page-").delete()
    scheduler = ScheduleTableScheduler(app=celery_app, table=TABLE)
    yield scheduler
    scheduler.close()


def test_the_schedule_page_lists_jobs_shows_runs_and_pauses_resumes_and_runs_now(worker, beat, monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread, which Django takes for async code of ours.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    tick_until(beat, lambda: len([r for r in runs_of(OFTEN) if r.outcome == "success"]) >= 2, "two runs of the job")
    with serving_admin() as base, sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page()
        page.goto(f"{base}/admin/")
        page.fill("#id_username", STAFF_USER)
        page.fill("#id_password", STAFF_PASSWORD)
        page.click("input[type=submit]")
        page.click("#schedule-link a")

        listed = page.locator("#schedule-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.job)")
        assert listed == sorted(PeriodicTask.objects.values_list("name", flat=True)) == sorted(TABLE)
        nightly = page.locator("tr[data-job='page-nightly']")
        assert nightly.locator(".upcoming").inner_text().count("03:30:00") == 5, "next five runs, Shanghai time"
        assert "At 03:30 AM" in nightly.inner_text() and "skip/run_once" in nightly.inner_text()

        page.click(f"text={OFTEN}")
        shown = page.locator("#runs tbody tr").all_inner_texts()
        recorded = runs_of(OFTEN)
        assert len(shown) == min(len(recorded), 50) and all(r.task_id in " ".join(shown) for r in recorded[-50:])
        assert page.locator("#day-strip .tick").count() == len(recorded)

        page.click("button[name=pause]")
        page.wait_for_selector(".messagelist .success")
        assert page.locator(".state").inner_text().startswith("暂停 / paused")
        assert not PeriodicTask.objects.get(name=OFTEN).enabled
        tick_for_periods(beat, 1)  # a run already in flight finishes
        paused_at = len(runs_of(OFTEN))
        tick_for_periods(beat, 3)
        assert len(runs_of(OFTEN)) == paused_at, "no run while paused"

        page.click("button[name=resume]")
        page.wait_for_selector(".messagelist .success")
        tick_until(beat, lambda: len(runs_of(OFTEN)) > paused_at, "a run after resume")

        page.click("button[name=run]")
        page.wait_for_selector(".messagelist .success")
        by_hand = wait_until(lambda: [r for r in runs_of(OFTEN) if r.due_at is None and r.outcome == "success"],
                             30, "the run sent by hand")
        assert by_hand[0].task_id in page.locator(".messagelist").inner_text()
        browser.close()

    assert audited(OFTEN) == ["暂停 / paused from the schedule page", "恢复 / resumed from the schedule page",
                              f"立即执行 / sent now from the schedule page as task {by_hand[0].task_id}"]


def test_actions_need_a_post_with_the_csrf_token(beat):
    job = PeriodicTask.objects.get(name=OFTEN)
    with serving_admin() as base, logged_in_client(base) as client:
        assert client.get(f"/admin/schedule/job/{job.pk}/pause/").status_code == 405
        assert client.post(f"/admin/schedule/job/{job.pk}/pause/").status_code == 403, "no CSRF token"
        assert httpx.get(f"{base}/admin/schedule/", timeout=30).status_code == 302, "the login first"
    assert PeriodicTask.objects.get(name=OFTEN).enabled and audited(OFTEN) == []
