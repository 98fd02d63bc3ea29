"""A bad entry in beat_schedules.py: `check` and beat start name it; nothing else changes."""

import subprocess
import sys

import pytest

from app.core.exit_codes import EXIT_CONFIG_REFUSED

pytestmark = pytest.mark.e2e

BAD_CRONTAB = '''
BEAT_SCHEDULE["bad-cron"] = {
    "task": "app.tasks.file_tasks.cleanup_temp_files",
    "schedule": crontab(minute="61"),
    "options": {"queue": Queue.LOW_PRIORITY},
}
'''

UNKNOWN_TASK = '''
BEAT_SCHEDULE["typo-job"] = {
    "task": "app.tasks.file_tasks.cleanup_temp_file",
    "schedule": crontab(minute=5),
    "options": {"queue": Queue.LOW_PRIORITY},
}
'''


@pytest.mark.parametrize(("addition", "line"), [
    (BAD_CRONTAB, "entry 'bad-cron' (beat_schedules.py line {crontab_line}): ValueError: Invalid end range: 61 > 59."),
    (UNKNOWN_TASK, "typo-job: unknown task 'app.tasks.file_tasks.cleanup_temp_file' (no such task is registered)"),
])
def test_bad_entry_fails_check_and_beat_start_naming_it(embedded_project, addition, line):
    project = embedded_project
    project.make_due("cleanup-temp-files")
    jobs_before = project.schedule_state()
    schedule_file = project.root / "app" / "tasks" / "beat_schedules.py"
    original = schedule_file.read_text()
    schedule_file.write_text(original + addition)
    line = line.format(crontab_line=len(original.splitlines()) + 4)  # the crontab(...) line of BAD_CRONTAB

    checked = project.manager("check")
    assert checked.returncode == 1
    assert [row for row in checked.stdout.splitlines() if row.startswith("FAIL  schedule")] == [f"FAIL  schedule    {line}"]

    started = project.manager("start", "--service", "beat")
    assert started.returncode == 1 and "Traceback" not in started.stderr
    assert started.stderr.strip() == f"error: beat not started: {line}"

    direct = subprocess.run([sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "beat", "--loglevel", "info"],
                            cwd=project.root, env=project.env, capture_output=True, text=True, timeout=60)
    assert direct.returncode == EXIT_CONFIG_REFUSED, "beat started without the manager refuses too, saying not to restart it"
    assert f"beat not started: {line}" in direct.stdout + direct.stderr
    assert "Traceback" not in direct.stdout + direct.stderr

    assert project.schedule_state() == jobs_before, "the other jobs are untouched"
    rows = project.manager("status", "--service", "beat").stdout.splitlines()
    assert any(line.split()[:2] == ["beat", "stopped"] for line in rows)


def test_restart_with_a_bad_entry_keeps_the_running_beat(embedded_project):
    project = embedded_project
    assert project.manager("start", "--service", "beat").returncode == 0
    pidfile = project.root / "var" / "run" / "celerybeat.pid"
    running = pidfile.read_text()
    schedule_file = project.root / "app" / "tasks" / "beat_schedules.py"
    schedule_file.write_text(schedule_file.read_text() + UNKNOWN_TASK)

    restarted = project.manager("restart", "--service", "beat")

    assert restarted.returncode == 1 and "beat not started: typo-job: unknown task" in restarted.stderr
    assert pidfile.read_text() == running, "checked before the running beat was stopped"
    assert any(process.pid == int(running) for process in project.processes())
