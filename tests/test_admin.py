"""The schedule admin in a real browser: an edit there reaches the running beat without a restart.

On the embedded default only: the browser and the admin are the subject here. The change tracking
beat relies on (django-celery-beat's PeriodicTasks row) is the same ORM code on PostgreSQL; beat on
PostgreSQL runs in the fault and stall scenarios (tests/test_beat_faults.py, tests/test_beat_stalls.py).
"""

import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

from tests.support.browser import launch
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-for-tests"
OPEN_CONNECTIONS = """
import app.core.wsgi
from django.db import connections
from app.core.database import engine
print(engine.pool.checkedin(), sum(c.connection is not None for c in connections.all(initialized_only=True)))
"""
TWO_SECONDS = """
from app.tasks.celery_app import app
from app.core.migrations import migrate_all
from django_celery_beat.models import IntervalSchedule
migrate_all()
print(IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)[0].id)
"""


def sends(project, job: str) -> int:
    """Due runs beat acted on: sent, or skipped by the job's overlap policy (no worker runs here,
    so the first run sent stays unfinished and the default policy skips the later ones)."""
    log = project.log_text("celerybeat.log")
    return log.count(f"Sending due task {job} ") + log.count(f"] {job} due ")


@contextmanager
def logged_in_admin(project, *services: str):
    """Prepare a 2-second interval and a login, start `services` and the admin; yield (page, base, interval id)."""
    from playwright.sync_api import sync_playwright

    two_seconds = project.python(TWO_SECONDS).split()[-1]
    project.env["DJANGO_SUPERUSER_PASSWORD"] = PASSWORD
    created = project.manager("createsuperuser", "--no-input", "--username", "ops")
    assert created.returncode == 0, created.stderr
    for service in (*services, "admin"):
        started = project.manager("start", "--service", service)
        assert started.returncode == 0, started.stdout + started.stderr
    base = f"http://127.0.0.1:{project.env['ADMIN_PORT']}"
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page()
        page.goto(f"{base}/admin/")
        page.fill("#id_username", "ops")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#user-tools")
        yield page, base, two_seconds
        browser.close()


def test_an_admin_edit_reaches_the_running_beat_without_restart(embedded_project):
    project = embedded_project
    with logged_in_admin(project, "beat") as (page, base, two_seconds):
        page.goto(f"{base}/admin/django_celery_beat/periodictask/")
        page.click("text=cleanup-temp-files")
        page.wait_for_selector("#id_task option[value='app.tasks.file_tasks.cleanup_temp_files']", state="attached")
        assert page.locator("#id_regtask").count() == 0, "no free-text task field beside the registered ones"
        options = page.locator("#id_task option").all_inner_texts()
        assert "app.tasks.file_tasks.cleanup_temp_files" in options and "celery.backend_cleanup" not in options
        page.select_option("#id_interval", value=two_seconds)
        page.select_option("#id_crontab", value="")
        page.click("input[name=_save]")
        page.wait_for_selector(".messagelist .success")

    wait_until(lambda: sends(project, "cleanup-temp-files") >= 2, 60, "two sends of the job at its new interval")
    listed = {row["name"]: row for row in json.loads(project.manager("list", "--json").stdout)}
    assert listed["cleanup-temp-files"]["drift"] == ["schedule"], "list shows the admin edit"

    restarted = project.manager("restart", "--service", "beat")
    assert restarted.returncode == 0, restarted.stderr
    count = sends(project, "cleanup-temp-files")
    wait_until(lambda: sends(project, "cleanup-temp-files") >= count + 2, 60, "the edit surviving a beat restart")
    assert project.manager("stop", "--service", "all").returncode == 0


def test_the_admin_refuses_a_task_that_is_not_registered(embedded_project):
    project = embedded_project
    with logged_in_admin(project) as (page, base, two_seconds):
        page.goto(f"{base}/admin/django_celery_beat/periodictask/add/")
        page.fill("#id_name", "sneaky")
        page.evaluate("""() => { const select = document.querySelector('#id_task');
                                 select.add(new Option('os.system', 'os.system')); select.value = 'os.system'; }""")
        page.select_option("#id_interval", value=two_seconds)
        page.click("input[name=_save]")
        error = page.locator(".errorlist").first.inner_text()
    assert "os.system is not a registered task" in error
    assert "sneaky" not in project.manager("list").stdout
    project.manager("stop", "--service", "all")


def test_a_job_made_in_the_admin_follows_stock_policy_until_one_is_saved_there(embedded_project):
    project = embedded_project

    def listed_policy() -> dict:
        rows = {row["name"]: row for row in json.loads(project.manager("list", "--json").stdout)}
        return rows["admin-made"]["policy"]

    with logged_in_admin(project) as (page, base, two_seconds):
        page.goto(f"{base}/admin/django_celery_beat/periodictask/add/")
        page.fill("#id_name", "admin-made")
        page.select_option("#id_task", value="app.tasks.file_tasks.cleanup_temp_files")
        page.select_option("#id_interval", value=two_seconds)
        assert page.input_value("#id_schedule_policy-0-overlap") == "allow", "the form offers stock's policy"
        page.click("input[name=_save]")
        page.wait_for_selector(".messagelist .success")
        assert listed_policy()["overlap"] == "allow", "nothing saved: every due run is sent, as stock does"

        page.click("text=admin-made")
        page.select_option("#id_schedule_policy-0-overlap", value="skip")
        page.click("input[name=_save]")
        page.wait_for_selector(".messagelist .success")
    assert listed_policy() == {"overlap": "skip", "missed": "run_once", "grace": 300.0, "jitter": 0.0}
    project.manager("stop", "--service", "all")


def test_createsuperuser_refuses_a_weak_password(embedded_project):
    project = embedded_project
    project.env["DJANGO_SUPERUSER_PASSWORD"] = "x"
    refused = project.manager("createsuperuser", "--no-input", "--username", "ops")
    assert refused.returncode == 1 and "DJANGO_SUPERUSER_PASSWORD refused" in refused.stderr
    assert "Traceback" not in refused.stderr
    project.env["DJANGO_SUPERUSER_PASSWORD"] = PASSWORD
    created = project.manager("createsuperuser", "--no-input", "--username", "ops")
    assert created.returncode == 0, "the refused user was never created: the name is still free"


def test_the_admin_app_leaves_no_database_connection_for_gunicorns_forked_workers_to_share(tmp_path):
    """gunicorn --preload imports the admin once and forks its workers: a connection the migration
    left open would be one socket used by every worker."""
    env = {**os.environ, "VAR_DIR": str(tmp_path / "var")}
    probe = subprocess.run([sys.executable, "-c", OPEN_CONNECTIONS], env=env, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["0", "0"], "pooled SQLAlchemy connections, open Django connections"
