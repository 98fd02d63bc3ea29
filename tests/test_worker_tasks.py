"""Every task through a real worker on the embedded broker, with its line in task_results.log."""

import json
import os
import time


from app.core.broker import redis_client

RESULT_TIMEOUT = 60


def result_lines(settings) -> list[dict]:
    path = settings.logs_path / "task_results.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def line_for(settings, task_id) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in result_lines(settings):
            if line["id"] == task_id:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no task_results.log line for {task_id}")


def run(celery_app, name):
    result = celery_app.send_task(name)
    return result, result.get(timeout=RESULT_TIMEOUT, propagate=False)


def test_cleanup_temp_files_runs_on_a_real_worker(worker, celery_app, settings):
    old = settings.temp_path / "stale.bin"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"z" * 321)
    stamp = time.time() - settings.temp_file_ttl_hours * 3600 - 60
    os.utime(old, (stamp, stamp))

    result, value = run(celery_app, "app.tasks.file_tasks.cleanup_temp_files")

    assert result.successful()
    assert value["files_deleted"] == 1 and value["bytes_freed"] == 321
    line = line_for(settings, result.id)
    assert line["name"] == "app.tasks.file_tasks.cleanup_temp_files"
    assert line["queue"] == "low_priority"
    assert line["state"] == "SUCCESS" and line["retries"] == 0
    assert line["runtime"] >= 0 and line["result"]["bytes_freed"] == 321


def test_system_health_check_reports_on_the_high_priority_queue(worker, celery_app, settings):
    result, report = run(celery_app, "app.tasks.tracking_tasks.system_health_check")
    assert result.successful()
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["database"]["status"] == "ok" and checks["broker"]["status"] == "ok"
    assert {"disk", "memory", "load"} <= set(checks)
    assert line_for(settings, result.id)["queue"] == "high_priority"


def test_check_disk_space_reports_each_volume(worker, celery_app, settings):
    result, value = run(celery_app, "app.tasks.file_tasks.check_disk_space")
    assert value["status"] in ("ok", "warn", "critical")
    assert value["volumes"] and all(v["total_bytes"] > 0 for v in value["volumes"])
    assert line_for(settings, result.id)["queue"] == "high_priority"


def test_cleanup_expired_results_gives_lost_keys_an_expiry(worker, celery_app, settings):
    client = redis_client(settings.result_backend_url)
    client.set("celery-task-meta-orphan-from-test", "{}")
    result, value = run(celery_app, "app.tasks.file_tasks.cleanup_expired_results")
    assert value["keys_given_expiry"] >= 1
    assert 0 < client.ttl("celery-task-meta-orphan-from-test") <= 3600
    assert all(client.ttl(key) != -1 for key in client.scan_iter("celery-task-meta-*"))


def test_cleanup_logs_rotates_and_the_results_log_carries_on(worker, celery_app, settings):
    result, value = run(celery_app, "app.tasks.file_tasks.cleanup_logs")
    assert value["rotated"] >= 1
    assert list(settings.logs_path.glob("task_results.log.*"))
    second, _ = run(celery_app, "app.tasks.file_tasks.check_disk_space")
    assert line_for(settings, second.id)["state"] == "SUCCESS", "the results log reopened after rotation"


def test_permanent_error_fails_at_once_without_retries(worker, celery_app, settings):
    result, error = run(celery_app, "tests.fail_permanently")
    assert result.failed()
    line = line_for(settings, result.id)
    assert line["state"] == "FAILURE" and line["retries"] == 0
    assert "PermanentError: no such tracking number" in line["error"]


def test_transient_error_is_retried_and_succeeds(worker, celery_app, settings):
    result, value = run(celery_app, "tests.fail_once")
    assert value == {"attempts": 2}
    line = line_for(settings, result.id)
    assert line["state"] == "SUCCESS" and line["retries"] == 1
    assert sum(1 for line in result_lines(settings) if line["id"] == result.id) == 1, "one line per finished task"
