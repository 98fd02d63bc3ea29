"""`make run` at info level: each service's start, each job's outcome, warnings and errors, and none of
the libraries' chatter (alembic's plugins, Flower's task list and first inspections, django-axes' banner,
Celery's mingle, an HTTP line per carrier poll or health check). Debug level shows the chatter, as DEBUG."""

import logging
import urllib.error
import urllib.request

import pytest

from app.core.logging import HEALTH_PROBE_AGENT, quiet_library_chatter
from tests.support.waiting import wait_until

# Each noise line by a piece of its text, named by where it comes from.
NOISE = {
    "alembic.runtime.plugins": "setup plugin",
    "alembic.runtime.migration": "Context impl",
    "alembic.runtime.migration DDL": "Will assume",
    "flower.command task list": "Registered tasks",
    "flower.command task list entry": "'celery.chord'",
    "flower.inspector": "Inspect method",
    "axes.apps": "AXES: BEGIN",
    "celery.worker.consumer.mingle": "mingle: ",
    "httpx": "HTTP Request:",
    "gunicorn.access health probe": HEALTH_PROBE_AGENT,
}
# (prefix, text): a line of the terminal output that starts with the one and holds the other.
START_LINES = [("[beat] ", "beat: Starting..."), ("[worker] ", " ready."), ("[flower] ", "Visit me at"),
               ("[admin] ", "Listening at:"), ("", "Kuaidi100 simulator at")]
HEALTH_JOB = "app.tasks.tracking_tasks.system_health_check"
POLL_JOB = "app.tasks.tracking_tasks.poll_tracking_chunk"
BROWSER_AGENT = "Mozilla/5.0 (quiet-output test)"


def _get(url: str, agent: str | None = None) -> int:
    """The status `url` answers with, 0 while nothing listens."""
    request = urllib.request.Request(url, headers={"User-Agent": agent} if agent else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return 0


def _has_line(output: str, prefix: str, *texts: str) -> bool:
    return any(line.startswith(prefix) and all(text in line for text in texts) for line in output.splitlines())


def _wait_for_line(project, what: str, prefix: str, *texts: str) -> None:
    wait_until(lambda: _has_line(project.output(), prefix, *texts), timeout=90, what=what,
               detail=lambda: project.output()[-4000:])


@pytest.mark.e2e
def test_foreground_at_info_shows_starts_and_job_outcomes_without_library_chatter(embedded_project):
    project = embedded_project
    project.make_due("system-health-check")
    project.start_foreground("--service", "all")
    admin_login = f"http://127.0.0.1:{project.env['ADMIN_PORT']}/admin/login/"
    flower_health = f"http://127.0.0.1:{project.env['FLOWER_PORT']}/healthcheck"
    wait_until(lambda: _get(admin_login, HEALTH_PROBE_AGENT) == 200, timeout=90, what="the admin's health probe",
               detail=project.output)
    wait_until(lambda: _get(flower_health, HEALTH_PROBE_AGENT) == 200, timeout=30, what="Flower's health probe",
               detail=project.output)
    assert project.manager("health", "admin").returncode == 0
    assert _get(admin_login, BROWSER_AGENT) == 200
    added = project.app_cli("deliveries", "add", "--reference", "QUIET-1", "--recipient-name", "张三",
                            "--phone", "13800138000", "--address", "北京市朝阳区建国路1号", "--carrier", "ems",
                            "--tracking-number", "EM100000001CN")
    assert added.returncode == 0, added.stderr

    for job in (HEALTH_JOB, POLL_JOB):
        _wait_for_line(project, f"the outcome of {job}", "[worker] ", f"Task {job}[", "succeeded")
    _wait_for_line(project, "the browser's request among the admin's access lines", "[admin] ", BROWSER_AGENT)
    project.interrupt()  # its exit code is test_end_to_end's subject

    output = project.output()
    assert {source: text for source, text in NOISE.items() if text in output} == {}
    assert [line for line in START_LINES if not _has_line(output, *line)] == []
    assert _has_line(output, "[beat] ", "Sending due task system-health-check")
    assert "/healthcheck" not in project.log_text("flower.log")
    banner = output[output.index("ready — logs in"):]
    assert f"http://127.0.0.1:{project.env['FLOWER_PORT']}" in banner and "flower_credentials" in banner
    assert f"http://127.0.0.1:{project.env['ADMIN_PORT']}/admin/" in banner and "next job " in banner


def test_a_worker_not_answering_flower_is_told_at_debug_and_a_broker_error_stays_a_warning(caplog):
    quiet_library_chatter()
    inspector = logging.getLogger("flower.inspector")
    with caplog.at_level(logging.INFO, logger="flower.inspector"):
        inspector.warning("Inspect method %s failed", "stats")
        inspector.warning("Inspect method %s failed: %s", "stats", ConnectionError("broker gone"))

    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("WARNING", "Inspect method stats failed: broker gone")]


def test_library_chatter_shows_at_debug_as_debug_records_and_other_lines_keep_their_level(caplog):
    quiet_library_chatter()
    migration = logging.getLogger("alembic.runtime.migration")
    with caplog.at_level(logging.DEBUG, logger="alembic.runtime.migration"):
        migration.info("Context impl %s.", "SQLiteImpl")
        migration.info("Running %s", "upgrade  -> 0001, app tables")

    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("DEBUG", "Context impl SQLiteImpl."), ("INFO", "Running upgrade  -> 0001, app tables")]
