"""The supervisor model (app/manager/supervisor.py) on a copy of the project, driven as the CLI drives it:
run_foreground in one process, restart / stop / start / status from others, real services throughout."""

import json
import os
import signal
import socket
import sys
import time

import psutil
import pytest

from app.core.exit_codes import EXIT_CONFIG_REFUSED
from app.manager.supervisor import Backoff
from tests.support.project import Project
from tests.test_schedule_table import UNKNOWN_TASK
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

ALL = ("simulator", "worker", "beat", "flower", "admin")
PIDFILES = {"simulator": "simulator.pid", "worker": "celery_worker.pid", "beat": "celerybeat.pid",
            "flower": "flower.pid", "admin": "admin.pid", "broker": "valkey.pid"}

# run_foreground as the CLI runs it: SIGTERM sets should_stop; each event is one JSON line in a file.
FOREGROUND = """
import dataclasses, json, signal, sys, threading
from app.core.config import load_settings
from app.manager.supervisor import Backoff, Supervisor

events_path, options, *names = sys.argv[1:]
options = json.loads(options)
should_stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: should_stop.set())
with open(events_path, "a", buffering=1) as events:
    def record(event):
        events.write(json.dumps(dataclasses.asdict(event)) + "\\n")
    def all_ready():
        events.write(json.dumps({"kind": "all-ready", "service": None, "pid": None}) + "\\n")
    supervisor = Supervisor(load_settings(), queues=options.get("queues"), concurrency=1, on_event=record,
                            backoff=Backoff(**options.get("backoff", {})))
    sys.exit(supervisor.run_foreground(names, should_stop, on_ready=all_ready))
"""

# One call of the model from another process, as `restart --service worker` in a second terminal.
CALL = """
import dataclasses, json, sys
from app.core.config import load_settings
from app.manager.supervisor import Supervisor

method, *names = sys.argv[1:]
events = []
supervisor = Supervisor(load_settings(), on_event=lambda event: events.append(dataclasses.asdict(event)))
result = getattr(supervisor, method)(names)
result = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result
print(json.dumps({"result": result, "events": events}, default=str))
"""

START_BROKER = """
from app.core.broker import EmbeddedBroker
from app.core.config import load_settings
EmbeddedBroker(load_settings()).start()
"""


def call(project: Project, method: str, *names: str) -> dict:
    """The model's answer to `method(names)` in a process of its own: its result and the events it sent."""
    return json.loads(project.python(CALL, method, *names).strip().splitlines()[-1])


class Foreground:
    """run_foreground of `names` in a process of its own in the copy."""

    def __init__(self, project: Project, *names: str, **options):
        self.project = project
        self.events_path = project.root / "events.jsonl"
        self.process = project.start_process(sys.executable, "-c", FOREGROUND, str(self.events_path),
                                             json.dumps(options), *names, output="foreground.out")

    def events(self, service: str | None = None) -> list[dict]:
        text = self.events_path.read_text() if self.events_path.exists() else ""
        events = [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]
        return [event for event in events if service in (None, event["service"])]

    def output(self) -> str:
        return (self.project.root / "foreground.out").read_text(errors="replace")[-3000:]

    def wait_for(self, kind: str, service: str | None, after: int = 0, timeout: float = 90) -> dict:
        """The first `kind` event of `service` after the first `after` events of all."""
        def found():
            assert self.process.poll() is None, f"the supervisor ended:\n{self.output()}"
            return next((e for e in self.events()[after:] if e["kind"] == kind and e["service"] == service), None)
        return wait_until(found, timeout, f"{kind} of {service}", lambda: f"{self.events()[after:]}\n{self.output()}")

    def pids(self) -> dict[str, int]:
        """Each service's and the broker's PID, from their PID files, once each is ready."""
        def ready():
            assert self.process.poll() is None, f"the supervisor ended:\n{self.output()}"
            pids = {name: _pid(self.project, name) for name in (*ALL, "broker")}
            ready_pids = {e["pid"] for e in self.events() if e["kind"] == "ready"}
            return pids if all(pid in ready_pids for name, pid in pids.items() if name != "broker") else None
        return wait_until(ready, 120, "every service ready", lambda: f"{self.events()[-10:]}\n{self.output()}")

    def state_file(self) -> dict:
        path = self.project.root / "var" / "run" / "supervisors" / str(self.process.pid) / "state.json"
        return json.loads(path.read_text())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(120)


def _pid(project: Project, name: str) -> int | None:
    try:
        return int((project.root / "var" / "run" / PIDFILES[name]).read_text())
    except (FileNotFoundError, ValueError):
        return None


@pytest.fixture(scope="module")
def supervised(tmp_path_factory):
    """One foreground run of every service, shared by the tests of its xdist group."""
    project = Project(tmp_path_factory.mktemp("supervised"))
    run = Foreground(project, *ALL)
    try:
        run.wait_for("all-ready", None, timeout=120)
        announced = [e["kind"] for e in run.events()].index("all-ready")
        assert {e["service"] for e in run.events()[:announced] if e["kind"] == "ready"} == {*ALL, "broker"}
        yield run
        assert run.stop() == 0, run.output()
        assert project.processes() == [], "the supervisor stopped everything, the broker included"
    finally:
        project.kill_all()


def test_backoff_doubles_from_one_second_up_to_thirty():
    assert [Backoff().delay(failures) for failures in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.xdist_group("supervisor-foreground")
def test_restart_of_the_worker_under_foreground_leaves_the_others_running(supervised):
    before = supervised.pids()

    answer = call(supervised.project, "restart", "worker")

    new_pid = answer["result"]["worker"]
    assert new_pid != before["worker"]
    assert {name: _pid(supervised.project, name) for name in before} == {**before, "worker": new_pid}
    steps = [(e["kind"], e["pid"]) for e in answer["events"] if e["kind"] != "waiting"]  # progress, if slow
    assert steps == [("stopped", before["worker"]), ("ready", new_pid)]
    assert any(e["kind"] == "ready" and e["pid"] == new_pid for e in supervised.events("worker"))
    assert supervised.process.poll() is None, "the supervisor runs on"


@pytest.mark.xdist_group("supervisor-foreground")
def test_a_killed_worker_is_started_again_at_once(supervised):
    before = supervised.pids()
    mark = len(supervised.events())

    os.kill(before["worker"], signal.SIGKILL)

    ready = supervised.wait_for("ready", "worker", after=mark)
    worker = supervised.events("worker")[-4:]
    assert [e["kind"] for e in worker] == ["exited", "restarting", "started", "ready"], worker
    assert worker[0]["pid"] == before["worker"] and worker[1]["seconds"] == Backoff().first
    assert ready["pid"] == _pid(supervised.project, "worker") != before["worker"]
    assert psutil.Process(ready["pid"]).is_running()


@pytest.mark.xdist_group("supervisor-foreground")
def test_a_service_stopped_under_foreground_stays_stopped_until_started(supervised):
    before = supervised.pids()

    stopped = call(supervised.project, "stop", "flower")

    assert stopped["result"] == {"flower": "stopped"}
    stopped_at = time.time()
    wait_until(lambda: supervised.state_file()["updated"] > stopped_at + 2 * Backoff().first, 30,
               "the supervisor looking again, well past its first restart delay")
    assert supervised.state_file()["services"]["flower"] == "stopped"
    assert _pid(supervised.project, "flower") is None and not psutil.pid_exists(before["flower"])
    report = call(supervised.project, "status", "flower")["result"]
    flower = next(s for s in report["services"] if s["name"] == "flower")
    assert flower["state"] == "stopped" and flower["supervised_by"] == supervised.process.pid, flower
    assert "keeps it stopped" in flower["detail"]

    started = call(supervised.project, "start", "flower")

    new_pid = started["result"]["flower"]
    assert supervised.pids() == {**before, "flower": new_pid}
    assert supervised.process.poll() is None


def test_a_service_that_keeps_dying_is_retried_with_growing_delays_then_given_up(embedded_project):
    broken = Foreground(embedded_project, "worker", queues=["no-such-queue"],
                        backoff={"first": 0.2, "max_failures": 3})

    assert broken.process.wait(180) == 1, broken.output()

    worker = broken.events("worker")
    assert [e["kind"] for e in worker] == ["started", "exited", "restarting"] * 2 + ["started", "exited", "given-up"]
    assert [e["seconds"] for e in worker if e["kind"] == "restarting"] == [0.2, 0.4]
    assert embedded_project.processes() == [], "nothing is left, the broker it started included"


def test_a_beat_that_refuses_its_schedule_is_given_up_at_once_not_restarted(embedded_project):
    schedule_file = embedded_project.root / "app" / "tasks" / "beat_schedules.py"
    schedule_file.write_text(schedule_file.read_text() + UNKNOWN_TASK)
    refused = Foreground(embedded_project, "beat", backoff={"first": 0.2, "max_failures": 3})

    assert refused.process.wait(180) == 1, refused.output()

    beat = refused.events("beat")
    assert [e["kind"] for e in beat] == ["started", "exited", "given-up"], "exit 78 is not restarted"
    assert beat[1]["detail"] == f"exit code {EXIT_CONFIG_REFUSED}"
    assert beat[2]["detail"].startswith("beat not started: typo-job: unknown task 'app.tasks.file_tasks.cleanup_temp_file'")
    assert embedded_project.processes() == []


def test_status_reports_a_beat_started_outside_the_manager_as_running_with_its_host(embedded_project):
    project = embedded_project
    project.python(START_BROKER)
    beat = project.start_process(sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "beat",
                                 output="beat.out")

    def running_beat():
        report = call(project, "status", "beat")["result"]
        beat_row = next(s for s in report["services"] if s["name"] == "beat")
        return (beat_row, report) if beat_row["state"] == "running" else None

    beat_row, report = wait_until(running_beat, 120, "beat reported running",
                                  lambda: (project.root / "beat.out").read_text(errors="replace")[-3000:])
    assert (beat_row["host"], beat_row["pid"]) == (socket.gethostname(), beat.pid)
    assert beat_row["detail"].startswith("started outside the manager; cluster: ") and " leads" in beat_row["detail"]
    assert report["problems"] == []
    assert not (project.root / "var" / "run" / PIDFILES["beat"]).exists()
