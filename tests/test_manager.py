"""celery_beat_manager.py as operators run it, in subprocesses, on a copy of the project."""

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from app.scheduling.overview import NOT_SYNCED
from app.tasks.beat_schedules import BEAT_SCHEDULE

pytestmark = pytest.mark.e2e

SLOW_TASK = '''
import time
from pathlib import Path

from app.tasks.celery_app import app


@app.task
def sleep_ten(marker):
    Path(marker + ".started").touch()
    time.sleep(10)
    Path(marker + ".done").touch()
    return "slept"
'''

ADMIN_JOB = """
from app.tasks.celery_app import app
from django_celery_beat.models import IntervalSchedule, PeriodicTask
every, _ = IntervalSchedule.objects.get_or_create(every=600, period="seconds")
PeriodicTask.objects.create(name="made-in-admin", task="app.tasks.file_tasks.check_disk_space", interval=every)
"""


def test_start_status_refuse_second_start_stop(project):
    started = project.manager("start")
    assert started.returncode == 0, started.stderr
    assert "beat     started" in started.stdout

    status = project.manager("status")
    assert status.returncode == 0, status.stderr
    assert "beat     running" in status.stdout
    assert "database  reachable" in status.stdout and "broker    reachable" in status.stdout
    next_due = next(line for line in status.stdout.splitlines() if line.startswith("next due"))
    assert next_due.split()[2] in BEAT_SCHEDULE and "(Asia/Shanghai)" in next_due

    again = project.manager("start")
    assert again.returncode == 1
    assert "already running" in again.stderr and "Traceback" not in again.stderr

    stopped = project.manager("stop")
    assert stopped.returncode == 0 and "beat     stopped" in stopped.stdout
    assert project.manager("stop").returncode == 0, "stop is idempotent"
    assert project.manager("status").returncode == 3
    assert project.processes() == [], "stop leaves nothing behind, the embedded broker included"


def test_password_in_database_url_is_masked_in_status(embedded_project):
    embedded_project.env["DATABASE_URL"] = "postgresql://app:s3cret@127.0.0.1:1/none"
    status = embedded_project.manager("status")
    assert "s3cret" not in status.stdout + status.stderr
    assert "postgresql+psycopg2://app:***@127.0.0.1:1/none" in status.stdout


def test_status_names_an_unreachable_database_and_exits_non_zero(embedded_project):
    embedded_project.env["DATABASE_URL"] = "postgresql://app@127.0.0.1:1/none"
    status = embedded_project.manager("status", "--service", "worker")
    assert status.returncode == 3
    assert "unreachable: database postgresql+psycopg2://app@127.0.0.1:1/none" in status.stderr
    assert "Traceback" not in status.stderr


def test_a_killed_embedded_broker_is_named_by_status_and_started_again(embedded_project):
    project = embedded_project
    assert project.manager("start", "--service", "worker").returncode == 0
    assert project.manager("status", "--service", "worker").returncode == 0
    broker_pid = int((project.root / "var" / "run" / "valkey.pid").read_text())
    psutil.Process(broker_pid).kill()
    psutil.Process(broker_pid).wait(10)

    status = project.manager("status", "--service", "worker")
    assert status.returncode == 3, status.stdout + status.stderr
    assert "not running: embedded broker" in status.stderr

    started = project.manager("start", "--service", "worker")
    assert started.returncode == 0, started.stderr
    assert "broker   started" in started.stdout and "worker   already running" in started.stdout
    deadline = time.monotonic() + 30
    while (status := project.manager("status", "--service", "worker")).returncode != 0:
        assert time.monotonic() < deadline, f"the worker did not come back to the broker:\n{status.stderr}"
        time.sleep(1)
    assert project.manager("stop", "--service", "worker").returncode == 0


def test_foreground_starts_a_killed_embedded_broker_again(embedded_project):
    project = embedded_project
    project.start_foreground("--service", "worker")
    pidfile = project.root / "var" / "run" / "valkey.pid"
    deadline = time.monotonic() + 60
    while "started worker" not in project.output() or not pidfile.exists():
        assert time.monotonic() < deadline and project.foreground.poll() is None, project.output()
        time.sleep(0.2)
    first = int(pidfile.read_text())
    psutil.Process(first).kill()
    while "embedded broker exited; starting it again" not in project.output():
        assert time.monotonic() < deadline and project.foreground.poll() is None, project.output()
        time.sleep(0.2)
    while project.manager("status", "--service", "worker").returncode != 0:
        assert time.monotonic() < deadline, project.output()
        time.sleep(1)
    assert int(pidfile.read_text()) != first
    assert project.interrupt() == 0


@pytest.mark.parametrize("pid_source", ["dead", "unrelated"])
def test_stale_pid_file_does_not_block_start(embedded_project, pid_source):
    project = embedded_project
    pidfile = project.root / "var" / "run" / "celerybeat.pid"
    pidfile.parent.mkdir(parents=True)
    if pid_source == "dead":
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        pidfile.write_text(f"{gone.pid}\n")
    else:
        pidfile.write_text(f"{os.getpid()}\n")  # alive, but this test process is not beat

    started = project.manager("start")

    assert started.returncode == 0, started.stderr
    assert int(pidfile.read_text()) != os.getpid()
    assert psutil.pid_exists(os.getpid()), "the unrelated process was not signalled"
    assert project.manager("stop").returncode == 0


def test_failed_start_exits_non_zero_with_the_last_log_lines(embedded_project):
    project = embedded_project
    (project.root / "app" / "scheduling" / "scheduler.py").write_text("raise RuntimeError('broken scheduler')\n")
    started = project.manager("start")
    assert started.returncode == 1
    assert "beat exited with code" in started.stderr
    assert "broken scheduler" in started.stderr, "the cause is shown from the service's own output"


def test_stop_waits_for_a_busy_worker_to_finish_its_task(embedded_project, tmp_path):
    project = embedded_project
    project.add_task_module("slow_tasks", SLOW_TASK)
    assert project.manager("start", "--service", "worker").returncode == 0
    marker = str(tmp_path / "slow")
    project.python("from app.tasks.celery_app import app; "
                   f"app.send_task('app.tasks.slow_tasks.sleep_ten', args=[{marker!r}], queue='low_priority')")
    deadline = time.monotonic() + 30
    while not os.path.exists(marker + ".started"):
        assert time.monotonic() < deadline, project.log_text("celery_worker.log")
        time.sleep(0.1)

    began = time.monotonic()
    stopped = project.manager("stop", "--service", "worker")

    assert stopped.returncode == 0
    assert "worker   stopped" in stopped.stdout, stopped.stdout
    assert os.path.exists(marker + ".done"), "the task in hand was finished, not killed"
    assert time.monotonic() - began >= 5
    assert project.processes() == []


def test_logs_shows_the_last_lines(embedded_project):
    project = embedded_project
    assert project.manager("start", "--loglevel", "debug").returncode == 0
    assert "DEBUG/MainProcess" in project.log_text("celerybeat.log")
    logs = project.manager("logs", "--lines", "5")
    assert logs.returncode == 0
    lines = logs.stdout.splitlines()
    assert len(lines) == 5
    assert lines == project.log_text("celerybeat.log").splitlines()[-5:]
    project.manager("stop")


def list_jobs(project) -> dict[str, dict]:
    listed = project.manager("list", "--json")
    assert listed.returncode == 0, listed.stderr
    return {job["name"]: job for job in json.loads(listed.stdout)}


def test_list_json_names_every_job_of_the_table(project):
    before_beat = list_jobs(project)
    assert set(before_beat) == set(BEAT_SCHEDULE)
    assert all(job["drift"] == [NOT_SYNCED] and job["next_run"] is None for job in before_beat.values())
    assert before_beat["cleanup-logs"]["schedule"] == "At 03:30 AM, only on Sunday"

    project.make_due("cleanup-logs")  # what beat does at start: migrate and sync
    jobs = list_jobs(project)
    assert set(BEAT_SCHEDULE) <= set(jobs)
    health = jobs["system-health-check"]
    assert health["queue"] == "high_priority" and health["expression"] == "*/5 * * * *"
    assert health["source"] == "beat_schedules.py" and health["drift"] == [] and health["enabled"]
    assert health["next_run"].endswith(":00") and health["schedule"] == "Every 5 minutes"


def test_list_reports_an_admin_edit_as_drift(embedded_project):
    project = embedded_project
    project.make_due("cleanup-logs")
    project.python("from app.tasks.celery_app import app\n"
                   "from django_celery_beat.models import PeriodicTask\n"
                   "PeriodicTask.objects.filter(name='cleanup-logs').update(queue='high_priority')\n")
    assert list_jobs(project)["cleanup-logs"]["drift"] == ["queue"]


def test_clear_keeps_admin_jobs_unless_all(embedded_project):
    project = embedded_project
    project.make_due("cleanup-logs")
    project.python(ADMIN_JOB)
    (project.root / "celerybeat-schedule.db").write_text("stock beat's shelve file")

    refused = project.manager("clear")
    assert refused.returncode == 1 and "--yes" in refused.stderr, "no confirmation without a terminal"

    cleared = project.manager("clear", "--yes")
    assert cleared.returncode == 0, cleared.stderr
    assert not (project.root / "celerybeat-schedule.db").exists()
    names = set(project.schedule_state())
    assert "made-in-admin" in names and "system-health-check" in names

    assert project.manager("clear", "--yes", "--all").returncode == 0
    assert "made-in-admin" not in project.schedule_state()


def test_run_sends_a_job_now_and_prints_its_summary(project):
    assert project.manager("start", "--service", "worker").returncode == 0
    ran = project.manager("run", "cleanup-temp-files")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {"files_deleted": 0, "bytes_freed": 0, "dirs_removed": 0, "errors": []}
    queued = project.manager("run", "check-disk-space", "--no-wait")
    assert queued.returncode == 0 and len(queued.stdout.strip()) == 36
    unknown = project.manager("run", "no-such-job")
    assert unknown.returncode == 1 and "no job 'no-such-job'" in unknown.stderr
    project.manager("stop", "--service", "worker")


def test_run_without_a_worker_says_so(embedded_project):
    project = embedded_project
    no_broker = project.manager("run", "cleanup-temp-files")
    assert no_broker.returncode == 1 and "broker not reachable" in no_broker.stderr
    assert project.manager("start").returncode == 0
    ran = project.manager("run", "cleanup-temp-files")
    assert ran.returncode == 1
    assert "no running worker consumes queue low_priority" in ran.stderr
    project.manager("stop")


def test_check_passes_on_a_running_service(embedded_project):
    project = embedded_project
    assert project.manager("start", "--service", "all").returncode == 0
    checked = project.manager("check")
    assert checked.returncode == 0, checked.stdout
    assert "every scheduled task registered" in checked.stdout
    assert "every queue has a consumer" in checked.stdout
    project.manager("stop", "--service", "all")


def test_check_fails_with_a_clear_line_when_the_broker_is_down(embedded_project):
    checked = embedded_project.manager("check")
    assert checked.returncode == 1
    broker_line = next(line for line in checked.stdout.splitlines() if " broker " in line)
    assert broker_line.startswith("FAIL") and "valkey.sock" in broker_line
    assert "Traceback" not in checked.stdout + checked.stderr


def test_check_names_what_the_evidence_workers_miss(embedded_project):
    embedded_project.env.update(CHROMIUM_PATH="/nonexistent/chromium", CJK_FONT_PATH="/nonexistent/font.ttc")
    lines = embedded_project.manager("check").stdout.splitlines()
    chromium = next(line for line in lines if " chromium " in line)
    font = next(line for line in lines if " cjk font " in line)
    assert chromium.startswith("FAIL") and "/nonexistent/chromium" in chromium
    assert font.startswith("FAIL") and "CJK_FONT_PATH=/nonexistent/font.ttc is not a file" in font


def test_every_command_has_help(embedded_project):
    for command in ["start", "foreground", "stop", "restart", "status", "logs", "list", "clear", "run", "check",
                    "migrate", "createsuperuser"]:
        shown = embedded_project.manager(command, "--help")
        assert shown.returncode == 0 and "usage:" in shown.stdout, command


# -- status and health where the processes are not ours (compose exec, another host) -----------


def _beat_heartbeat(broker_url: str):
    """A beat's lease and heartbeat in Redis, written by the real Leadership, as a beat in another container would."""
    from app.core.broker import redis_client
    from app.scheduling.leader import HEARTBEAT_PREFIX, LEASE_KEY, Leadership

    client = redis_client(broker_url)
    client.delete(LEASE_KEY, *client.scan_iter(match=HEARTBEAT_PREFIX + "*"))  # what earlier tests' beats left
    leadership = Leadership(client, timeout=30, max_interval=5)
    assert leadership.renew()
    return leadership


def test_status_judges_a_beat_without_a_pid_file_by_its_lease_and_heartbeat(tmp_path, redis_url):
    from tests.support.project import Project

    project = Project(tmp_path, {"CELERY_BROKER_URL": redis_url})
    leadership = _beat_heartbeat(redis_url)
    leading = project.manager("status")
    assert leading.returncode == 0, leading.stdout + leading.stderr
    beat_row = next(line for line in leading.stdout.splitlines() if line.startswith("beat"))
    assert "running" in beat_row and f"no process here; cluster: {leadership.identity} leads" in beat_row

    leadership.release()  # what a beat does at a clean stop: nobody leads now
    stopped = project.manager("status")
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    assert "not running: beat" in stopped.stderr


def test_health_beat_needs_a_fresh_heartbeat_from_this_host(tmp_path, redis_url):
    from app.core.broker import redis_client
    from tests.support.project import Project

    project = Project(tmp_path, {"CELERY_BROKER_URL": redis_url})
    leadership = _beat_heartbeat(redis_url)
    healthy = project.manager("health", "beat")
    assert healthy.returncode == 0 and f"ok: beat {leadership.identity} leads" in healthy.stdout, healthy.stdout

    redis_client(redis_url).delete(leadership.heartbeat_key)
    unhealthy = project.manager("health", "beat")
    assert unhealthy.returncode == 1 and "unhealthy: beat no heartbeat from host" in unhealthy.stdout


def test_health_flower_asks_its_healthcheck_page(embedded_project):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Healthcheck(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(200 if self.path == "/healthcheck" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", int(embedded_project.env["FLOWER_PORT"])), Healthcheck)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answered = embedded_project.manager("health", "flower")
    finally:
        server.shutdown()
        server.server_close()
    assert answered.returncode == 0 and "/healthcheck answered 200" in answered.stdout, answered.stdout
    refused = embedded_project.manager("health", "flower")
    assert refused.returncode == 1 and refused.stdout.startswith("unhealthy: flower")


def test_check_starts_chromium_rather_than_trusting_the_file(embedded_project):
    embedded_project.env.update(CHROMIUM_PATH="/bin/true")  # executable, but no browser: as a driver missing a library
    lines = embedded_project.manager("check").stdout.splitlines()
    chromium = next(line for line in lines if " chromium " in line)
    assert chromium.startswith("FAIL") and "/bin/true found but Playwright could not start it" in chromium
