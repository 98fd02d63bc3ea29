"""Two beats, a killed leader, a slow job, and crontab jobs on a UTC host, run for real.

One scenario per backend (embedded Valkey + SQLite, Redis + PostgreSQL), both at once, under
TZ=UTC with BEAT_LEADER_TIMEOUT=4: a worker and two beats started at once run fast interval jobs,
a job slower than its interval with overlap "skip", a crontab job due every minute of the current
Asia/Shanghai hour, and a trap due in every other hour. Once the crontab job has fired, the
leader is SIGKILLed and started again; the scenario ends after the crontab job's next minute.
The tests below judge the history the scenario leaves.

The beats' wall clock is the host's moved forward (libfaketime, as a host whose clock is set
ahead): twice, while a slow run is under way, it jumps to a few seconds before the next minute,
so the crontab job's two minutes come within seconds instead of up to two real minutes. Without
libfaketime the beats keep the real clock and the scenario waits for the real minutes.
"""

import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis

from app.core.broker import redis_client
from tests.support.inprocess_beat import CopyHistory
from tests.support.project import Project, moment
from tests.support.services import postgres_database, redis_test_url
from tests.support.waiting import wait_until
from tests.test_beat_stalls import LIBFAKETIME, SLEEP_WORKAROUND, faked_clock_env, outcome_of, run_at_once

BACKENDS = ("embedded", "redis+postgresql")
# Both backends' scenarios run once, together, on one test process (pytest.ini: --dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600), pytest.mark.xdist_group("beat-faults")]

SHANGHAI = ZoneInfo("Asia/Shanghai")
LEADER_TIMEOUT = 4
LANDING_SECOND = 53  # where the beats' clock jumps to: the next minute 7 s later
SLOW_SECONDS = 2.5
FAST_RUNS = 25  # fast-every-1s runs sent before the scenario ends

PROBE_TASKS = f'''
import time

from app.tasks.celery_app import app


@app.task(name="app.tasks.beat_probe.quick")
def quick():
    return "ok"


@app.task(name="app.tasks.beat_probe.slow")
def slow():
    time.sleep({SLOW_SECONDS})
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


class BeatClock:
    """The beats' wall clock: the real one plus `offset` seconds, read by libfaketime from a file
    at every call; the real one where libfaketime is missing."""

    def __init__(self, directory: Path):
        self.offset = 0
        self.file, self.site = directory / "clock-offset", directory / "faketime-site"
        self.faked = LIBFAKETIME.exists()
        self.file.write_text("+0\n")
        self.site.mkdir()
        (self.site / "sitecustomize.py").write_text(SLEEP_WORKAROUND)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return faked_clock_env(base, self.file, self.site) if self.faked else base

    def now(self) -> datetime:
        return datetime.now(SHANGHAI) + timedelta(seconds=self.offset)

    def jump_before_next_minute(self) -> None:
        """Forward, within the current minute, to LANDING_SECOND (never past a minute's start)."""
        ahead = LANDING_SECOND - self.now().second
        if self.faked and ahead > 0:
            self.offset += ahead
            self.file.write_text(f"+{self.offset}\n")


class Scenario:
    def __init__(self, project: Project, database_url: str):
        self.project = project
        self.clock = BeatClock(project.root.parent)
        self.beat_env = self.clock.env(project.env)
        self.second_beat: subprocess.Popen | None = None
        self.url = project.env.get("CELERY_BROKER_URL") or f"redis+socket://{project.root}/var/run/valkey.sock"
        self.run_history = CopyHistory(database_url)

    def redis(self) -> redis.Redis:
        return redis_client(self.url, socket_timeout=2)

    def start_beat(self) -> None:
        """Beat as an operator starts it (`celery_beat_manager.py start --service beat`), on the beats' clock."""
        started = subprocess.run([sys.executable, "celery_beat_manager.py", "start", "--service", "beat"],
                                 cwd=self.project.root, env=self.beat_env, capture_output=True, text=True,
                                 timeout=180, stdin=subprocess.DEVNULL)
        assert started.returncode == 0, started.stdout + started.stderr

    def start_second_beat(self) -> None:
        root = self.project.root
        self.second_beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "beat", "--loglevel", "info",
             "--logfile", str(root / "logs" / "celerybeat-second.log"), "--pidfile", str(root / "var" / "beat-second.pid")],
            cwd=root, env=self.beat_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def holder(self) -> str | None:
        value = self.redis().get("beat:leader")
        return value.decode() if value else None

    def history(self) -> list[dict]:
        return self.run_history.runs()

    def runs_of(self, name: str) -> list[dict]:
        return [run for run in self.history() if run["name"] == name]

    def slow_run_under_way(self) -> bool:
        """A slow-skip run started within the last second: for a while nothing can be queued behind it
        (overlap "skip"), so a jump of the clock cannot make a queued run look stale."""
        started = [moment(run["started_at"]) for run in self.runs_of("slow-skip") if run["started_at"]]
        return bool(started) and datetime.now(timezone.utc) - max(started) < timedelta(seconds=1)

    def jump_clock_while_a_slow_run_is_under_way(self) -> None:
        wait_until(self.slow_run_under_way, 60, "a slow run started", self.beat_logs)
        self.clock.jump_before_next_minute()

    def beat_logs(self) -> str:
        return self.project.log_text("celerybeat.log") + self.project.log_text("celerybeat-second.log")


def lost_with_the_leader(run: dict, killed_at: datetime) -> bool:
    """A run the killed leader recorded just before SIGKILL, perhaps without publishing it: beat
    writes the row before it publishes, so it is never sent twice, and the health check marks it lost."""
    sent_at = moment(run["sent_at"])  # None: recorded, its publish time never written
    return (run["task_id"] is not None and run["started_at"] is None
            and (sent_at is None or killed_at - timedelta(seconds=2) <= sent_at <= killed_at))


def run_scenario(project: Project, database_url: str) -> dict:
    now = datetime.now(SHANGHAI)
    hours = [now.hour, (now.hour + 1) % 24]
    project.env.update(TZ="UTC", BEAT_LEADER_TIMEOUT=str(LEADER_TIMEOUT), WORKER_CONCURRENCY="4")
    project.add_task_module("beat_probe", PROBE_TASKS)
    schedule_file = project.root / "app" / "tasks" / "beat_schedules.py"
    schedule_file.write_text(schedule_file.read_text() + probe_entries(hours, [h for h in range(24) if h not in hours]))
    scenario = Scenario(project, database_url)
    try:
        return play(scenario, hours)
    finally:
        scenario.run_history.close()


def play(scenario: Scenario, hours: list[int]) -> dict:
    project = scenario.project
    started = project.manager("start", "--service", "worker")
    assert started.returncode == 0, started.stderr
    scenario.start_second_beat()
    scenario.start_beat()

    scenario.jump_clock_while_a_slow_run_is_under_way()
    first = wait_until(lambda: scenario.runs_of("shanghai-minute"), 90, "the minute crontab job fired")
    leader = wait_until(scenario.holder, 10, "a beat holds the lease")
    killed_pid = int(leader.split(":")[1])
    os.kill(killed_pid, signal.SIGKILL)
    killed_at = scenario.clock.now()
    new_leader = wait_until(lambda: (h := scenario.holder()) and h != leader and h, 30, "a standby took the lease")
    if scenario.second_beat and killed_pid == scenario.second_beat.pid:
        scenario.second_beat.wait()
        scenario.start_second_beat()
    else:
        scenario.start_beat()
    scenario.jump_clock_while_a_slow_run_is_under_way()
    wait_until(lambda: len(scenario.runs_of("shanghai-minute")) > len(first), 90, "the minute job fired again")
    wait_until(lambda: len([run for run in scenario.runs_of("fast-every-1s") if run["task_id"]]) >= FAST_RUNS, 60,
               f"{FAST_RUNS} runs of fast-every-1s were sent")

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


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> dict[str, dict | BaseException]:
    """Each backend's scenario, run once, both at once."""
    directories = {backend: tmp_path_factory.mktemp(f"beat-{backend}") for backend in BACKENDS}
    return run_at_once({backend: partial(run_backend_scenario, backend, directories[backend]) for backend in BACKENDS})


@pytest.fixture(params=BACKENDS)
def scenario(request, scenarios) -> dict:
    return outcome_of(scenarios, request.param)


def run_backend_scenario(backend: str, directory: Path) -> dict:
    extra_env, database = {}, None
    if backend != "embedded":
        database = postgres_database("celerybeat_faults")
        extra_env = {"CELERY_BROKER_URL": redis_test_url(), "DATABASE_URL": next(database)}
    project = Project(directory, extra_env)
    try:
        return run_scenario(project, extra_env.get("DATABASE_URL") or f"sqlite:///{project.root / 'var' / 'app.db'}")
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
