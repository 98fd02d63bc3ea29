"""Two beats, a killed leader, a slow job, and crontab jobs on a UTC host, run for real.

One scenario per backend (embedded Valkey + SQLite, Redis + PostgreSQL), under TZ=UTC with
BEAT_LEADER_TIMEOUT=4: a worker and two beats started at once run fast interval jobs, a job
slower than its interval with overlap "skip", a crontab job due every minute of the current
Asia/Shanghai hour, and a trap due in every other hour. Once the crontab job has fired, the
leader is SIGKILLed and started again; the scenario ends after the crontab job's next minute.
The tests below judge the history the scenario leaves.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis

from app.core.broker import redis_client
from tests.support.project import Project, moment
from tests.support.services import postgres_database, redis_test_url
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SHANGHAI = ZoneInfo("Asia/Shanghai")
LEADER_TIMEOUT = 4

PROBE_TASKS = '''
import time

from app.tasks.celery_app import app


@app.task(name="app.tasks.beat_probe.quick")
def quick():
    return "ok"


@app.task(name="app.tasks.beat_probe.slow")
def slow():
    time.sleep(2.5)
    return "slept"
'''


def probe_entries(hours: list[int], trap_hours: list[int]) -> str:
    fast = '{"queue": "high_priority"}'
    return f'''
from datetime import timedelta as _seconds

BEAT_SCHEDULE.update({{
    "fast-every-1s": {{"task": "app.tasks.beat_probe.quick", "schedule": _seconds(seconds=1),
                      "options": {fast}, "policy": {{"overlap": "allow"}}}},
    "fast-every-2s": {{"task": "app.tasks.beat_probe.quick", "schedule": _seconds(seconds=2),
                      "options": {fast}, "policy": {{"overlap": "allow"}}}},
    "slow-skip": {{"task": "app.tasks.beat_probe.slow", "schedule": _seconds(seconds=1),
                  "options": {{"queue": "low_priority"}}, "policy": {{"overlap": "skip"}}}},
    "shanghai-minute": {{"task": "app.tasks.beat_probe.quick",
                        "schedule": crontab(minute="*", hour="{",".join(map(str, hours))}"), "options": {fast}}},
    "wrong-hour-trap": {{"task": "app.tasks.beat_probe.quick",
                        "schedule": crontab(minute="*", hour="{",".join(map(str, trap_hours))}"), "options": {fast}}},
}})
'''


class Scenario:
    def __init__(self, project: Project):
        self.project = project
        self.second_beat: subprocess.Popen | None = None
        self.url = project.env.get("CELERY_BROKER_URL") or f"redis+socket://{project.root}/var/run/valkey.sock"

    def redis(self) -> redis.Redis:
        return redis_client(self.url, socket_timeout=2)

    def start_second_beat(self) -> None:
        root = self.project.root
        self.second_beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "beat", "--loglevel", "info",
             "--logfile", str(root / "logs" / "celerybeat-second.log"), "--pidfile", str(root / "var" / "beat-second.pid")],
            cwd=root, env=self.project.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def holder(self) -> str | None:
        value = self.redis().get("beat:leader")
        return value.decode() if value else None

    def history(self) -> list[dict]:
        return self.project.job_runs()

    def runs_of(self, name: str) -> list[dict]:
        return [run for run in self.history() if run["name"] == name]

    def beat_logs(self) -> str:
        return self.project.log_text("celerybeat.log") + self.project.log_text("celerybeat-second.log")


def lost_with_the_leader(run: dict, killed_at: datetime) -> bool:
    """A run the killed leader recorded just before SIGKILL, perhaps without publishing it: beat
    writes the row before it publishes, so it is never sent twice, and the health check marks it lost."""
    sent_at = moment(run["sent_at"])  # None: recorded, its publish time never written
    return (run["task_id"] is not None and run["started_at"] is None
            and (sent_at is None or killed_at - timedelta(seconds=2) <= sent_at <= killed_at))


def run_scenario(project: Project) -> dict:
    now = datetime.now(SHANGHAI)
    hours = [now.hour, (now.hour + 1) % 24]
    project.env.update(TZ="UTC", BEAT_LEADER_TIMEOUT=str(LEADER_TIMEOUT), WORKER_CONCURRENCY="4")
    project.add_task_module("beat_probe", PROBE_TASKS)
    schedule_file = project.root / "app" / "tasks" / "beat_schedules.py"
    schedule_file.write_text(schedule_file.read_text() + probe_entries(hours, [h for h in range(24) if h not in hours]))
    scenario = Scenario(project)

    started = project.manager("start", "--service", "worker")
    assert started.returncode == 0, started.stderr
    scenario.start_second_beat()
    started = project.manager("start", "--service", "beat")
    assert started.returncode == 0, started.stderr

    first = wait_until(lambda: scenario.runs_of("shanghai-minute"), 90, "the minute crontab job fired")
    leader = wait_until(scenario.holder, 10, "a beat holds the lease")
    killed_pid = int(leader.split(":")[1])
    os.kill(killed_pid, signal.SIGKILL)
    killed_at = datetime.now(SHANGHAI)
    new_leader = wait_until(lambda: (h := scenario.holder()) and h != leader and h, 30, "a standby took the lease")
    if scenario.second_beat and killed_pid == scenario.second_beat.pid:
        scenario.second_beat.wait()
        scenario.start_second_beat()
    else:
        assert project.manager("start", "--service", "beat").returncode == 0
    wait_until(lambda: len(scenario.runs_of("shanghai-minute")) > len(first), 90, "the minute job fired again")
    time.sleep(2)

    project.manager("stop", "--service", "beat")
    scenario.second_beat.send_signal(signal.SIGTERM)
    scenario.second_beat.wait(30)
    unfinished = []

    def all_finished():
        unfinished[:] = [r for r in scenario.history() if r["outcome"] in ("sending", "sent", "running")
                         and not lost_with_the_leader(r, killed_at)]
        return not unfinished

    wait_until(all_finished, 60, "every sent run finished", lambda: f"(still open: {unfinished[:5]})")
    project.manager("stop", "--service", "worker")
    return {"history": scenario.history(), "results": project.task_results(), "beat_logs": scenario.beat_logs(),
            "leader": leader, "new_leader": new_leader, "killed_at": killed_at, "hours": hours}


# Each backend's scenario runs once, on one test process (pytest.ini: --dist loadgroup).
@pytest.fixture(scope="module", params=[pytest.param(backend, marks=pytest.mark.xdist_group(f"beat-{backend}"))
                                        for backend in ("embedded", "redis+postgresql")])
def scenario(request, tmp_path_factory):
    return run_backend_scenario(request.param, tmp_path_factory)


def run_backend_scenario(backend: str, tmp_path_factory) -> dict:
    extra_env, database = {}, None
    if backend != "embedded":
        database = postgres_database("celerybeat_faults")
        extra_env = {"CELERY_BROKER_URL": redis_test_url(), "DATABASE_URL": next(database)}
    project = Project(tmp_path_factory.mktemp(f"beat-{backend}"), extra_env)
    try:
        return run_scenario(project)
    finally:
        project.kill_all()
        if database:
            database.close()


def sent(history: list[dict], name: str) -> list[dict]:
    return [run for run in history if run["name"] == name and run["task_id"]]


def test_every_due_run_is_sent_once_and_run_once(scenario):
    results = scenario["results"]
    lost = [run for run in scenario["history"] if lost_with_the_leader(run, scenario["killed_at"])]
    assert len(lost) <= len({run["name"] for run in lost}), "at most one run per job dies with the leader"
    history = [run for run in scenario["history"] if run not in lost]
    keys = [(run["name"], run["due_at"]) for run in scenario["history"]]
    assert len(keys) == len(set(keys)), "no due run recorded twice"
    executed = [line["id"] for line in results if line["name"].startswith("app.tasks.beat_probe")]
    assert len(executed) == len(set(executed)), "no message ran twice"
    for name in ("fast-every-1s", "fast-every-2s", "slow-skip", "shanghai-minute"):
        runs = sent(history, name)
        sends = scenario["beat_logs"].count(f"Sending due task {name} ")
        dead = sum(run["name"] == name for run in lost)  # the killed leader may or may not have logged it
        assert runs and len(runs) <= sends <= len(runs) + dead, f"{name}: {sends} sends logged, {len(runs)} runs"
        assert {run["outcome"] for run in runs} == {"success"}, f"{name}: every sent run ran"
        assert {run["task_id"] for run in runs} <= set(executed)
    fast = sorted(moment(run["due_at"]) for run in sent(history, "fast-every-1s"))
    assert len(fast) >= 20
    assert all(later - earlier >= timedelta(seconds=0.99) for earlier, later in zip(fast, fast[1:]))
    assert "Traceback" not in scenario["beat_logs"]


def test_killed_leader_hands_over_to_the_standby(scenario):
    assert scenario["new_leader"] != scenario["leader"]
    # The killed leader's last publish times may never have been written (a batch at its next idle tick).
    after_kill = [run for run in sent(scenario["history"], "fast-every-1s")
                  if run["sent_at"] and moment(run["sent_at"]) > scenario["killed_at"]]
    assert after_kill, "the new leader sends"
    assert "leading:" in scenario["beat_logs"] and scenario["new_leader"] in scenario["beat_logs"]


def test_a_slow_job_with_skip_never_overlaps_itself(scenario):
    runs = sorted((run for run in sent(scenario["history"], "slow-skip")
                   if not lost_with_the_leader(run, scenario["killed_at"])), key=lambda run: run["started_at"])
    assert len(runs) >= 3
    for earlier, later in zip(runs, runs[1:]):
        assert moment(later["started_at"]) >= moment(earlier["finished_at"]), "runs overlapped"
    skipped = [run for run in scenario["history"] if run["name"] == "slow-skip" and run["outcome"] == "skipped_overlap"]
    assert skipped, "due runs while the previous one ran were skipped, and recorded as such"


def test_crontab_fires_at_the_shanghai_minute_on_a_utc_host_across_the_restart(scenario):
    runs = sent(scenario["history"], "shanghai-minute")
    dues = [moment(run["due_at"]).astimezone(SHANGHAI) for run in runs]
    assert len(dues) >= 2 and any(due > scenario["killed_at"] for due in dues)
    for due, run in zip(dues, runs):
        assert due.second == 0 and due.microsecond == 0 and due.hour in scenario["hours"]
        assert 0 <= run["lateness_seconds"] < 60, "never early, never a minute (let alone an hour) late"
    assert [b - a for a, b in zip(dues, dues[1:])] == [timedelta(minutes=1)] * (len(dues) - 1)
    assert not [run for run in scenario["history"] if run["name"] == "wrong-hour-trap"], \
        "a job for another hour of the day never fires"
