"""A beat that cannot start says why in one line and exits non-zero, run for real.

Celery redirects beat's stdout/stderr into its log; a traceback printed there at exit arrives
one write() at a time, as log lines holding a word or a single "^".
"""

import re
import subprocess
import sys
import time

import pytest

from tests.support.project import Project
from tests.support.services import redis_test_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/none"
LOG_PREFIX = re.compile(r"^\[[^]]*\] ?")


def messages(text: str) -> list[str]:
    """The lines of `text`, log lines without their "[time: LEVEL/process]" prefix."""
    return [LOG_PREFIX.sub("", line) for line in text.splitlines()]


def assert_told_once(text: str, where: str) -> None:
    told = [line for line in messages(text) if "beat not started" in line]
    assert len(told) == 1, f"{where}: {told}\n{text}"
    assert "OperationalError" in told[0] and "port 1 failed: Connection refused" in told[0], told[0]
    fragments = [line for line in messages(text) if len(line.strip()) == 1]
    assert not fragments, f"{where}: lines of one character {fragments}\n{text}"
    assert "Traceback" not in text, f"{where}:\n{text}"


@pytest.fixture
def project(tmp_path):
    copy = Project(tmp_path, {"CELERY_BROKER_URL": redis_test_url(), "DATABASE_URL": UNREACHABLE})
    yield copy
    copy.kill_all()


def test_start_with_an_unreachable_database_fails_with_one_line(project):
    began = time.monotonic()
    started = project.manager("start", "--service", "beat", timeout=90)
    elapsed = time.monotonic() - began
    assert started.returncode != 0 and elapsed < 60
    assert "beat exited with code 1 while starting" in started.stderr
    assert_told_once(started.stderr, "the terminal")
    assert_told_once(project.log_text("celerybeat.log"), "celerybeat.log")
    assert not project.processes(), "nothing left running"


@pytest.mark.parametrize("logfile", [True, False], ids=["logfile", "stderr as docker-compose and systemd run it"])
def test_celery_beat_itself_exits_1_with_one_line(project, logfile):
    root = project.root
    (root / "logs").mkdir(exist_ok=True)
    log = ["--logfile", str(root / "logs" / "celerybeat.log")] if logfile else []
    beat = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "beat", "--loglevel", "info", *log],
        cwd=root, env=project.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert beat.returncode == 1
    if logfile:
        assert "beat not started" not in beat.stdout + beat.stderr, "told in the log, where --logfile says"
        assert not [line for line in (beat.stdout + beat.stderr).splitlines() if len(line.strip()) == 1]
        assert_told_once(project.log_text("celerybeat.log"), "celerybeat.log")
    else:
        assert_told_once(beat.stderr, "stderr")


def test_the_traceback_is_in_the_log_once_at_debug_level(project):
    started = project.manager("start", "--service", "beat", "--loglevel", "debug", timeout=90)
    assert started.returncode != 0
    log = project.log_text("celerybeat.log")
    chained = log.count("The above exception was the direct cause") + log.count("During handling of the above")
    assert log.count("Traceback (most recent call last)") == 1 + chained, "one report of the error, chain included"
    assert log.count("DEBUG/MainProcess] beat not started\nTraceback (most recent call last)") == 1, log
    assert log.count("CRITICAL/MainProcess] beat not started: OperationalError") == 1, log
    assert not [line for line in messages(log) if len(line.strip()) == 1], log
