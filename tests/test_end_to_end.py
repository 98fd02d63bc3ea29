"""The service as users run it: beat sends a due job, a worker runs it, the result is logged.

The service's own paths (beat to broker to worker, the table sync) run on the embedded default
(Valkey + SQLite) and on the machine's Redis + PostgreSQL; the domain flow on the embedded default
only (its database code runs on both in tests/services/).
"""

import json
import time

import pytest

pytestmark = pytest.mark.e2e


def test_beat_sends_a_due_job_and_the_worker_runs_it(project):
    project.make_due("system-health-check")
    project.start_foreground("--service", "all")

    line = project.wait_for_result("app.tasks.tracking_tasks.system_health_check")

    assert line["state"] == "SUCCESS" and line["queue"] == "high_priority"
    assert line["result"].startswith('{"status": ') and '"name": "database", "status": "ok"' in line["result"]
    assert project.log_text("celerybeat.log").count("Scheduler: Sending due task system-health-check") == 1
    assert "ready" in project.log_text("celery_worker.log")
    assert project.interrupt() == 0
    time.sleep(0.5)
    assert project.processes() == [], "Ctrl-C stops beat, worker and the embedded broker"


def test_job_removed_from_the_table_is_disabled_at_the_next_beat_start(project):
    project.make_due("cleanup-temp-files")
    assert project.schedule_state()["cleanup-temp-files"] is True

    project.edit_schedule(remove="cleanup-temp-files")
    project.start_foreground("--service", "beat")
    deadline = time.monotonic() + 60
    while "schedule table synced" not in project.log_text("celerybeat.log"):
        assert time.monotonic() < deadline, project.output()
        time.sleep(0.2)
    project.interrupt()

    state = project.schedule_state()
    assert state["cleanup-temp-files"] is False
    assert state["system-health-check"] is True
    assert "Sending due task cleanup-temp-files" not in project.log_text("celerybeat.log")


def test_ctrl_c_stops_everything_even_when_started_with_sigint_ignored(embedded_project):
    project = embedded_project
    project.start_foreground("--service", "all", sigint_ignored=True)
    deadline = time.monotonic() + 60
    while "ready" not in project.log_text("celery_worker.log"):
        assert time.monotonic() < deadline, project.output()
        time.sleep(0.2)
    assert project.interrupt() == 0
    time.sleep(0.5)
    assert project.processes() == []


def test_imported_deliveries_are_tracked_by_the_running_service(embedded_project, tmp_path):
    project = embedded_project
    csv_file = tmp_path / "deliveries.csv"
    csv_file.write_text("reference,recipient_name,phone,address,carrier,tracking_number,deadline\n"
                        "CASE-1,张三,13800138000,北京市朝阳区建国路1号,ems,EM100000001CN,2099-12-31\n"
                        "CASE-2,李四,13900139000,上海市浦东新区,shunfeng,SF100000002,\n", encoding="utf-8")
    imported = project.app_cli("deliveries", "import", str(csv_file))
    assert imported.returncode == 0, imported.stderr
    # Only this test's two runs poll: beat must not poll too when a */5 or */10 minute passes meanwhile.
    project.edit_schedule(remove="check-pending-tasks")
    schedule_file = project.root / "app" / "tasks" / "beat_schedules.py"
    schedule_file.write_text(schedule_file.read_text().replace(
        'crontab(minute="*/10")', 'crontab(minute=0, hour=4, day_of_month=1)', 1))
    started = project.manager("start", "--service", "all")
    assert started.returncode == 0, started.stderr

    for _ in range(2):
        ran = project.manager("run", "update-tracking-status")
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["due"] == 2
    deadline = time.monotonic() + 60
    while {d["status"] for d in json.loads(project.app_cli("deliveries", "list", "--json").stdout)} != {"in_transit"}:
        assert time.monotonic() < deadline, project.log_text("celery_worker.log")[-3000:]
        time.sleep(0.5)
    shown = json.loads(project.app_cli("deliveries", "show", "1", "--json").stdout)
    assert len(shown["events"]) == 2, "one event per poll, each stored once"
    assert "13800138000" not in project.log_text("celery_worker.log"), "phones never appear unmasked in logs"
    assert project.manager("stop", "--service", "all").returncode == 0
