"""Beat stalled, starved and misled, for real: a locked run history, a frozen leader, a message
deleted from the broker, the host clock jumping back, and the database going away.

Every scenario runs a copy of the project (tests/support/project.py) with a short leader lease
(BEAT_LEADER_TIMEOUT=4: a tick a second, a 3 s lease) and judges the run history it leaves
(job_runs), the worker's task results and beat's logs.

1+2. Lock stall, then a SIGSTOP of the leader, one scenario per backend (SQLite + embedded
     Valkey, PostgreSQL + Redis), both at once: a worker and two beats. First a short lock
     (shorter than beat's bounded waits) delays one run; then the run history is locked for
     longer than the lease (LOCK TABLE ... ACCESS EXCLUSIVE / BEGIN EXCLUSIVE); then the leader
     is frozen for twice its lease (on PostgreSQL exactly between a run's record and its
     publish, see CommitGate).
     Nothing may be recorded or run twice, a skip job never overlaps itself, the frozen leader
     never publishes once it wakes up, one late run does not make the later ones late, and a
     lock is logged as one outage.
3.   A queued run's message deleted from the broker: the next run of its `overlap: skip` job is
     held back one period, not until the lost run's time limit.
4.   The clock of beat's host jumps back an hour (libfaketime): beat alerts and keeps sending.
5.   PostgreSQL cut under the leading beat for 12 s: a few log lines, and one catch-up run.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import pytest

from app.core.broker import redis_client
from tests.support.inprocess_beat import CopyHistory
from tests.support.project import Project, moment
from tests.support.services import DEFAULT_POSTGRES_ADMIN_URL, postgres_database, redis_test_url
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import FIRST_PAUSE, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

LEADER_TIMEOUT = 4  # a tick every second, a lease of 3 s
LEASE_TTL = LEADER_TIMEOUT - min(5, LEADER_TIMEOUT / 4)
LEASE_SUMMARY = "not published: the beat that recorded it lost the lease"
FINISHED = {"success", "skipped_overlap", "skipped_missed", "lost"}

PROBE_TASKS = '''
import time

from app.tasks.celery_app import app


@app.task(name="app.tasks.stall_probe.nap")
def nap():
    time.sleep(1)
    return "napped"


@app.task(name="app.tasks.stall_probe.quick")
def quick():
    return "ok"
'''

NAP, QUICK = "app.tasks.stall_probe.nap", "app.tasks.stall_probe.quick"

INCIDENTS = """
import json
from sqlalchemy import select
from app.core.database import session_scope
from app.models import AlertIncident
with session_scope() as session:
    print(json.dumps([{"key": i.key, "severity": i.severity, "summary": i.summary, "open": i.closed_at is None}
                      for i in session.scalars(select(AlertIncident).order_by(AlertIncident.id))]))
"""

SETTINGS = """
import json
from app.core.config import get_settings
settings = get_settings()
print(json.dumps({"broker_url": settings.broker_url, "run_path": str(settings.run_path),
                  "sqlite_path": str(settings.sqlite_path) if settings.sqlite_path else None}))
"""


def add_jobs(project: Project, jobs: str) -> None:
    """The probe tasks, and `jobs` (Python adding entries to BEAT_SCHEDULE) at the end of beat_schedules.py."""
    project.add_task_module("stall_probe", PROBE_TASKS)
    schedule_file = project.root / "app" / "tasks" / "beat_schedules.py"
    schedule_file.write_text(schedule_file.read_text() + "\nfrom datetime import timedelta as _every\n" + jobs)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Copy:
    """One project copy under test: its run history, its processes, its logs."""

    def __init__(self, project: Project):
        self.project = project
        self.settings = json.loads(project.python(SETTINGS).strip().splitlines()[-1])
        self.beats: dict[int, tuple[subprocess.Popen | None, str]] = {}  # pid -> (process, log file name)
        self.history = CopyHistory(project.env.get("DATABASE_URL") or f"sqlite:///{self.settings['sqlite_path']}")

    def runs(self, name: str | None = None) -> list[dict]:
        return [row for row in self.history.runs() if name is None or row["name"] == name]

    def incidents(self) -> list[dict]:
        return json.loads(self.project.python(INCIDENTS).strip().splitlines()[-1])

    def redis(self):
        return redis_client(self.settings["broker_url"], socket_timeout=2)

    def holder(self) -> str | None:
        value = self.redis().get("beat:leader")
        return value.decode() if value else None

    def start(self, service: str) -> None:
        started = self.project.manager("start", "--service", service)
        assert started.returncode == 0, started.stdout + started.stderr
        if service == "beat":
            pid = int((Path(self.settings["run_path"]) / "celerybeat.pid").read_text().split()[0])
            self.beats[pid] = (None, "celerybeat.log")

    def start_beat(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Another beat, as an operator starts a second one by hand; its log in logs/NAME.log."""
        root = self.project.root
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "beat", "--loglevel", "info",
             "--logfile", str(root / "logs" / f"{name}.log"), "--pidfile", str(root / "var" / f"{name}.pid")],
            cwd=root, env=env or self.project.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.beats[process.pid] = (process, f"{name}.log")
        return process

    def beat_log(self, pid: int) -> str:
        return self.project.log_text(self.beats[pid][1])

    def beat_logs(self) -> str:
        return "".join(self.project.log_text(log) for _, log in self.beats.values())

    def stop_beats(self) -> None:
        for pid, (process, _) in self.beats.items():
            try:
                os.kill(pid, signal.SIGCONT)  # a stopped beat cannot stop
            except ProcessLookupError:
                pass
        self.project.manager("stop", "--service", "beat")
        for process, _ in self.beats.values():
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)

    def discard(self) -> None:
        """Kill whatever the copy still runs, once the test has read what it left; close its history."""
        self.project.kill_all()
        for process, _ in self.beats.values():
            if process:
                process.wait(30)
        self.history.close()

    def wait_for_the_worker(self, timeout: float = 60) -> None:
        """Until every run sent has finished (or `timeout`): with the beats stopped, nothing else can change."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(run["outcome"] in ("sent", "running") for run in self.runs()):
            time.sleep(0.5)

    def errors(self) -> str:
        """The error lines of the beats' and the worker's logs, for a failure message."""
        lines = (self.beat_logs() + self.project.log_text("celery_worker.log")).splitlines()
        return "\n".join(line for line in lines if "ERROR/" in line or "CRITICAL/" in line
                         or "WARNING/" in line)[-4000:]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def successes(runs: list[dict], since: datetime | None = None) -> list[dict]:
    return [run for run in runs if run["outcome"] == "success" and (since is None or moment(run["due_at"]) > since)]


# -- 1 + 2: lock stall and SIGSTOP of the leader, on each backend ----------------------------------

STALL_JOBS = f'''
BEAT_SCHEDULE.update({{
    "stall-nap-skip": {{"task": "{NAP}", "schedule": _every(seconds=2),
                       "options": {{"queue": "low_priority"}}, "policy": {{"overlap": "skip"}}}},
    "stall-quick-allow": {{"task": "{QUICK}", "schedule": _every(seconds=1),
                          "options": {{"queue": "high_priority"}}, "policy": {{"overlap": "allow"}}}},
}})
'''
STALL_NAMES = ("stall-nap-skip", "stall-quick-allow")
LOCK_SECONDS = 2 * LEADER_TIMEOUT  # well past the lease (3 s) and every bounded wait (1 s)
STOP_SECONDS = 2 * LEASE_TTL
NAP_PERIOD = 2
# Phase 0: a lock over one slot of the nap job, taken LOCK_LEAD before the slot and held past it
# for less than beat's bounded waits (a third of the lease, 1 s): the run waits for it, is
# recorded when it goes, and is sent about SHORT_LOCK - LOCK_LEAD late.
LOCK_LEAD, SHORT_LOCK = 0.3, 1.0
ON_TIME = 0.45  # seconds late: on time, on a loaded 2-core machine


class HeldLock:
    """The run history locked by another client: every writer (PostgreSQL: every reader too) waits."""

    def __init__(self, copy: Copy, database_url: str | None):
        self.copy, self.database_url = copy, database_url
        self.connection = None

    def take(self) -> None:
        if self.database_url:
            import psycopg2

            self.connection = psycopg2.connect(self.database_url, connect_timeout=5)
            with self.connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '10s'")
                cursor.execute("LOCK TABLE job_runs IN ACCESS EXCLUSIVE MODE")
        else:
            self.connection = sqlite3.connect(self.copy.settings["sqlite_path"], timeout=10, isolation_level=None)
            self.connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self.connection is not None:
            self.connection.rollback() if self.database_url else self.connection.execute("ROLLBACK")
            self.connection.close()
            self.connection = None


class CommitGate:
    """Stops the leader after it sent the COMMIT of a run's record and before it publishes the run.

    A deferred trigger makes the next commit of a `sending` row sleep (shorter than beat's 1 s
    statement timeout); the leader, found sleeping in pg_stat_activity, is SIGSTOPped there. The
    server completes the commit without it: when it wakes, its run is recorded and not yet
    published, long after it lost the lease. Only the fenced publish can keep it from being sent.
    """

    SLEEP = 0.8

    def __init__(self, database_url: str):
        import psycopg2

        self.connection = psycopg2.connect(database_url, connect_timeout=5)
        self.connection.autocommit = True

    def stop_in_commit(self, pid: int, stop: signal.Signals) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(f"""
                CREATE TABLE stall_gate (armed boolean);
                CREATE FUNCTION stall_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF NEW.outcome = 'sending' THEN
                    DELETE FROM stall_gate;
                    IF FOUND THEN PERFORM pg_sleep({self.SLEEP}); END IF;
                  END IF;
                  RETURN NULL;
                END $$;
                CREATE CONSTRAINT TRIGGER stall_commit AFTER INSERT ON job_runs
                  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stall_commit();
                INSERT INTO stall_gate VALUES (true);""")

            def sleeping_commit():
                cursor.execute("SELECT client_port FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                               "AND query ILIKE 'COMMIT%%' AND pid <> pg_backend_pid()")
                return cursor.fetchone()

            try:
                port = wait_until(sleeping_commit, 15, "the leader committed a run's record",  # asleep for 0.8 s
                                  longest_pause=FIRST_PAUSE)[0]
                ports = {c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.laddr}
                os.kill(pid, stop)
                assert port in ports, f"the beat sleeping in COMMIT is the lease holder {pid}"
            finally:
                cursor.execute("DELETE FROM stall_gate; DROP TRIGGER stall_commit ON job_runs;"
                               "DROP FUNCTION stall_commit(); DROP TABLE stall_gate;")
        self.connection.close()


def run_stall_scenario(project: Project, database_url: str | None) -> dict:
    project.env.update(BEAT_LEADER_TIMEOUT=str(LEADER_TIMEOUT), WORKER_CONCURRENCY="4")
    add_jobs(project, STALL_JOBS)
    copy = Copy(project)
    try:
        return stall_phases(copy, database_url)
    finally:
        copy.discard()


def stall_phases(copy: Copy, database_url: str | None) -> dict:
    project = copy.project
    copy.start("worker")
    second = copy.start_beat("celerybeat-second")
    copy.start("beat")
    wait_until(lambda: all(len(successes(copy.runs(name))) >= 2 for name in STALL_NAMES), 60,
               "both jobs ran twice before the stall", copy.errors)
    lock = HeldLock(copy, database_url)

    # Phase 0: one run of the nap job delayed by a short lock over its slot.
    last_slot = max(moment(run["due_at"]) for run in copy.runs("stall-nap-skip"))
    periods = 1 + (utc_now() - last_slot).total_seconds() // NAP_PERIOD
    delayed_slot = last_slot + timedelta(seconds=NAP_PERIOD * periods)
    if (delayed_slot - utc_now()).total_seconds() < LOCK_LEAD + 0.2:
        delayed_slot += timedelta(seconds=NAP_PERIOD)
    time.sleep((delayed_slot - utc_now()).total_seconds() - LOCK_LEAD)
    lock.take()
    try:
        time.sleep(SHORT_LOCK)
    finally:
        lock.release()
    wait_until(lambda: [run for run in successes(copy.runs("stall-nap-skip"), delayed_slot)
                        if moment(run["due_at"]) >= delayed_slot + timedelta(seconds=3 * NAP_PERIOD)], 30,
               "the nap job ran three more times after the delayed run", copy.errors)

    # Phase 1: the run history locked for twice the leader timeout.
    offsets = {pid: len(copy.beat_log(pid)) for pid in copy.beats}
    lock.take()
    locked_at = utc_now()
    try:
        time.sleep(LOCK_SECONDS)
    finally:
        lock.release()
    released_at = utc_now()
    wait_until(lambda: all(successes(copy.runs(name), released_at) for name in STALL_NAMES), 30,
               "both jobs ran again after the lock was released", copy.errors)
    lock_logs = {pid: copy.beat_log(pid)[offset:] for pid, offset in offsets.items()}

    # Phase 2: the leader frozen for twice its lease; on PostgreSQL, between a run's record and its publish.
    leader = wait_until(copy.holder, 10, "a beat holds the lease")
    frozen_pid = int(leader.split(":")[1])
    assert frozen_pid in copy.beats, f"the lease names a beat of this copy: {leader}"
    if database_url:
        CommitGate(database_url).stop_in_commit(frozen_pid, signal.SIGSTOP)
    else:
        os.kill(frozen_pid, signal.SIGSTOP)  # wherever it is: most likely asleep between two ticks
    stopped_at = utc_now()
    try:
        new_leader = wait_until(lambda: (holder := copy.holder()) and holder != leader and holder,
                                LEADER_TIMEOUT + 5, "the standby took the lease from the frozen leader")
        time.sleep(max(0.0, STOP_SECONDS - (utc_now() - stopped_at).total_seconds()))
        log_before_resume = len(copy.beat_log(frozen_pid))
    finally:
        os.kill(frozen_pid, signal.SIGCONT)
    resumed_at = utc_now()
    wait_until(lambda: all(successes(copy.runs(name), resumed_at) for name in STALL_NAMES), 30,
               "both jobs ran after the frozen leader woke up", copy.errors)
    time.sleep(3)  # the woken beat ticks a few times as a standby
    holder_after_resume = copy.holder()
    old_leader_after_resume = copy.beat_log(frozen_pid)[log_before_resume:]

    # Phase 3: the beats stopped as an operator stops them (SIGTERM); on PostgreSQL, the leader
    # exactly between a run's record and its publish.
    if database_url:
        last_leader = int(wait_until(copy.holder, 10, "a beat holds the lease").split(":")[1])
        CommitGate(database_url).stop_in_commit(last_leader, signal.SIGTERM)
        wait_until(lambda: not alive(last_leader), 30, "the stopped leader exited")
    copy.stop_beats()
    second.wait(30)
    copy.wait_for_the_worker()
    project.manager("stop", "--service", "worker")
    runs = copy.runs()
    (project.root / "job_runs.json").write_text(json.dumps(runs, indent=1))  # for a failure's post-mortem
    return {"runs": runs, "results": project.task_results(), "beat_logs": copy.beat_logs(),
            "delayed_slot": delayed_slot, "lock_logs": lock_logs, "locked_at": locked_at, "released_at": released_at,
            "leader": leader, "new_leader": new_leader, "stopped_at": stopped_at, "resumed_at": resumed_at,
            "holder_after_resume": holder_after_resume, "old_leader_after_resume": old_leader_after_resume}


BACKENDS = ("embedded", "redis+postgresql")


def run_at_once(scenarios: dict[str, Callable[[], dict]]) -> dict[str, dict | BaseException]:
    """Each scenario's outcome (or why it failed or was skipped), the scenarios run at the same time
    in threads: each mostly waits on its own processes, locks and clocks."""
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {name: pool.submit(scenario) for name, scenario in scenarios.items()}
    return {name: future.exception() or future.result() for name, future in futures.items()}


def outcome_of(outcomes: dict[str, dict | BaseException], name: str) -> dict:
    """One scenario's outcome; its error (or skip) raised again in each test that judges it."""
    outcome = outcomes[name]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@pytest.fixture(scope="module")
def stalls(tmp_path_factory) -> dict[str, dict | BaseException]:
    """Each backend's scenario, run once, both at once."""
    directories = {backend: tmp_path_factory.mktemp(f"stall-{backend}") for backend in BACKENDS}
    return run_at_once({backend: partial(run_backend_scenario, backend, directories[backend]) for backend in BACKENDS})


# The tests of both backends' scenarios run on one test process (pytest.ini: --dist loadgroup).
@pytest.fixture(params=[pytest.param(backend, marks=pytest.mark.xdist_group("stall-scenarios"))
                        for backend in BACKENDS])
def stall(request, stalls) -> dict:
    return outcome_of(stalls, request.param)


def run_backend_scenario(backend: str, directory: Path) -> dict:
    extra_env, database, database_url = {}, None, None
    if backend != "embedded":
        database = postgres_database("celerybeat_stalls")
        database_url = next(database)
        extra_env = {"CELERY_BROKER_URL": redis_test_url(), "DATABASE_URL": database_url}
    project = Project(directory, extra_env)
    began = time.monotonic()
    try:
        scenario = {**run_stall_scenario(project, database_url), "backend": backend}
        print(f"\nstall scenario ({backend}): {time.monotonic() - began:.0f} s")
        return scenario
    finally:
        project.kill_all()
        if database:
            database.close()


def intervals_overlap(runs: list[dict]) -> list[tuple[dict, dict]]:
    ran = sorted((run for run in runs if run["started_at"]), key=lambda run: moment(run["started_at"]))
    return [(a, b) for a, b in zip(ran, ran[1:]) if moment(b["started_at"]) < moment(a["finished_at"])]


def test_stalls_record_and_run_every_due_run_at_most_once(stall):
    runs = stall["runs"]
    keys = [(run["name"], run["due_at"]) for run in runs if run["name"] in STALL_NAMES]
    assert len(keys) == len(set(keys)), "no due run recorded twice"
    executed = [line["id"] for line in stall["results"] if line["name"].startswith("app.tasks.stall_probe")]
    assert len(executed) == len(set(executed)), "no message ran twice"
    probe = [run for run in runs if run["name"] in STALL_NAMES]
    left = [run for run in probe if run["outcome"] not in FINISHED]
    assert not left, f"nothing left sending, sent or running once the beats stopped and the worker finished: {left}"
    lost = [run for run in probe if run["outcome"] == "lost"]
    assert all(run["summary"] == LEASE_SUMMARY and run["started_at"] is None for run in lost), lost
    ran = [run for run in probe if run["outcome"] == "success"]
    assert {run["task_id"] for run in ran} <= set(executed), "every run recorded as a success ran"
    sends = stall["beat_logs"].count("Sending due task stall-")
    assert sends == len(ran), "one publish logged per run that ran, none for a run marked lost"
    assert all(run["sent_at"] for run in ran), "every run published has its publish time"
    assert "Traceback" not in stall["beat_logs"]


def test_a_skip_job_never_overlaps_itself_through_the_stalls(stall):
    """Except after a run that started while the run history was locked: its worker could not record
    the start, so it blocked only as a queued run does (CELERY_BEAT_CONFIG.md §2.2, where it ends)."""
    runs = [run for run in stall["runs"] if run["name"] == "stall-nap-skip"]
    started_unrecorded = lambda run: stall["locked_at"] <= moment(run["started_at"]) <= stall["released_at"]  # noqa: E731
    overlapping = [(a, b) for a, b in intervals_overlap(runs) if not started_unrecorded(a)]
    assert not overlapping, f"runs overlapped: {overlapping[:3]}"


def test_runs_resume_after_the_run_history_is_unlocked(stall):
    for name in STALL_NAMES:
        after = successes([run for run in stall["runs"] if run["name"] == name], stall["released_at"])
        first = min(moment(run["due_at"]) for run in after)
        assert first - stall["released_at"] < timedelta(seconds=LEADER_TIMEOUT + 2), \
            f"{name} ran again within a lease of the release"
    during = [run for run in stall["runs"] if run["sent_at"]
              and stall["locked_at"] + timedelta(seconds=1) < moment(run["sent_at"]) < stall["released_at"]]
    assert not during, f"nothing recorded (so nothing sent) while the run history was locked: {during[:3]}"


def test_a_run_delayed_by_a_short_lock_does_not_delay_the_runs_after_it(stall):
    runs = {moment(run["due_at"]): run for run in successes(stall["runs"]) if run["name"] == "stall-nap-skip"}
    slot = stall["delayed_slot"]
    assert slot in runs and runs[slot]["lateness_seconds"] >= SHORT_LOCK - LOCK_LEAD - 0.2, \
        f"the run due {slot} waited for the lock and was sent: {runs.get(slot)}"
    following = [runs.get(slot + timedelta(seconds=NAP_PERIOD * k)) for k in (1, 2, 3)]
    assert all(following), f"the next three slots ran: {following}"
    late = [(run["due_at"][11:23], round(run["lateness_seconds"], 2)) for run in following
            if run["lateness_seconds"] > ON_TIME]
    delayed_by = runs[slot]["lateness_seconds"]
    assert not late, f"runs after the delayed one (sent {delayed_by:.2f} s late) were as late: {late}"


def test_a_locked_run_history_is_logged_as_one_outage_not_a_line_every_second(stall):
    for pid, log in stall["lock_logs"].items():
        lines = [line for line in log.splitlines() if "unreachable" in line or "reachable again" in line]
        assert len(lines) <= 2, f"beat {pid} logged the {LOCK_SECONDS} s lock in {len(lines)} lines:\n" + \
            "\n".join(lines)
    assert "Traceback" not in "".join(stall["lock_logs"].values())


def test_a_frozen_leader_hands_over_and_never_publishes_when_it_wakes(stall):
    assert stall["new_leader"] != stall["leader"], "the standby took the lease"
    assert stall["holder_after_resume"] != stall["leader"], "the woken beat did not take the lease back"
    woken = stall["old_leader_after_resume"]
    assert "Sending due task" not in woken, f"the woken beat published:\n{woken[-2000:]}"
    lost = [run for run in stall["runs"] if run["outcome"] == "lost"]
    if stall["backend"] != "embedded":  # frozen between its record and its publish (CommitGate)
        assert len(lost) == 1 and lost[0]["summary"] == LEASE_SUMMARY, lost
        assert stall["stopped_at"] - timedelta(seconds=2) < moment(lost[0]["due_at"]) < stall["stopped_at"]
        assert "after it was recorded; marked lost" in woken, woken[-2000:]
    during = [run for run in stall["runs"] if run["sent_at"]
              and stall["stopped_at"] < moment(run["sent_at"]) < stall["resumed_at"]]
    assert during, "the new leader sent while the old one was frozen"


# -- 3: a queued run's message deleted from the broker -------------------------------------------

QUEUED_PERIOD = 3
QUEUED_JOBS = f'''
BEAT_SCHEDULE.update({{
    "queued-skip": {{"task": "{QUICK}", "schedule": _every(seconds={QUEUED_PERIOD}),
                    "options": {{"queue": "low_priority"}}, "policy": {{"overlap": "skip"}}}},
}})
'''


def test_a_run_whose_message_was_deleted_holds_its_job_back_one_period_only(tmp_path):
    project = Project(tmp_path, {"BEAT_LEADER_TIMEOUT": str(LEADER_TIMEOUT)})
    add_jobs(project, QUEUED_JOBS)
    copy = Copy(project)
    try:
        copy.start("beat")  # no worker yet: the first run waits in its queue

        def queued_run():
            runs = [run for run in copy.runs("queued-skip") if run["task_id"]]
            if not runs:
                return None
            messages = copy.redis().lrange("low_priority", 0, -1)
            message = next((m for m in messages if runs[0]["task_id"].encode() in m), None)
            return message and (runs[0], message)

        lost, message = wait_until(queued_run, 30, "a run of the job waits in low_priority", copy.errors)
        assert copy.redis().lrem("low_priority", 1, message) == 1
        deleted_at = utc_now()
        copy.start("worker")

        def next_success():
            runs = copy.runs("queued-skip")
            later = [run for run in runs if moment(run["due_at"]) > moment(lost["due_at"]) and run["task_id"]]
            first = min(later, key=lambda run: moment(run["due_at"]), default=None)
            return first if first and first["outcome"] == "success" else None

        # Before this round an unstarted run blocked its job for hard limit + expiry (over ten minutes).
        following = wait_until(next_success, 4 * QUEUED_PERIOD + 20, "a later run of the job was sent and ran",
                               copy.errors)
        runs = copy.runs("queued-skip")
    finally:
        copy.discard()

    held_back = moment(following["due_at"]) - moment(lost["due_at"])
    between = [run for run in runs if moment(lost["due_at"]) < moment(run["due_at"]) < moment(following["due_at"])]
    # The slot after the lost run falls inside 1.5 periods of it (skipped: the run might still start);
    # the one after that is sent.
    assert held_back <= timedelta(seconds=2 * QUEUED_PERIOD), f"held back {held_back}: {runs}"
    assert [run["outcome"] for run in between] == ["skipped_overlap"] * len(between) and len(between) <= 1
    sent_after = moment(following["sent_at"]) - deleted_at
    assert sent_after <= timedelta(seconds=2 * QUEUED_PERIOD + 1), f"sent {sent_after} after the deletion"
    assert next(run for run in runs if run["task_id"] == lost["task_id"])["outcome"] == "sent", \
        "the deleted run never started"


# -- 4 + 5: run at the same time, on one test process (pytest.ini: --dist loadgroup) --------------


@pytest.fixture(scope="module")
def side_scenarios(tmp_path_factory) -> dict[str, dict | BaseException]:
    """The clock jump and the database outage, each run once, both at once: each mostly waits (for
    a minute of the new time line, for the outage to end)."""
    return run_at_once({"clock-jump": partial(clock_jump_scenario, tmp_path_factory.mktemp("clock-jump")),
                        "database-outage": partial(outage_scenario, tmp_path_factory.mktemp("database-outage"))})


# -- 4: the host's clock jumps back --------------------------------------------------------------

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
# libfaketime 0.9.10 (Debian bookworm) turns Python 3.11's time.sleep, clock_nanosleep(CLOCK_MONOTONIC,
# TIMER_ABSTIME), into EINVAL when the monotonic clock is not faked (wolfcw/libfaketime#426). Beat's
# sleeps are relative anyway: sleep them through select(), which libfaketime passes through. The
# clocks beat reads (wall faked, monotonic real) are left exactly as libfaketime makes them.
SLEEP_WORKAROUND = '''
import select
import time


def _relative_sleep(seconds):
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)


time.sleep = _relative_sleep
'''
CLOCK_JOBS = f'''
BEAT_SCHEDULE.update({{
    "clock-minute": {{"task": "{QUICK}", "schedule": crontab(minute="*"), "options": {{"queue": "high_priority"}}}},
    "clock-interval": {{"task": "{QUICK}", "schedule": _every(seconds=2), "options": {{"queue": "high_priority"}}}},
}})
'''
# The clock goes back one hour and a few seconds, chosen so that the new time is at second 50 of
# a minute: the crontab's next minute comes 10 s after the jump (beat notices it at its next tick).
LANDING_SECOND = 50


def faked_clock_env(base: dict[str, str], offset_file: Path, site: Path) -> dict[str, str]:
    return {**base, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset_file),
            "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(site), base.get("PYTHONPATH")]))}


def clock_jump_scenario(tmp_path: Path) -> dict:
    if not LIBFAKETIME.exists():
        pytest.skip(f"libfaketime not installed ({LIBFAKETIME} missing: apt-get install libfaketime)")
    offset_file, site = tmp_path / "clock-offset", tmp_path / "faketime-site"
    offset_file.write_text("+0\n")
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLEEP_WORKAROUND)
    project = Project(tmp_path, {"BEAT_LEADER_TIMEOUT": str(LEADER_TIMEOUT)})
    env = faked_clock_env(project.env, offset_file, site)
    (tmp_path / "probe").write_text("-1h\n")
    probe = subprocess.run([sys.executable, "-c", "import time; time.sleep(0.01); print(time.time())"],
                           env={**env, "FAKETIME_TIMESTAMP_FILE": str(tmp_path / "probe")}, capture_output=True,
                           text=True, timeout=30)
    assert probe.returncode == 0 and abs(float(probe.stdout) + 3600 - time.time()) < 5, \
        f"libfaketime fakes this Python's clock: {probe.stdout}{probe.stderr}"
    add_jobs(project, CLOCK_JOBS)
    copy = Copy(project)
    try:
        copy.start("worker")  # the worker keeps the real clock: only beat's host is misled
        beat = copy.start_beat("celerybeat", env)
        wait_until(lambda: len(successes(copy.runs("clock-interval"))) >= 2, 60, "the interval job ran",
                   copy.errors)

        now = time.time()
        offset = 3600 + (int(now) % 60 - LANDING_SECOND) % 60
        offset_file.write_text(f"-{offset}\n")
        jumped_real = utc_now()
        fake_jump = jumped_real - timedelta(seconds=offset)
        next_minute = fake_jump.replace(second=0, microsecond=0) + timedelta(minutes=1)

        critical = wait_until(lambda: next((line for line in copy.beat_logs().splitlines()
                                            if "the clock of beat's host went back by" in line), None),
                              10, "beat noticed the clock going back", copy.errors)

        def after_jump(name):  # due on the new time line: after the jump, well before the old now
            return [run for run in successes(copy.runs(name), fake_jump)
                    if moment(run["due_at"]) < jumped_real - timedelta(minutes=30)]

        interval_after = wait_until(lambda: after_jump("clock-interval"), 15,
                                    "the interval job was sent and ran after the jump", copy.errors)
        wait_real = (next_minute - fake_jump).total_seconds() - (utc_now() - jumped_real).total_seconds()
        minute_after = wait_until(lambda: after_jump("clock-minute"), wait_real + 15,
                                  "the crontab job fired at the next minute of the new time", copy.errors)
        return {"critical": critical, "offset": offset, "incidents": copy.incidents(), "fake_jump": fake_jump,
                "next_minute": next_minute, "interval_after": interval_after, "minute_after": minute_after,
                "beat_alive": beat.poll() is None, "interval_runs": copy.runs("clock-interval"),
                "minute_runs": copy.runs("clock-minute"), "log": copy.beat_logs()}
    finally:
        copy.discard()


@pytest.mark.xdist_group("stall-side-scenarios")
def test_beat_alerts_on_a_backward_clock_jump_and_keeps_sending(side_scenarios):
    jump = outcome_of(side_scenarios, "clock-jump")
    critical, offset, incidents = jump["critical"], jump["offset"], jump["incidents"]
    assert "CRITICAL" in critical and any(f"went back by {offset + d} s" in critical for d in (-1, 0, 1)), critical
    assert [i for i in incidents if i["key"] == "beat:clock" and i["open"] and i["severity"] == "critical"], incidents
    first_interval = min(moment(run["due_at"]) for run in jump["interval_after"])
    assert first_interval - jump["fake_jump"] < timedelta(seconds=5), "the interval job did not wait out the hour"
    assert min(moment(run["due_at"]) for run in jump["minute_after"]) == jump["next_minute"], jump["minute_runs"]
    keys = [(run["name"], run["due_at"]) for run in jump["interval_runs"] + jump["minute_runs"]]
    assert len(keys) == len(set(keys)), "no slot recorded twice"
    assert jump["beat_alive"], "beat survived the jump"
    assert "Traceback" not in jump["log"]


# -- 5: PostgreSQL cut under the leading beat ----------------------------------------------------

OUTAGE_SECONDS = 12  # a log line per retry (every second) would be twice the few allowed
OUTAGE_PERIOD = 2
OUTAGE_JOBS = f'''
BEAT_SCHEDULE.update({{
    "outage-allow": {{"task": "{QUICK}", "schedule": _every(seconds={OUTAGE_PERIOD}),
                     "options": {{"queue": "high_priority"}}, "policy": {{"overlap": "allow"}}}},
}})
'''


def proxied(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"))


def outage_scenario(tmp_path: Path) -> dict:
    database = postgres_database("celerybeat_stall_outage")
    direct_url = next(database)
    target = urlsplit(os.environ.get("TEST_POSTGRES_ADMIN_URL", DEFAULT_POSTGRES_ADMIN_URL))
    proxy = TcpProxy(target.hostname, target.port or 5432).start()
    # The embedded broker; the worker reaches the database directly, beat through the proxy.
    project = Project(tmp_path, {"BEAT_LEADER_TIMEOUT": str(LEADER_TIMEOUT), "DATABASE_URL": direct_url})
    add_jobs(project, OUTAGE_JOBS)
    copy = Copy(project)
    try:
        copy.start("worker")
        project.env["DATABASE_URL"] = proxied(direct_url, proxy.port)
        copy.start("beat")
        project.env["DATABASE_URL"] = direct_url  # the test reads the history directly
        wait_until(lambda: len(successes(copy.runs("outage-allow"))) >= 2, 60, "the job ran", copy.errors)
        log_offset = len(project.log_text("celerybeat.log"))

        proxy.cut()
        cut_at = utc_now()
        time.sleep(OUTAGE_SECONDS)
        restored_at = utc_now()
        proxy.restore()
        wait_until(lambda: len(successes(copy.runs("outage-allow"), restored_at)) >= 3, 30,
                   "three regular runs after the catch-up", copy.errors)
        return {"cut_at": cut_at, "restored_at": restored_at, "log_offset": log_offset,
                "beat_alive": alive(next(iter(copy.beats))), "runs": copy.runs("outage-allow"),
                "log": project.log_text("celerybeat.log")}
    finally:
        copy.discard()
        proxy.stop()
        database.close()


@pytest.mark.xdist_group("stall-side-scenarios")
def test_a_database_outage_under_beat_logs_a_few_lines_and_catches_up_once(side_scenarios):
    outage = outcome_of(side_scenarios, "database-outage")
    cut_at, restored_at, runs, log = outage["cut_at"], outage["restored_at"], outage["runs"], outage["log"]
    outage_lines = [line for line in log[outage["log_offset"]:].splitlines() if "reachable" in line]
    assert 2 <= len(outage_lines) <= 6, f"{len(outage_lines)} lines about a {OUTAGE_SECONDS} s outage:\n" + \
        "\n".join(outage_lines[:8])
    assert any("database unreachable" in line for line in outage_lines), outage_lines
    assert any("database reachable again after" in line for line in outage_lines), outage_lines
    assert "Traceback" not in log
    assert outage["beat_alive"], "beat survived the outage"

    before = [run for run in runs if moment(run["due_at"]) <= cut_at]
    last_before = max(moment(run["due_at"]) for run in before)
    after = sorted((run for run in runs if moment(run["due_at"]) > last_before), key=lambda run: run["due_at"])
    catch_up, regular = after[0], after[1:]
    assert moment(catch_up["due_at"]) - last_before >= timedelta(seconds=OUTAGE_SECONDS - 2 * OUTAGE_PERIOD), \
        f"the slots missed during the outage were coalesced into one run: {after[:5]}"
    assert moment(catch_up["sent_at"]) > restored_at
    missed = [run for run in after if moment(run["due_at"]) <= restored_at]
    assert missed == [catch_up], f"one catch-up run for the slots missed, not one per slot: {missed}"
    # After the catch-up, at most one run per slot: the slot that may have passed while the catch-up
    # was being recorded, then the regular ones, each due a whole number of periods after the last.
    already_due = [run for run in regular if moment(run["due_at"]) < moment(catch_up["sent_at"])]
    assert len(already_due) <= 1, f"slots that had passed when the catch-up went out: {already_due}"
    gaps = [(moment(later["due_at"]) - moment(earlier["due_at"])).total_seconds() / OUTAGE_PERIOD
            for earlier, later in zip(after, after[1:])]
    assert all(gap >= 1 and abs(gap - round(gap)) < 1e-3 for gap in gaps), \
        f"runs after the outage are on distinct slots: {after}"
    assert regular and {run["outcome"] for run in after} == {"success"}
