"""Faults provoked for real while the service runs: the broker restarts, the database goes away.

The broker restart runs on both backends: the embedded Valkey is stopped and started as a
restart does; for Redis + PostgreSQL the copy gets a Redis server of its own, so the machine's
shared Redis is never restarted. The database outage needs a server to lose, so it runs on
PostgreSQL only, through a proxy the test cuts and restores.
"""

import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from app.core.broker import find_server_binary
from tests.support.project import Project, free_port, moment
from tests.support.services import DEFAULT_POSTGRES_ADMIN_URL, postgres_database
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# Long enough that several 1-second runs fall due while the broker is down.
OUTAGE_SECONDS = 5
PROBE_JOBS = ("fault-probe-skip", "fault-probe-allow")

PROBE_TASKS = '''
from app.tasks.celery_app import app


@app.task(name="app.tasks.fault_probe.tick")
def tick():
    """One due run of a fast job; nothing to do."""
    return "ok"
'''

PROBE_ENTRIES = '''
from datetime import timedelta as _interval

BEAT_SCHEDULE.update({
    "fault-probe-skip": {"task": "app.tasks.fault_probe.tick", "schedule": _interval(seconds=1),
                         "options": {"queue": Queue.HIGH_PRIORITY}},
    "fault-probe-allow": {"task": "app.tasks.fault_probe.tick", "schedule": _interval(seconds=1),
                          "options": {"queue": Queue.HIGH_PRIORITY}, "policy": {"overlap": "allow"}},
})
'''

CANCELLED_ON_LOSS = re.compile(r"Task \S+\[(?P<id>[0-9a-f-]+)\] cannot be acknowledged after a connection loss")
SUCCEEDED = re.compile(r"Task \S+\[(?P<id>[0-9a-f-]+)\] succeeded in")


def finished_as_the_link_dropped(worker_log: str) -> set[str]:
    """Tasks Celery cancelled on the lost connection (worker_cancel_long_running_tasks_on_connection_loss)
    after their child had already logged success: their result was still on its way to the worker's
    main process, so Celery took them for running, did not ack them, and they run again."""
    succeeded, cancelled_after = set(), set()
    for line in worker_log.splitlines():
        if match := SUCCEEDED.search(line):
            succeeded.add(match["id"])
        elif (match := CANCELLED_ON_LOSS.search(line)) and match["id"] in succeeded:
            cancelled_after.add(match["id"])
    return cancelled_after


EMBEDDED_BROKER = """
import sys
from app.core.broker import EmbeddedBroker
from app.core.config import get_settings
broker = EmbeddedBroker(get_settings())
if sys.argv[1] == "stop":
    broker.stop()
    assert not broker.ping(), "the embedded broker still answers"
else:
    broker.start()
"""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class PrivateRedis:
    """A Valkey server of this test's own on a free 127.0.0.1 port, append-only in `directory`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> "PrivateRedis":
        self.process = subprocess.Popen(
            [str(find_server_binary()), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
             "--logfile", str(self.directory / "server.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_until(lambda: self._answers(client), 15, f"private Redis on port {self.port} answers")
        return self

    def _answers(self, client: redis.Redis) -> bool:
        assert self.process.poll() is None, (self.directory / "server.log").read_text()
        try:
            return client.ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """SIGTERM: a clean shutdown, which writes the append-only file out first."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class BrokerRestart:
    """Stops and starts the broker the copy uses: a real restart of the server process."""

    def __init__(self, project: Project, tmp_path: Path):
        self.project = project
        self.private: PrivateRedis | None = None
        if "CELERY_BROKER_URL" in project.env:  # never restart the machine's shared Redis
            self.private = PrivateRedis(tmp_path / "redis").start()
            project.env["CELERY_BROKER_URL"] = self.private.url

    def stop(self) -> None:
        if self.private:
            self.private.stop()
        else:
            self.project.python(EMBEDDED_BROKER, "stop")

    def start(self) -> None:
        if self.private:
            self.private.start()
        else:
            self.project.python(EMBEDDED_BROKER, "start")

    def close(self) -> None:
        """Stop the copy's services, then the broker (the manager stops an embedded one itself)."""
        self.project.manager("stop", "--service", "all", "--timeout", "20")
        if self.private:
            self.private.stop()


def service_errors(project: Project) -> str:
    """The error lines of beat's and the worker's logs, for a failure message."""
    lines = (project.log_text("celery_worker.log") + project.log_text("celerybeat.log")).splitlines()
    return "\n".join(line for line in lines if "ERROR/" in line or "CRITICAL/" in line)[-3000:]


def probe_runs(project: Project) -> list[dict]:
    return [run for run in project.job_runs() if run["name"] in PROBE_JOBS]


def succeeded_since(runs: list[dict], since: datetime) -> set[str]:
    """The probe jobs with a run sent and finished successfully after `since`."""
    return {run["name"] for run in runs
            if run["outcome"] == "success" and run["sent_at"] and moment(run["sent_at"]) > since}


def test_broker_restart_loses_no_due_job_and_sends_none_twice(project, tmp_path):
    broker = BrokerRestart(project, tmp_path)
    try:
        project.env.update(BEAT_LEADER_TIMEOUT="4")
        project.add_task_module("fault_probe", PROBE_TASKS)
        schedule_file = project.root / "app" / "tasks" / "beat_schedules.py"
        schedule_file.write_text(schedule_file.read_text() + PROBE_ENTRIES)
        for service in ("worker", "beat"):
            started = project.manager("start", "--service", service)
            assert started.returncode == 0, started.stderr
        began = utc_now()
        wait_until(lambda: succeeded_since(probe_runs(project), began) == set(PROBE_JOBS), 60,
                   "both jobs ran before the restart", lambda: service_errors(project))

        broker.stop()
        went_down = utc_now()
        time.sleep(OUTAGE_SECONDS)
        came_back = utc_now()  # before the server starts: nothing can be sent between these two
        broker.start()
        wait_until(lambda: succeeded_since(probe_runs(project), came_back) == set(PROBE_JOBS), 60,
                   "both jobs ran again after the restart", lambda: service_errors(project))
        time.sleep(2)  # a few more runs through the reconnected processes

        assert project.manager("stop", "--service", "beat").returncode == 0
        unfinished = lambda: [r for r in probe_runs(project) if r["outcome"] in ("sending", "sent", "running")]
        wait_until(lambda: not unfinished(), 30, "every sent run finished",
                   lambda: f"{unfinished()}\n{service_errors(project)}")
        runs, results = project.job_runs(), project.task_results()
    finally:
        broker.close()

    keys = [(run["name"], run["due_at"]) for run in runs if run["due_at"]]
    assert len(keys) == len(set(keys)), "no due run recorded twice"
    executed = [line["id"] for line in results]
    twice = {task_id for task_id in executed if executed.count(task_id) > 1}
    assert twice <= finished_as_the_link_dropped(project.log_text("celery_worker.log")), \
        "no message ran twice, except where the guarantee ends (CELERY_BEAT_CONFIG.md, partition)"
    assert all(executed.count(task_id) <= 2 for task_id in twice)
    sent = [run for run in runs if run["name"] in PROBE_JOBS and run["task_id"]]
    assert {run["outcome"] for run in sent} == {"success"}, "every sent run ran: the broker kept what was queued"
    assert {run["task_id"] for run in sent} <= set(executed)
    assert not [run for run in sent if went_down < moment(run["sent_at"]) < came_back], "nothing sent while down"

    after = [run for run in sent if moment(run["sent_at"]) > came_back]
    assert {run["name"] for run in after} == set(PROBE_JOBS), "beat reconnected and sent every job again"
    assert [run for run in after if moment(run["started_at"]) > came_back], "the worker reconnected and ran them"
    for name in PROBE_JOBS:
        last_before = max(moment(run["due_at"]) for run in sent if run["name"] == name and moment(run["sent_at"]) < went_down)
        catch_up = min((run for run in after if run["name"] == name), key=lambda run: moment(run["due_at"]))
        # The runs that fell due during the outage were coalesced into this one (policy missed="run_once").
        assert (moment(catch_up["due_at"]) - last_before).total_seconds() > OUTAGE_SECONDS - 1, name
        assert catch_up["lateness_seconds"] > 0
    # Whether beat logs the outage depends on redis-py's own retries outlasting it; what it sent does not.
    assert "Traceback" not in project.log_text("celerybeat.log")


def proxied(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's (user and database kept)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"))


@pytest.fixture
def proxied_postgres(tmp_path):
    """A fresh PostgreSQL database, reached through a proxy the test can cut."""
    database = postgres_database("celerybeat_faults_db")
    url = next(database)
    target = urlsplit(os.environ.get("TEST_POSTGRES_ADMIN_URL", DEFAULT_POSTGRES_ADMIN_URL))
    proxy = TcpProxy(target.hostname, target.port or 5432).start()
    yield proxy, proxied(url, proxy.port)
    proxy.stop()
    database.close()


def test_job_retries_while_the_database_is_down_and_succeeds_when_it_returns(proxied_postgres, tmp_path):
    # The embedded SQLite file has no server to lose: this runs on PostgreSQL only.
    proxy, database_url = proxied_postgres
    # The embedded broker: the database is what fails here, and the machine's Redis stays untouched.
    project = Project(tmp_path, {"DATABASE_URL": database_url})
    try:
        csv_file = tmp_path / "deliveries.csv"
        csv_file.write_text("reference,recipient_name,phone,address,carrier,tracking_number,deadline\n"
                            "CASE-1,张三,13800138000,北京市朝阳区建国路1号,ems,EM100000001CN,2099-12-31\n",
                            encoding="utf-8")
        imported = project.app_cli("deliveries", "import", str(csv_file))
        assert imported.returncode == 0, imported.stderr
        for service in ("simulator", "worker"):
            started = project.manager("start", "--service", service)
            assert started.returncode == 0, started.stderr

        proxy.cut()
        sent = project.manager("run", "check-pending-tasks", "--no-wait")
        assert sent.returncode == 0, sent.stderr
        task_id = sent.stdout.strip()
        retry = f"check_pending_tasks[{task_id}] retry:"
        # CRITICAL_POLICY waits 0-30 s before the first retry, 0-60 s before a second (backoff factor
        # 30, full jitter); restored as soon as the first failure shows, a retry finds it back.
        wait_until(lambda: retry in project.log_text("celery_worker.log"), 60, "the task failed and was retried")
        proxy.restore()

        line = wait_until(lambda: next((r for r in project.task_results() if r["id"] == task_id), None), 75,
                          "the retried task finished")
        assert line["state"] == "SUCCESS" and line["retries"] >= 1, line
        assert line["result"]["pending"] == 1, "it claimed the imported delivery"
        wait_until(lambda: [d["status"] for d in json.loads(project.app_cli("deliveries", "list", "--json").stdout)]
                   == ["in_transit"], 30, "the delivery it sent for polling was polled")
        worker_log = project.log_text("celery_worker.log")
        assert "OperationalError" in worker_log[worker_log.index(retry):].splitlines()[0]
    finally:
        project.manager("stop", "--service", "all", "--timeout", "20")
        project.kill_all()
