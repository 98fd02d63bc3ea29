"""Login guessing: the admin and Flower lock an address out after a handful of wrong passwords.

A real gunicorn admin (django-axes) and a real Flower, started as `start --service` starts them,
take 30 wrong logins from 127.0.0.1; then the right password is refused until the lock-out time
(2 s here, LOGIN_LOCKOUT_SECONDS) has passed.
"""

import re
import time

import httpx
import pytest

from app.manager.flower_login import FailedLogins

pytestmark = pytest.mark.e2e

LIMIT = 5
LOCKOUT_SECONDS = 2
GUESSES = 30
PASSWORD = "s3cret-for-tests"
FLOWER_LOGIN = ("ops", PASSWORD)


def throttled_project(project) -> None:
    project.env.update(LOGIN_FAILURE_LIMIT=str(LIMIT), LOGIN_LOCKOUT_SECONDS=str(LOCKOUT_SECONDS))


def admin_login(client: httpx.Client, password: str) -> int:
    """POST the admin's login form as a browser does (CSRF token and cookie); the status code."""
    form = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    reply = client.post("/admin/login/?next=/admin/", data={
        "csrfmiddlewaretoken": token, "username": "ops", "password": password, "next": "/admin/"})
    return reply.status_code


def test_the_admin_locks_an_address_out_after_a_handful_of_wrong_passwords(embedded_project):
    project = embedded_project
    throttled_project(project)
    project.env["DJANGO_SUPERUSER_PASSWORD"] = PASSWORD
    assert project.manager("createsuperuser", "--no-input", "--username", "ops").returncode == 0
    started = project.manager("start", "--service", "admin")
    assert started.returncode == 0, started.stdout + started.stderr

    with httpx.Client(base_url=f"http://127.0.0.1:{project.env['ADMIN_PORT']}", timeout=10) as client:
        answers = [admin_login(client, f"wrong-{n}") for n in range(GUESSES)]
        assert answers == [200] * (LIMIT - 1) + [429] * (GUESSES - LIMIT + 1), "the form again, then 429"
        assert admin_login(client, PASSWORD) == 429, "the right password is refused while locked out"
        time.sleep(LOCKOUT_SECONDS + 0.5)
        assert admin_login(client, PASSWORD) == 302, "let in once the lock-out time has passed"
    project.manager("stop", "--service", "all")


def flower_get(project, path: str, auth=None) -> int:
    return httpx.get(f"http://127.0.0.1:{project.env['FLOWER_PORT']}{path}", auth=auth, timeout=10).status_code


def test_flower_locks_an_address_out_after_a_handful_of_wrong_passwords(embedded_project):
    project = embedded_project
    throttled_project(project)
    project.env["FLOWER_BASIC_AUTH"] = ":".join(FLOWER_LOGIN)
    started = project.manager("start", "--service", "flower")
    assert started.returncode == 0, started.stdout + started.stderr
    assert flower_get(project, "/metrics") == 401, "/metrics needs the login"
    assert flower_get(project, "/metrics", FLOWER_LOGIN) == 200

    answers = [flower_get(project, "/api/workers", ("ops", f"wrong-{n}")) for n in range(GUESSES)]
    assert answers == [401] * LIMIT + [429] * (GUESSES - LIMIT)
    assert flower_get(project, "/", FLOWER_LOGIN) == 429, "the right password is refused while locked out"
    assert flower_get(project, "/metrics", FLOWER_LOGIN) == 429
    time.sleep(LOCKOUT_SECONDS + 0.5)
    assert flower_get(project, "/", FLOWER_LOGIN) == 200, "let in once the lock-out time has passed"
    assert flower_get(project, "/") == 401, "a request without a login is not a wrong guess"
    project.manager("stop", "--service", "all")


def test_flower_metrics_open_without_a_login_only_when_told(embedded_project):
    project = embedded_project
    project.env.update(FLOWER_BASIC_AUTH=":".join(FLOWER_LOGIN), FLOWER_METRICS_OPEN="true")
    started = project.manager("start", "--service", "flower")
    assert started.returncode == 0, started.stdout + started.stderr
    assert flower_get(project, "/metrics") == 200
    assert flower_get(project, "/api/workers") == 401, "only /metrics is opened"
    project.manager("stop", "--service", "all")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_logins_expire_and_are_forgotten():
    clock = Clock()
    failures = FailedLogins(limit=3, window=60, clock=clock)
    for _ in range(2):
        failures.record("10.0.0.1")
        clock.now += 59
    assert not failures.locked_out("10.0.0.1")
    failures.record("10.0.0.1")
    assert failures.locked_out("10.0.0.1") and not failures.locked_out("10.0.0.2"), "per address"
    clock.now += 61
    assert not failures.locked_out("10.0.0.1"), "the lock-out ends a window after the last failure"

    for n in range(10_000):
        failures.record(f"10.1.{n // 256}.{n % 256}")
    clock.now += 61
    failures.record("10.0.0.3")
    assert len(failures) == 1, "addresses whose failures expired are not kept"
