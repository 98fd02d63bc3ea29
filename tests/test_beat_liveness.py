"""A beat whose process is alive but stuck is reported down by status and by the health check."""

import json
import os
import signal
import time

import pytest

pytestmark = pytest.mark.e2e

TIMEOUT = 3


def beat_row(status) -> str:
    return next((line for line in status.stdout.splitlines() if line.startswith("beat ")), "")


def wait_for(project, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = project.manager("status", "--service", "beat")
        if predicate(status):
            return status
        time.sleep(0.5)
    raise AssertionError(f"status never matched:\n{status.stdout}{status.stderr}")


def test_stuck_beat_is_down_in_status_and_health_check_then_recovers(embedded_project):
    project = embedded_project
    project.env["BEAT_LEADER_TIMEOUT"] = str(TIMEOUT)
    assert project.manager("start", "--service", "worker").returncode == 0
    assert project.manager("start", "--service", "beat").returncode == 0
    healthy = wait_for(project, lambda s: "leader" in s.stdout and " leads, last tick" in s.stdout)
    assert healthy.returncode == 0
    beat_pid = int((project.root / "var" / "run" / "celerybeat.pid").read_text())

    os.kill(beat_pid, signal.SIGSTOP)  # alive, holding its PID file, but never ticking
    try:
        stuck = wait_for(project, lambda s: "down" in beat_row(s))
        assert stuck.returncode == 3
        assert "(stuck?)" in beat_row(stuck) and str(beat_pid) in beat_row(stuck)
        assert "no beat leads" in stuck.stdout

        ran = project.manager("run", "system-health-check")
        assert ran.returncode == 0, ran.stderr
        beat_check = next(check for check in json.loads(ran.stdout)["checks"] if check["name"] == "beat")
        assert beat_check["status"] == "critical" and "no beat leads" in beat_check["detail"]["error"]
    finally:
        os.kill(beat_pid, signal.SIGCONT)

    recovered = wait_for(project, lambda s: s.returncode == 0)
    assert "leader" in beat_row(recovered) and " leads, last tick" in recovered.stdout
