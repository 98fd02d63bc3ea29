"""Flower as `start --service flower` serves it: our worker and tasks, behind a login, with metrics."""

import os
import stat
import time

import httpx
import pytest

pytestmark = pytest.mark.e2e


def flower_get(project, path: str, auth=None) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{project.env['FLOWER_PORT']}{path}", auth=auth, timeout=10)


def wait_for_json(project, path: str, auth, condition, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        reply = flower_get(project, path, auth)
        if reply.status_code == 200 and condition(reply.json()):
            return reply.json()
        assert time.monotonic() < deadline, f"{path}: {reply.status_code} {reply.text[:300]}"
        time.sleep(1)


def generated_credentials(project) -> tuple[str, str]:
    path = project.root / "var" / "flower_credentials"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, "the generated password is readable by its owner only"
    user, _, password = path.read_text().strip().partition(":")
    return user, password


def test_flower_shows_our_worker_and_tasks_behind_a_login(embedded_project):
    project = embedded_project
    project.manager("status", "--service", "all")
    assert not (project.root / "var" / "flower_credentials").exists(), "only starting Flower makes a login"
    for service in ("worker", "flower"):
        started = project.manager("start", "--service", service)
        assert started.returncode == 0, started.stdout + started.stderr
    auth = generated_credentials(project)
    assert not any(auth[1] in " ".join(p.cmdline()) for p in project.processes()), "the password is not in ps"
    status = project.manager("status", "--service", "flower")
    assert auth[1] not in status.stdout + status.stderr, "status never prints the password"
    assert f"user {auth[0]}, password in {project.root / 'var' / 'flower_credentials'}" in status.stdout

    assert flower_get(project, "/api/workers").status_code == 401
    assert flower_get(project, "/metrics").status_code == 401
    assert flower_get(project, "/", auth=("admin", "wrong")).status_code == 401
    workers = wait_for_json(project, "/api/workers?refresh=1", auth, lambda body: body)
    assert any(name.startswith("worker@") for name in workers)

    ran = project.manager("run", "cleanup-temp-files")
    assert ran.returncode == 0, ran.stderr
    tasks = wait_for_json(project, "/api/tasks", auth, lambda body: any(
        t.get("name") == "app.tasks.file_tasks.cleanup_temp_files" and t.get("state") == "SUCCESS"
        for t in body.values()))
    assert tasks
    metrics = flower_get(project, "/metrics", auth)
    assert metrics.status_code == 200 and "flower_events_total" in metrics.text
    assert project.manager("stop", "--service", "all").returncode == 0


def test_flower_without_a_login_only_when_explicitly_disabled(embedded_project):
    project = embedded_project
    project.env["FLOWER_AUTH_DISABLED"] = "true"
    assert project.manager("start", "--service", "flower").returncode == 0
    assert flower_get(project, "/api/workers").status_code == 200
    assert not (project.root / "var" / "flower_credentials").exists()
    assert "no login (FLOWER_AUTH_DISABLED=true)" in project.manager("status", "--service", "flower").stdout
    project.manager("stop", "--service", "all")


def test_a_malformed_flower_login_setting_is_one_clear_line(embedded_project):
    project = embedded_project
    project.env["FLOWER_BASIC_AUTH"] = "just-a-user"
    started = project.manager("start", "--service", "flower")
    assert started.returncode == 1
    assert "FLOWER_BASIC_AUTH must be user:password" in started.stderr and "Traceback" not in started.stderr


def test_flower_and_admin_logs_survive_rotation_by_rename(embedded_project):
    project = embedded_project
    for service in ("flower", "admin"):
        assert project.manager("start", "--service", service).returncode == 0
    project.python("import sys\nfrom pathlib import Path\nfrom app.services.logs import rotate_logs\n"
                   "rotate_logs(Path(sys.argv[1]), 30)", str(project.logs))
    assert not (project.logs / "admin.log").exists(), "rotated aside"
    httpx.get(f"http://127.0.0.1:{project.env['ADMIN_PORT']}/admin/login/", timeout=10)
    project.manager("stop", "--service", "all")
    assert "GET /admin/login/" in project.log_text("admin.log"), "gunicorn reopened its log"
    assert "shutting down" in project.log_text("flower.log"), "Flower reopened its log"
    rotated = [p.name for p in project.logs.glob("*.log.*")]
    assert any(n.startswith("admin.log.") for n in rotated) and any(n.startswith("flower.log.") for n in rotated)
