"""A crontab job set for 02:00 is due at 02:00 Asia/Shanghai whatever the host's timezone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("host_tz", ["UTC", "America/New_York", "Asia/Shanghai"])
def test_two_am_job_is_due_at_two_am_shanghai(host_tz, tmp_path):
    env = {**os.environ, "TZ": host_tz, "VAR_DIR": str(tmp_path / "var"), "LOGS_DIR": str(tmp_path / "logs")}
    result = subprocess.run([sys.executable, "-m", "tests.support.due_times"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    due = json.loads(result.stdout.strip().splitlines()[-1])
    assert due["before"]["due"] is False
    assert 29 <= due["before"]["next_check_seconds"] <= 31, "next check lands on 02:00 Shanghai"
    assert due["at"]["due"] is True
    assert due["utc_now_at"]["due"] is True, "18:00 UTC is 02:00 in Shanghai"
    assert due["an_hour_early"]["due"] is False, "01:00 Shanghai is not 02:00 in any other zone"
