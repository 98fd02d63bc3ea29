"""A bad entry in beat_schedules.py: `check` and beat start name it; nothing else changes."""

import subprocess
import sys

import pytest

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
    assert direct.returncode == 1, "beat started without the manager refuses too"
    assert f"beat not started: {line}" in direct.stdout + direct.stderr
    assert "Traceback" not in direct.stdout + direct.stderr

    assert project.schedule_state() == jobs_before, "the other jobs are untouched"
    rows = project.manager("status", "--service", "beat").stdout.splitlines()
    assert any(line.split()[:2] == ["beat", "stopped"] for line in rows)
