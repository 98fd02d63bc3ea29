"""A data volume fills up for real (a small tmpfs filled with dd) under the running service, then is freed.

The worker and beat must stay the same processes, an alert must reach a real group robot on
127.0.0.1 without the broker (its disk is the full one), and everything must resume by itself once
the space is back: the recovery message arrives, a system-health-check succeeds, new tasks run, and
the message the worker had taken when the broker began refusing writes is not lost.

Needs root (it mounts tmpfs); skipped otherwise.
"""

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import redis

from app.core.broker import find_server_binary
from tests.services.test_alerts import Robot
from tests.support.project import Project
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TMPFS_SIZE = "8m"
BLOB = 64 * 1024  # a task argument this large cannot fit in the slack of the broker's last page

PROBE_TASKS = '''
from app.tasks.celery_app import app


@app.task(name="app.tasks.disk_probe.echo")
def echo(blob):
    """How long its argument was."""
    return len(blob)
'''

SEND = """
import sys
from app.tasks.celery_app import app
try:
    result = app.send_task("app.tasks.disk_probe.echo", args=["x" * int(sys.argv[1])])
except Exception as error:
    print("REFUSED", type(error).__name__, error)
else:
    print("SENT", result.id)
"""

# Through the result backend (the broker's Redis): the answer does not need the logs volume.
RUN = """
import sys
from app.tasks.celery_app import app
print("RESULT", app.send_task("app.tasks.disk_probe.echo", args=["x" * int(sys.argv[1])]).get(timeout=60))
"""

RUN_PATH = "from app.core.config import get_settings; print(get_settings().run_path)"


@contextmanager
def tmpfs(directory: Path, size: str = TMPFS_SIZE):
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros until the volume has no space left (dd stops at ENOSPC)."""
    filler = directory / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
    stats = os.statvfs(directory)
    assert stats.f_bavail == 0, "the tmpfs is not full"
    return filler


class Service:
    """One of the copy's background services, by the PID file the manager wrote."""

    def __init__(self, project: Project, pidfile: str):
        run_path = Path(project.python(RUN_PATH).strip())
        self.pid = int((run_path / pidfile).read_text().strip())
        self.started = psutil.Process(self.pid).create_time()

    def same_process_alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            return process.create_time() == self.started and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


@pytest.fixture
def robot():
    server = Robot()
    yield server
    server.close()


@pytest.fixture
def copy(tmp_path, robot):
    """The embedded default, alerting to the robot, looking at its volumes every second."""
    project = Project(tmp_path, {"ALERT_WEBHOOK_URL": robot.url(), "DISK_WATCH_INTERVAL": "1"})
    project.add_task_module("disk_probe", PROBE_TASKS)
    yield project
    project.manager("stop", "--service", "all", "--timeout", "20")
    project.kill_all()


def messages_about(robot: Robot, title: str) -> list[str]:
    """The robot's messages whose heading is `title` (a message's first line is `### <title>`)."""
    return [text for text in robot.contents() if text.split("\n", 1)[0] == f"### {title}"]


def alerts(robot: Robot, key: str) -> list[str]:
    return messages_about(robot, f"【告警 ALERT】{key}")


def recoveries(robot: Robot, key: str) -> list[str]:
    return messages_about(robot, f"【告警恢复 RESOLVED】{key}")


def start(project: Project) -> tuple[Service, Service]:
    for service in ("worker", "beat"):
        started = project.manager("start", "--service", service)
        assert started.returncode == 0, started.stdout + started.stderr
    return Service(project, "celery_worker.pid"), Service(project, "celerybeat.pid")


def logs_of(project: Project) -> str:
    return (project.log_text("celery_worker.log")[-4000:] + "\n--- beat ---\n" +
            project.log_text("celerybeat.log")[-2000:])


def health_check(project: Project) -> dict:
    """The health check's report, once a worker answers on its queue: a worker that has just reconnected
    to the broker runs tasks before its remote-control channel answers `run`'s inspect (CI, loaded)."""
    def ran():
        done = project.manager("run", "system-health-check", "--timeout", "60", timeout=90)
        return done if "no running worker consumes" not in done.stderr else None

    done = wait_until(ran, 60, "a worker answering on high_priority")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_broker_volume_full_worker_and_beat_stay_up_alert_and_resume(copy, robot):
    broker_dir = copy.root / "var" / "broker"
    key = f"disk:{broker_dir.resolve()}"
    with tmpfs(broker_dir):
        worker, beat = start(copy)
        filler = fill(broker_dir)
        # At once, before anything else writes: the broker accepts this push, fails to append it to
        # its full AOF, and refuses every write after it, the idle worker's record of the message
        # it has just taken off the queue included.
        sent = copy.python(SEND, str(BLOB)).strip()

        wait_until(lambda: alerts(robot, key), 30, f"an alert about {key}",
                   lambda: f"{robot.contents()}\n{logs_of(copy)}")
        assert "严重 CRITICAL" in alerts(robot, key)[0] and "100.0% used" in alerts(robot, key)[0]

        def reconnecting() -> bool:
            assert worker.same_process_alive(), f"the worker died:\n{logs_of(copy)}"
            return copy.log_text("celery_worker.log").count("Cannot connect") >= 2

        wait_until(reconnecting, 30, "the worker meets the refusal and keeps reconnecting", lambda: logs_of(copy))
        assert "MISCONF" in copy.log_text("celery_worker.log")
        assert beat.same_process_alive(), f"beat died:\n{logs_of(copy)}"

        filler.unlink()
        wait_until(lambda: recoveries(robot, key), 30, f"the recovery of {key}", lambda: robot.contents())
        if sent.startswith("SENT"):
            task_id = sent.split()[1]
            [echo] = wait_until(lambda: [line for line in copy.task_results() if line["id"] == task_id], 60,
                                "the message the worker took while the broker refused writes runs once the space "
                                "is back (not lost)", lambda: logs_of(copy))
            assert echo["state"] == "SUCCESS" and echo["result"] == BLOB, echo
        else:  # the broker refused the push itself: the sender was told, nothing was taken
            assert "MISCONF" in sent, sent

        report = health_check(copy)
        checks = {check["name"]: check for check in report["checks"]}
        assert checks["broker"]["status"] == "ok" and checks["database"]["status"] == "ok", report
        assert copy.python(RUN, "10").split() == ["RESULT", "10"], "a task sent after the recovery runs"
        assert worker.same_process_alive() and beat.same_process_alive(), logs_of(copy)
        assert "Unrecoverable error" not in copy.log_text("celery_worker.log")

    # Two watching processes (the worker's and beat's), one incident store: one alert, one recovery.
    assert len(alerts(robot, key)) == 1 and len(recoveries(robot, key)) == 1, robot.contents()


def test_logs_volume_full_the_worker_keeps_running_tasks(copy, robot):
    logs_dir = copy.root / "logs"
    key = f"disk:{logs_dir.resolve()}"
    with tmpfs(logs_dir):
        worker, beat = start(copy)
        filler = fill(logs_dir)

        wait_until(lambda: alerts(robot, key), 30, f"an alert about {key}", lambda: robot.contents())
        for size in (1, 2, 3):  # each has a log line (and a task_results.log line) it cannot write
            assert copy.python(RUN, str(size)).split() == ["RESULT", str(size)]
        assert worker.same_process_alive(), "the worker died with its log volume full"
        assert beat.same_process_alive(), "beat died with its log volume full"

        filler.unlink()
        wait_until(lambda: recoveries(robot, key), 30, f"the recovery of {key}", lambda: robot.contents())
        assert copy.python(RUN, "7").split() == ["RESULT", "7"]
        # The worker's log is written again by itself: this task's line, and no restart.
        wait_until(lambda: [line for line in copy.task_results() if line.get("result") == 7], 30,
                   "task_results.log written again", lambda: copy.log_text("task_results.log")[-2000:])
        assert worker.same_process_alive() and beat.same_process_alive()
    assert len(alerts(robot, key)) == 1 and len(recoveries(robot, key)) == 1, robot.contents()


@contextmanager
def full_valkey(tmp_path: Path):
    """A Valkey of this test's own whose append-only file lives on a full tmpfs: it refuses writes."""
    data, sock = tmp_path / "data", tmp_path / "valkey.sock"
    with tmpfs(data, "2m"):
        server = subprocess.Popen([str(find_server_binary()), "--port", "0", "--unixsocket", str(sock),
                                   "--dir", str(data), "--appendonly", "yes", "--save", ""],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(unix_socket_path=str(sock))
            wait_until(lambda: _answers(client), 10, "the private Valkey answers")
            fill(data)
            client.set("spill", "x" * BLOB)  # accepted, then its AOF write fails: MISCONF from now on
            yield f"redis+socket://{sock}"
        finally:
            server.terminate()
            server.wait(10)


def ours_on(url: str):
    """A kombu connection to `url` through this service's transport (as beat's fence() sets its own)."""
    from kombu import Connection

    from app.core.broker_transport import Transport

    connection = Connection(url)
    connection.transport_cls = Transport
    return connection


def _answers(client) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


def test_upstream_still_takes_misconf_for_a_channel_error(tmp_path):
    """kombu's Redis transport (5.7) counts redis-py's ResponseError, which MISCONF is, among its channel
    errors, and Celery's consumer reconnects only on connection errors (broker_channel_error_retry,
    celery/celery#7951, widens that to every channel error): the stock worker exits. When this fails,
    upstream reconnects on MISCONF itself, and app/core/broker_transport.py may go."""
    from kombu.transport.redis import Transport as StockTransport

    from app.core.broker_transport import PersistenceFailing, Transport

    with full_valkey(tmp_path) as url:
        stock = redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
        with pytest.raises(redis.ResponseError) as refused:
            stock.zadd("unacked_index", {"tag": 1})
        assert "MISCONF" in str(refused.value)
        assert not isinstance(refused.value, StockTransport.connection_errors)
        assert isinstance(refused.value, StockTransport.channel_errors)

        connection = ours_on(url)
        try:
            with pytest.raises(PersistenceFailing) as ours:
                connection.connect()  # kombu's PING is refused too: the attempt fails, and is retried
            assert isinstance(ours.value, Transport.connection_errors) and "MISCONF" in str(ours.value)
        finally:
            connection.release()


def test_the_write_check_fails_a_connection_to_a_server_out_of_memory(tmp_path):
    """OOM leaves PING alone: the write kombu's connection check gains here makes the attempt fail, so a
    consumer backs off instead of restarting in a loop on its first write."""
    from app.core.broker_transport import MemoryFull

    sock = tmp_path / "valkey.sock"
    server = subprocess.Popen([str(find_server_binary()), "--port", "0", "--unixsocket", str(sock), "--save", "",
                               "--maxmemory-policy", "noeviction"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(unix_socket_path=str(sock))
        wait_until(lambda: _answers(client), 10, "the private Valkey answers")
        client.config_set("maxmemory", 1)  # below what it already uses: every write that may grow is refused
        connection = ours_on(f"redis+socket://{sock}")
        try:
            with pytest.raises(MemoryFull):
                connection.connect()
        finally:
            connection.release()
        client.config_set("maxmemory", 0)
        connection = ours_on(f"redis+socket://{sock}")
        try:
            connection.connect()  # memory back: connects
        finally:
            connection.release()
    finally:
        server.terminate()
        server.wait(10)


def test_one_alert_and_one_recovery_when_the_incident_store_is_on_the_full_volume(tmp_path, robot):
    """The disk watch's incidents, with the SQLite incident store on the volume that is full: kept in
    memory, so a watch checking every second alerts once, not every second, and still sends the recovery."""
    from sqlalchemy.orm import sessionmaker

    from app.core.database import make_engine
    from app.core.migrations import upgrade_app_schema
    from app.services.alerts import PROCESS_ONLY_NOTE, ProcessIncidents
    from app.services.disk_watch import DiskWatch

    volume = tmp_path / "volume"
    with tmpfs(volume, "4m"):
        database = f"sqlite:///{volume / 'app.db'}"
        engine = make_engine(database)
        upgrade_app_schema(engine)
        engine.dispose()  # the last connection checkpoints and removes the WAL: a write now needs new space
        filler = fill(volume)
        engine = make_engine(database)
        try:
            incidents = ProcessIncidents(sessionmaker(bind=engine, expire_on_commit=False), robot.url())
            watch = DiskWatch(lambda: [volume], 80, 90, incidents, interval=1)
            key = f"disk:{volume.resolve()}"
            for _ in range(3):
                [state] = watch.check()
                assert state.status == "critical" and state.problem == "no space left on device"
            assert len(alerts(robot, key)) == 1 and PROCESS_ONLY_NOTE in alerts(robot, key)[0], robot.contents()
            filler.unlink()
            for _ in range(2):
                watch.check()
            assert len(recoveries(robot, key)) == 1 and len(alerts(robot, key)) == 1, robot.contents()
        finally:
            engine.dispose()
