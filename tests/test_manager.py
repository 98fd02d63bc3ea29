"""celery_beat_manager.py as operators run it, in subprocesses, on a copy of the project.

One stack (every service, embedded default) is started once for the module and looked at by the tests in
order: before start, start, status, check, run, list, logs, restart, stop, then the schedule commands
that need beat stopped. The failure cases each have a copy of their own."""

import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime

import psutil
import pytest

from app.scheduling.overview import NOT_SYNCED
from app.tasks.beat_schedules import BEAT_SCHEDULE

pytestmark = pytest.mark.e2e
STACK = pytest.mark.xdist_group("manager-stack")
HEALTH_TASK = "app.tasks.tracking_tasks.system_health_check"
PIDFILES = {"worker": "celery_worker.pid", "beat": "celerybeat.pid", "flower": "flower.pid", "admin": "admin.pid",
            "simulator": "simulator.pid", "broker": "valkey.pid"}

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


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One copy of the project on the embedded default, for the module's ordered look at a running stack."""
    from tests.support.project import Project

    copy = Project(tmp_path_factory.mktemp("stack"))
    yield copy
    copy.kill_all()


def pids(project) -> dict[str, int]:
    run = project.root / "var" / "run"
    return {name: int((run / file).read_text()) for name, file in PIDFILES.items() if (run / file).exists()}


def list_jobs(project) -> dict[str, dict]:
    listed = project.manager("list", "--json")
    assert listed.returncode == 0, listed.stderr
    return {job["name"]: job for job in json.loads(listed.stdout)}


@STACK
def test_before_start_run_check_and_list_say_what_is_missing(stack):
    no_broker = stack.manager("run", "cleanup-temp-files")
    assert no_broker.returncode == 1 and "broker not reachable" in no_broker.stderr

    stack.env.update(CHROMIUM_PATH="/bin/true", CJK_FONT_PATH="/nonexistent/font.ttc")  # a driver that cannot start
    try:
        checked = stack.manager("check")
    finally:
        del stack.env["CHROMIUM_PATH"], stack.env["CJK_FONT_PATH"]
    assert checked.returncode == 1 and "Traceback" not in checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    broker = next(line for line in lines if " broker " in line)
    chromium = next(line for line in lines if " chromium " in line)
    font = next(line for line in lines if " cjk font " in line)
    assert broker.startswith("FAIL") and "valkey.sock" in broker
    assert chromium.startswith("FAIL") and "/bin/true found but Playwright could not start it" in chromium
    assert "without it, no tracking screenshots" in chromium
    assert font.startswith("FAIL") and "CJK_FONT_PATH=/nonexistent/font.ttc is not a file" in font

    before_beat = list_jobs(stack)
    assert set(before_beat) == set(BEAT_SCHEDULE)
    assert all(job["drift"] == [NOT_SYNCED] and job["next_run"] is None for job in before_beat.values())
    assert before_beat["cleanup-logs"]["schedule"] == "At 03:30 AM, only on Sunday"


@STACK
def test_start_all_prints_where_to_look_and_refuses_a_second_start(stack):
    started = stack.manager("start", "--service", "all")
    assert started.returncode == 0, started.stderr
    for name in ("broker", "simulator", "worker", "beat", "flower", "admin"):
        assert f"{name:<9} started (pid " in started.stdout, started.stdout
    banner = started.stdout[started.stdout.index("ready — logs in"):]
    assert f"http://127.0.0.1:{stack.env['FLOWER_PORT']}" in banner and "flower_credentials" in banner
    assert f"http://127.0.0.1:{stack.env['ADMIN_PORT']}/admin/" in banner and "createsuperuser" in banner
    assert "next job " in banner and "+08:00" in banner

    again = stack.manager("start", "--service", "all")
    assert again.returncode == 1
    assert "already running" in again.stderr and "Traceback" not in again.stderr


@STACK
def test_the_first_health_check_result_is_in_the_results_log_at_once(stack):
    assert stack.wait_for_result(HEALTH_TASK, timeout=60)["state"] == "SUCCESS"


@STACK
def test_status_shows_every_service_and_where_the_stack_stands(stack):
    status = stack.manager("status", "--service", "all")
    assert status.returncode == 0, status.stdout + status.stderr
    services, facts = ({line.split()[0]: line for line in part.splitlines()} for part in status.stdout.split("\n\n"))
    for name in ("broker", "simulator", "worker", "beat", "flower", "admin"):
        assert services[name].split()[1] == "running", services[name]
    assert "leader" in services["beat"] and socket.gethostname() in services["beat"]
    assert facts["database"].split()[1] == "reachable" and facts["broker"].split()[1] == "reachable"
    next_due = facts["next"]
    assert next_due.split()[2] in BEAT_SCHEDULE and next_due.endswith("+08:00")
    assert f"http://127.0.0.1:{stack.env['FLOWER_PORT']}" in facts["flower"]


@STACK
def test_check_passes_on_the_running_stack(stack):
    checked = stack.manager("check")
    assert checked.returncode == 0, checked.stdout
    assert "every scheduled task registered" in checked.stdout
    assert "every queue has a consumer" in checked.stdout


@STACK
def test_run_sends_a_job_now_and_prints_its_summary(stack):
    ran = stack.manager("run", "cleanup-temp-files")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {"files_deleted": 0, "bytes_freed": 0, "dirs_removed": 0, "errors": []}
    queued = stack.manager("run", "check-disk-space", "--no-wait")
    assert queued.returncode == 0 and len(queued.stdout.strip()) == 36
    unknown = stack.manager("run", "no-such-job")
    assert unknown.returncode == 1 and "no job 'no-such-job'" in unknown.stderr


@STACK
def test_list_after_beat_synced_the_table(stack):
    jobs = list_jobs(stack)
    assert set(BEAT_SCHEDULE) <= set(jobs)
    health = jobs["system-health-check"]
    assert health["queue"] == "high_priority" and health["expression"] == "*/5 * * * *"
    assert health["source"] == "beat_schedules.py" and health["drift"] == [] and health["enabled"]
    next_run = datetime.fromisoformat(health["next_run"])
    assert next_run.second == 0 and next_run.utcoffset().total_seconds() == 8 * 3600
    assert health["schedule"] == "Every 5 minutes"


@STACK
def test_logs_shows_the_last_lines_of_any_service_and_of_all(stack):
    shown = stack.manager("logs", "--lines", "3")
    assert shown.returncode == 0
    assert shown.stdout.count("\n") == 3 and shown.stdout in stack.log_text("celerybeat.log")
    broker = stack.manager("logs", "--service", "broker", "-n", "2")
    assert broker.returncode == 0 and "\n".join(broker.stdout.splitlines()) in stack.log_text("broker.log")
    every = stack.manager("logs", "--service", "all", "-n", "1").stdout.splitlines()
    assert {line.split("]")[0] + "]" for line in every} >= {"[beat]", "[worker]", "[broker]", "[admin]"}


@STACK
def test_restart_of_the_worker_leaves_every_other_process_alone(stack):
    before = pids(stack)
    restarted = stack.manager("restart", "--service", "worker")
    assert restarted.returncode == 0, restarted.stderr
    after = pids(stack)
    assert after["worker"] != before["worker"] and psutil.pid_exists(after["worker"])
    assert {k: v for k, v in after.items() if k != "worker"} == {k: v for k, v in before.items() if k != "worker"}
    assert f"worker    started (pid {after['worker']})" in restarted.stdout


@STACK
def test_stop_all_leaves_nothing_behind(stack):
    stopped = stack.manager("stop", "--service", "all")
    assert stopped.returncode == 0 and "beat      stopped" in stopped.stdout, stopped.stdout
    assert stack.manager("stop", "--service", "all").returncode == 0, "stop is idempotent"
    assert stack.manager("status").returncode == 3
    assert stack.processes() == [], "stop leaves nothing behind, the embedded broker included"


@STACK
def test_list_reports_an_admin_edit_and_clear_resets_the_schedule(stack):
    stack.python("from app.tasks.celery_app import app\n"
                 "from django_celery_beat.models import PeriodicTask\n"
                 "PeriodicTask.objects.filter(name='cleanup-logs').update(queue='high_priority')\n")
    assert list_jobs(stack)["cleanup-logs"]["drift"] == ["queue"]
    stack.python(ADMIN_JOB)
    (stack.root / "celerybeat-schedule.db").write_text("stock beat's shelve file")

    refused = stack.manager("clear")
    assert refused.returncode == 1 and "--yes" in refused.stderr, "no confirmation without a terminal"
    cleared = stack.manager("clear", "--yes")
    assert cleared.returncode == 0, cleared.stderr
    assert not (stack.root / "celerybeat-schedule.db").exists()
    names = set(stack.schedule_state())
    assert "made-in-admin" in names and "system-health-check" in names
    assert list_jobs(stack)["cleanup-logs"]["drift"] == []

    assert stack.manager("clear", "--yes", "--all").returncode == 0
    assert "made-in-admin" not in stack.schedule_state()


# -- failures, each on a copy of its own ------------------------------------------------------


def test_status_masks_the_password_and_names_an_unreachable_database(embedded_project):
    embedded_project.env["DATABASE_URL"] = "postgresql://app:s3cret@127.0.0.1:1/none"
    status = embedded_project.manager("status", "--service", "worker")
    assert status.returncode == 3
    assert "s3cret" not in status.stdout + status.stderr
    assert "postgresql+psycopg2://app:***@127.0.0.1:1/none" in status.stdout
    assert "unreachable: database postgresql+psycopg2://app:***@127.0.0.1:1/none" in status.stderr
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
    assert "broker    started" in started.stdout and "worker    already running" in started.stdout
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
    while "worker    started" not in project.output() or not pidfile.exists():
        assert time.monotonic() < deadline and project.foreground.poll() is None, project.output()
        time.sleep(0.2)
    first = int(pidfile.read_text())
    psutil.Process(first).kill()
    while "broker    exited" not in project.output():
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
    assert "worker    stopped" in stopped.stdout, stopped.stdout
    assert os.path.exists(marker + ".done"), "the task in hand was finished, not killed"
    assert time.monotonic() - began >= 5
    assert project.processes() == []


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
    leading = project.manager("status", "--service", "beat")
    assert leading.returncode == 0, leading.stdout + leading.stderr
    beat_row = next(line for line in leading.stdout.splitlines() if line.startswith("beat"))
    assert "running" in beat_row and f"no process here; cluster: {leadership.identity} leads" in beat_row
    assert socket.gethostname() in beat_row, "the beat's host, from its heartbeat"

    leadership.release()  # what a beat does at a clean stop: nobody leads now
    stopped = project.manager("status", "--service", "beat")
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


def test_health_flower_asks_its_healthcheck_page(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from app.core.config import Settings
    from app.manager.checks import flower_health
    from tests.support.project import free_port

    class Healthcheck(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(200 if self.path == "/healthcheck" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *_):
            pass

    settings = Settings(_env_file=None, var_dir=tmp_path / "var", flower_port=free_port())
    server = ThreadingHTTPServer(("127.0.0.1", settings.flower_port), Healthcheck)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ok, detail = flower_health(settings)
    finally:
        server.shutdown()
        server.server_close()
    assert ok and "/healthcheck answered 200" in detail, detail
    assert flower_health(settings)[0] is False


def test_missing_optional_pieces_are_named_with_what_they_disable(tmp_path):
    from app.core.config import Settings
    from app.manager.checks import missing_pieces

    settings = Settings(_env_file=None, var_dir=tmp_path / "var", chromium_path="/nonexistent/chromium",
                        cjk_font_path=tmp_path / "no-font.ttc")
    missing = {piece.name: piece for piece in missing_pieces(settings)}
    assert "CHROMIUM_PATH=/nonexistent/chromium is not an executable file" in missing["chromium"].detail
    assert "no 送达回证 receipts" in missing["chromium"].disables
    assert "is not a file" in missing["cjk font"].detail and "cannot render Chinese" in missing["cjk font"].disables
