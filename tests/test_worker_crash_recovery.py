"""A worker killed with SIGKILL: its messages come back within a minute (not after the hour of
the visibility timeout), each run once; a message of a worker that is alive, even paused, never.

Real workers of a project copy, started by the manager as users start them (and a second one on
the same broker started as a second `celery worker`); the dead worker's main process and pool
children are killed with SIGKILL while they hold running tasks and ETA retries.
"""

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from app.core.broker import redis_client
from tests.support.project import Project
from tests.support.services import redis_test_url
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PROBE_TASKS = '''
import os
import time

from app.tasks.celery_app import app


def _note(word, task_id):
    with open(os.environ["RECOVERY_LOG"], "a") as log:
        log.write(f"{word} {task_id} {os.getpid()}\\n")


@app.task(bind=True, name="app.tasks.crash_probe.long")
def long(self, seconds):
    """Runs long enough to be killed; only a run that finished writes 'done'."""
    _note("start", self.request.id)
    time.sleep(seconds)
    _note("done", self.request.id)


@app.task(bind=True, name="app.tasks.crash_probe.retry_later")
def retry_later(self, countdown):
    """Fails once, then waits in the worker (an ETA retry, unacked) before it succeeds."""
    if self.request.retries == 0:
        _note("try", self.request.id)
        raise self.retry(countdown=countdown, max_retries=1)
    _note("done", self.request.id)
'''

SEND = """
import json, sys
from app.tasks.celery_app import app
ids = [app.send_task("app.tasks.crash_probe.retry_later", args=[float(sys.argv[1])]).id for _ in range(int(sys.argv[2]))]
ids += [app.send_task("app.tasks.crash_probe.long", args=[float(sys.argv[3])]).id for _ in range(int(sys.argv[4]))]
print(json.dumps(ids))
"""

PATHS = """
import json
from app.core.config import get_settings
s = get_settings()
print(json.dumps({"broker": s.broker_url, "run": str(s.run_path), "logs": str(s.logs_path)}))
"""

RECOVERY_WINDOW = 60  # seconds from the kill to the last of the dead worker's messages finishing


class Probe:
    """The copy with the probe tasks, its broker, and the log the tasks write ("start|try|done <id> <pid>")."""

    def __init__(self, project: Project, tmp_path: Path, concurrency: int = 3):
        self.project = project
        self.log = tmp_path / "recovery.log"
        project.env.update(RECOVERY_LOG=str(self.log), WORKER_CONCURRENCY=str(concurrency))
        project.add_task_module("crash_probe", PROBE_TASKS)
        paths = json.loads(project.python(PATHS).strip().splitlines()[-1])
        self.broker = redis_client(paths["broker"])
        self.pidfile = Path(paths["run"]) / "celery_worker.pid"
        self.extra: list[subprocess.Popen] = []

    def send(self, retries: int, countdown: float, longs: int, seconds: float) -> list[str]:
        out = self.project.python(SEND, str(countdown), str(retries), str(seconds), str(longs))
        return json.loads(out.strip().splitlines()[-1])

    def lines(self) -> list[tuple[str, str, int]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [(word, task_id, int(pid)) for word, task_id, pid in (line.split() for line in text.splitlines())]

    def count(self, word: str) -> Counter:
        return Counter(task_id for w, task_id, _ in self.lines() if w == word)

    def unacked(self) -> int:
        return self.broker.hlen("unacked")

    def start_worker(self) -> int:
        started = self.project.manager("start", "--service", "worker")
        assert started.returncode == 0, started.stdout + started.stderr
        return int(self.pidfile.read_text())

    def start_second_worker(self, name: str) -> subprocess.Popen:
        """Another worker on the same broker and queues, as a second host (or a second unit) runs one."""
        logfile = self.project.logs / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "worker", "--hostname", f"{name}@%h",
             "--loglevel", "info", "--logfile", str(logfile)],
            cwd=self.project.root, env=self.project.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.extra.append(process)
        wait_until(lambda: " ready." in self.project.log_text(f"{name}.log") or process.poll() is not None, 90,
                   f"{name} ready")
        assert process.poll() is None, self.project.log_text(f"{name}.log")
        return process

    def worker_log(self) -> str:
        return self.project.log_text("celery_worker.log")

    def close(self) -> None:
        """The copy is thrown away: kill what runs in it (its workers included) rather than stop it."""
        self.project.kill_all()
        for process in self.extra:
            process.wait(10)  # reaped: no zombie left for the next test's process list


def family(pid: int) -> list[psutil.Process]:
    main = psutil.Process(pid)
    return [main, *main.children(recursive=True)]


def kill_family(pid: int) -> None:
    """kill -9 of a worker's main process and its pool children, all of them before any can react."""
    members = family(pid)
    for member in members:
        member.send_signal(signal.SIGKILL)
    psutil.wait_procs(members, timeout=10)


def signal_family(pid: int, signum: int) -> None:
    for member in family(pid):
        member.send_signal(signum)


@pytest.fixture
def probe(project, tmp_path):
    copy = Probe(project, tmp_path)
    yield copy
    copy.close()


def test_killed_workers_running_tasks_and_eta_retries_run_once_within_a_minute(probe):
    first = probe.start_worker()
    retries = probe.send(retries=2, countdown=20, longs=0, seconds=0)
    wait_until(lambda: len(probe.count("try")) == 2 and probe.unacked() == 2, 30,
               "both retries wait in the worker, unacked", lambda: probe.worker_log()[-3000:])
    longs = probe.send(retries=0, countdown=0, longs=3, seconds=20)
    wait_until(lambda: len(probe.count("start")) == 3 and probe.unacked() == 5, 30,
               "three long tasks running, five messages unacked", lambda: probe.worker_log()[-3000:])

    kill_family(first)
    killed = time.monotonic()
    assert probe.unacked() == 5, "the dead worker's messages wait in the unacked set"
    second = probe.start_worker()
    assert second != first

    every = retries + longs
    wait_until(lambda: set(probe.count("done")) == set(every), RECOVERY_WINDOW - (time.monotonic() - killed),
               "all five ran after the kill, within a minute", lambda: f"{probe.lines()}\n{probe.worker_log()[-3000:]}")
    assert time.monotonic() - killed < RECOVERY_WINDOW
    time.sleep(3)  # nothing runs a second time later
    assert probe.count("done") == {task_id: 1 for task_id in every}, probe.lines()
    assert probe.count("start") == {task_id: 2 for task_id in longs}, "killed once, run once more"
    assert probe.count("try") == {task_id: 1 for task_id in retries}, "the retry itself ran, not the first try again"
    assert {pid for word, _, pid in probe.lines() if word == "done"} <= {p.pid for p in family(second)}
    assert "no other worker alive: restored 5 of 5 unacked messages at start" in probe.worker_log()
    wait_until(lambda: probe.unacked() == 0, 10, "nothing left unacked")


def test_message_of_a_live_worker_is_not_restored_by_a_worker_starting_beside_it(probe):
    probe.start_worker()
    [task_id] = probe.send(retries=0, countdown=0, longs=1, seconds=12)
    wait_until(lambda: probe.count("start") and probe.unacked() == 1, 30, "the long task runs")

    probe.start_second_worker("second")
    wait_until(lambda: probe.count("done"), 40, "the long task finished", lambda: str(probe.lines()))
    time.sleep(2)
    assert probe.count("start") == {task_id: 1} and probe.count("done") == {task_id: 1}, probe.lines()
    second_log = probe.project.log_text("second.log")
    assert "1 unacked messages left as they are: worker worker@" in second_log and "may be alive" in second_log
    assert "restored" not in second_log


SHORT_LEASE = {"LEASE_SECONDS = 15.0": "LEASE_SECONDS = 2.0", "GRACE_SECONDS = 105.0": "GRACE_SECONDS = 2.0",
               "RENEW_INTERVAL = 2.0": "RENEW_INTERVAL = 0.5", "SWEEP_INTERVAL = 5.0": "SWEEP_INTERVAL = 0.5"}


def test_paused_worker_keeps_its_messages_however_long_it_sleeps(embedded_project, tmp_path):
    """SIGSTOP for five leases: a worker on the same machine sees the process still exists."""
    recovery = embedded_project.root / "app" / "tasks" / "recovery.py"
    text = recovery.read_text()
    for old, new in SHORT_LEASE.items():
        assert old in text
        text = text.replace(old, new)
    recovery.write_text(text)
    probe = Probe(embedded_project, tmp_path)
    try:
        first = probe.start_worker()
        [task_id] = probe.send(retries=0, countdown=0, longs=1, seconds=4)
        wait_until(lambda: probe.count("start") and probe.unacked() == 1, 30, "the long task runs")
        signal_family(first, signal.SIGSTOP)
        try:
            time.sleep(5)  # the lease has long expired
            probe.start_second_worker("second")
            time.sleep(6)  # the second worker renews and sweeps a dozen times meanwhile
            assert probe.unacked() == 1 and not probe.count("done")
        finally:
            signal_family(first, signal.SIGCONT)
        wait_until(lambda: probe.count("done"), 30, "the paused task finished", lambda: str(probe.lines()))
        time.sleep(2)
        assert probe.count("start") == {task_id: 1} and probe.count("done") == {task_id: 1}, probe.lines()
        assert psutil.Process(first).status() != psutil.STATUS_ZOMBIE, "the paused worker kept its lease"
        assert "restored" not in probe.project.log_text("second.log")
    finally:
        probe.close()


def test_dead_worker_of_another_machine_is_recovered_once_its_lease_expires(embedded_project, tmp_path):
    """The first worker says it runs on another machine: only its lease tells it is dead."""
    recovery = embedded_project.root / "app" / "tasks" / "recovery.py"
    text = recovery.read_text()
    marker = 'def machine_id() -> str | None:\n'
    assert marker in text
    # Shorter times, the same rules: a lease of 4 s renewed every second, a grace of 15 s instead of
    # 105 s (still longer than the second worker takes to start, so it cannot restore at start).
    for old, new in {"GRACE_SECONDS = 105.0": "GRACE_SECONDS = 15.0", "LEASE_SECONDS = 15.0": "LEASE_SECONDS = 4.0",
                     "RENEW_INTERVAL = 2.0": "RENEW_INTERVAL = 1.0", "SWEEP_INTERVAL = 5.0": "SWEEP_INTERVAL = 1.0"}.items():
        assert old in text
        text = text.replace(old, new)
    recovery.write_text(text.replace(marker, marker + '    if os.environ.get("TEST_OTHER_MACHINE"):\n'
                                              '        return os.environ["TEST_OTHER_MACHINE"]\n', 1))
    probe = Probe(embedded_project, tmp_path)
    try:
        probe.project.env["TEST_OTHER_MACHINE"] = "another-host"
        first = probe.start_worker()
        del probe.project.env["TEST_OTHER_MACHINE"]
        longs = probe.send(retries=0, countdown=0, longs=3, seconds=6)
        wait_until(lambda: len(probe.count("start")) == 3 and probe.unacked() == 3, 30, "three tasks running")
        time.sleep(1.5)  # a renewal records them as held
        assert not probe.count("done")
        kill_family(first)
        killed = time.monotonic()
        probe.start_worker()
        assert "may be alive" in probe.worker_log(), "its lease has not expired: not restored at start"
        wait_until(lambda: set(probe.count("done")) == set(longs), RECOVERY_WINDOW, "restored by the sweep",
                   lambda: f"{probe.lines()}\n{probe.worker_log()[-3000:]}")
        assert time.monotonic() - killed < RECOVERY_WINDOW
        time.sleep(2)
        assert probe.count("done") == {task_id: 1 for task_id in longs}, probe.lines()
        assert "is dead: restored 3 of the 3 messages it held" in probe.worker_log()
    finally:
        probe.close()


def test_messages_held_on_a_lost_broker_connection_come_back_when_it_returns(tmp_path):
    """The broker's connection cut under a worker holding a running task and an ETA retry: Celery
    cancels the one and drops the other; both run to the end once the broker is back, not an hour later."""
    direct_url = redis_test_url()
    database = int(direct_url.rsplit("/", 1)[1])
    proxy = TcpProxy("127.0.0.1", int(urlsplit(direct_url).port or 6379)).start()
    proxied_url = f"redis://127.0.0.1:{proxy.port}/{database}"
    project = Project(tmp_path, {"CELERY_BROKER_URL": proxied_url, "CELERY_RESULT_BACKEND": direct_url})
    probe = Probe(project, tmp_path)
    broker = redis_client(direct_url)
    try:
        first = probe.start_worker()
        [retry] = probe.send(retries=1, countdown=15, longs=0, seconds=0)
        [long_task] = probe.send(retries=0, countdown=0, longs=1, seconds=6)
        wait_until(lambda: probe.count("try") and probe.count("start") and broker.hlen("unacked") == 2, 30,
                   "a retry waiting and a task running, both unacked", lambda: probe.worker_log()[-3000:])
        proxy.cut()
        wait_until(lambda: "Connection to broker lost" in probe.worker_log(), 30, "the worker saw the loss")
        time.sleep(2)
        proxy.restore()
        wait_until(lambda: set(probe.count("done")) == {retry, long_task}, 60,
                   "both ran once the broker was back", lambda: f"{probe.lines()}\n{probe.worker_log()[-3000:]}")
        time.sleep(2)
        assert probe.count("done") == {retry: 1, long_task: 1}, probe.lines()
        assert broker.hlen("unacked") == 0
        assert "gave back 2 message(s) held on the lost broker connection" in probe.worker_log()
        assert int(probe.pidfile.read_text()) == first, "the same worker, not a restarted one"
    finally:
        probe.close()
        project.kill_all()
        proxy.stop()


def test_a_lease_lost_with_the_registry_is_taken_again_not_taken_for_a_claim(celery_app):
    """A flushed registry (or a Redis restarted without persistence) is no claim: the worker registers
    again and goes on, where a claimed one would exit (this test's process would be gone)."""
    from app.tasks.recovery import REGISTRY_KEY, Recovery

    recovery = Recovery(celery_app, "lease-probe@test")
    recovery.connect()
    recovery.register()
    try:
        recovery.client.zrem(REGISTRY_KEY, recovery.id)
        recovery.renew()
        assert recovery.client.zscore(REGISTRY_KEY, recovery.id) is not None, "registered again"
        recovery.renew()
    finally:
        recovery.close()
