"""The supervisor: start order, the embedded broker, foreground supervision with restarts, status. No printing.

A foreground supervisor owns the services it runs, as supervisord does: it keeps a directory
run/supervisors/<pid>/ with their state, and `start`, `stop` and `restart` from any other process leave
a request there and wait for its answer instead of acting behind its back. So a restarted service is
started again by its supervisor (the others untouched), and a stopped one stays stopped until started.
"""

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from app.core.broker import EmbeddedBroker
from app.core.config import Settings
from app.core.exit_codes import EXIT_CONFIG_REFUSED
from app.manager import inspect
from app.manager.inspect import DueJob, Probe
from app.manager.processes import (
    READY_TIMEOUT,
    SERVICES,
    ConfigRefused,
    PidState,
    ServiceError,
    ServiceProcess,
    clear_stale_pidfile,
    exit_error,
    flower_credentials,
    flower_credentials_path,
    kill_process_group,
    log_since,
    log_size,
    pid_state,
    process_stats,
    recent_output,
    service_process,
    spawn,
    stop_service,
    terminate_pid,
    wait_ready,
)

START_ORDER = ("simulator", "worker", "beat", "flower", "admin")
STOP_ORDER = tuple(reversed(START_ORDER))
BROKER = "broker"  # the service name of the embedded broker in events and status
EVENT_KINDS = ("started", "ready", "already-running", "stopped", "killed", "not-running", "exited", "restarting",
               "waiting", "given-up")
EXIT_OK, EXIT_GIVEN_UP = 0, 1
TICK_SECONDS = 0.2
NOTE_AFTER_SECONDS = 5.0  # a wait longer than this reports progress ('waiting' events)
ANSWER_MARGIN_SECONDS = 15.0  # beyond the stop and ready timeouts, for a supervisor's answer
PUBLISH_EVERY_SECONDS = 1.0
SUPERVISORS_DIR = "supervisors"


@dataclass(frozen=True)
class Event:
    """One step of progress for the CLI to render, e.g. Event('ready', 'worker', 4242, 'logs/celery_worker.log')."""

    kind: str  # one of EVENT_KINDS
    service: str  # a service name, or BROKER
    pid: int | None = None
    detail: str = ""
    seconds: float | None = None  # 'restarting': the delay before the next start; 'waiting': time waited


@dataclass(frozen=True)
class Backoff:
    """supervisord's autorestart with exponential delays: 1 s, 2 s, 4 s … up to 30 s."""

    first: float = 1.0
    cap: float = 30.0
    reset_after: float = 60.0  # a service that ran this long starts counting its failures afresh
    max_failures: int = 5  # exits in a row, each sooner than reset_after, before giving up

    def delay(self, failures: int) -> float:
        return min(self.first * 2 ** (failures - 1), self.cap)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # 'running', 'starting', 'stopped' or 'down' (a process alive that does not do its job)
    pid: int | None = None
    host: str | None = None
    uptime_seconds: float | None = None
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    detail: str = ""  # 'leader', 'standby', 'no process here; cluster: …', …
    supervised_by: int | None = None  # the PID of the foreground supervisor that runs it

    @property
    def alive(self) -> bool:
        return self.state in ("running", "starting")


@dataclass(frozen=True)
class StatusReport:
    """What `status` shows; `problems` is empty when all is well."""

    services: list[ServiceStatus]  # the embedded broker first, when there is one
    broker: Probe
    database: Probe
    leader: Probe | None  # None when the broker does not answer
    workers: dict[str, list[str]] | None  # worker name -> its queues; None when the broker does not answer
    queued: dict[str, int] | None  # messages waiting per queue; None when the broker does not answer
    next_due: DueJob | None  # None when the database does not answer
    urls: list[tuple[str, str, str]]  # (service, URL, how to log in) of Flower and the admin when they run
    problems: list[str]

    def service(self, name: str) -> ServiceStatus | None:
        return next((status for status in self.services if status.name == name), None)


def configured_services(settings: Settings) -> list[str]:
    """Every service this configuration runs, in START_ORDER: the simulator only when tracking against it."""
    return [name for name in START_ORDER if name != "simulator" or settings.tracking_provider == "simulator"]


def chosen_services(settings: Settings, choice: str) -> list[str]:
    """The services a --service option names: 'all' (those this configuration runs), or one name."""
    return configured_services(settings) if choice == "all" else _in_order([choice], START_ORDER)


def refuse_bad_schedule() -> None:
    """ServiceError when an entry of the schedule table could not be scheduled: checked before a restart
    stops the running beat (a start needs no check: beat refuses by itself, with EXIT_CONFIG_REFUSED)."""
    from app.tasks.celery_app import app  # configures Django, which the schedule table's models need
    from app.scheduling.table import ScheduleTableError, checked_schedule_table

    try:
        checked_schedule_table(app)
    except ScheduleTableError as error:
        raise ServiceError(f"beat not started: {error}") from None


def _in_order(names: Iterable[str], order: tuple[str, ...]) -> list[str]:
    names = set(names)
    unknown = names - set(order)
    if unknown:
        raise ValueError(f"unknown service(s): {', '.join(sorted(unknown))}")
    return [name for name in order if name in names]


# -- the channel between a foreground supervisor and other processes -------------------------


def _write_json(path: Path, value: dict) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(value))
    os.replace(partial, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _process_alive(pid: int, created: float) -> bool:
    """Whether `pid` is still the process that was created at `created` (not a reused PID)."""
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - created) < 1 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass(frozen=True)
class ForegroundOwner:
    """A running foreground supervisor, as other processes see it in run/supervisors/<pid>/."""

    pid: int
    created: float
    directory: Path
    services: dict[str, str]  # name -> 'starting', 'running', 'stopping', 'backoff' or 'stopped'

    def alive(self) -> bool:
        return _process_alive(self.pid, self.created)

    def ask(self, action: str, service: str, timeout: float | None, patience: float,
            on_wait: Callable[[float], None]) -> dict:
        """Leave a request ('start', 'stop' or 'restart' of `service`) and wait up to `patience` s for the answer."""
        request_id = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        request = self.directory / "requests" / f"{request_id}.json"
        reply = self.directory / "replies" / f"{request_id}.json"
        _write_json(request, {"id": request_id, "action": action, "service": service, "timeout": timeout})
        began, noted = time.monotonic(), 0.0
        while not reply.exists():
            waited = time.monotonic() - began
            if not self.alive():
                raise ServiceError(f"the foreground supervisor (pid {self.pid}) ended before it answered "
                                   f"the {action} of {service}")
            if waited >= patience:
                request.unlink(missing_ok=True)
                raise ServiceError(f"{action} of {service}: the foreground supervisor (pid {self.pid}) "
                                   f"did not answer within {patience:.0f}s")
            if waited - noted >= NOTE_AFTER_SECONDS:
                noted = waited
                on_wait(waited)
            time.sleep(TICK_SECONDS)
        answer = _read_json(reply) or {"error": f"unreadable answer from the foreground supervisor (pid {self.pid})"}
        reply.unlink(missing_ok=True)
        if answer.get("error"):
            raise ServiceError(answer["error"])
        return answer


def _owner_at(directory: Path) -> ForegroundOwner | None:
    state = _read_json(directory / "state.json")
    if state is None:
        return None
    return ForegroundOwner(state["pid"], state["created"], directory, state["services"])


def foreground_owners(settings: Settings) -> dict[str, ForegroundOwner]:
    """Which running foreground supervisor owns each service; the directories of ended ones are removed."""
    root = settings.run_path / SUPERVISORS_DIR
    owners = {}
    for directory in sorted(root.glob("[0-9]*")) if root.is_dir() else []:
        owner = _owner_at(directory)
        if owner is None:
            continue
        if not owner.alive():
            shutil.rmtree(directory, ignore_errors=True)
            continue
        owners.update(dict.fromkeys(owner.services, owner))
    return owners


class _Channel:
    """The foreground supervisor's end of run/supervisors/<pid>/: its published state, the requests left for it."""

    def __init__(self, settings: Settings):
        self.root = settings.run_path / SUPERVISORS_DIR
        self.directory = self.root / str(os.getpid())
        self.created = psutil.Process().create_time()
        self.published: dict[str, str] | None = None
        self.published_at = 0.0

    def open(self, states: dict[str, str]) -> None:
        """Appear at once with a state file: others never see a half-made directory."""
        staging = self.root / f".{os.getpid()}"
        for path in (staging, self.directory):
            shutil.rmtree(path, ignore_errors=True)
        (staging / "requests").mkdir(parents=True)
        (staging / "replies").mkdir()
        self._write_state(staging, states)
        os.rename(staging, self.directory)

    def publish(self, states: dict[str, str]) -> None:
        """Write the services' states when they changed, and every PUBLISH_EVERY_SECONDS anyway."""
        if states != self.published or time.monotonic() - self.published_at >= PUBLISH_EVERY_SECONDS:
            self._write_state(self.directory, states)

    def _write_state(self, directory: Path, states: dict[str, str]) -> None:
        _write_json(directory / "state.json", {"pid": os.getpid(), "created": self.created, "services": states,
                                               "updated": time.time()})
        self.published, self.published_at = dict(states), time.monotonic()

    def requests(self) -> list[tuple[Path, dict]]:
        """The requests waiting, oldest first; unreadable ones are dropped."""
        waiting = []
        for path in sorted((self.directory / "requests").glob("*.json")):
            request = _read_json(path)
            if request is None:
                path.unlink(missing_ok=True)
            else:
                waiting.append((path, request))
        return waiting

    def answer(self, request: dict, **answer) -> None:
        _write_json(self.directory / "replies" / f"{request['id']}.json", answer)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# -- the supervisor ----------------------------------------------------------------------------


class Supervisor:
    """Start, stop, restart, supervise and judge the service's processes; progress goes to `on_event`."""

    def __init__(self, settings: Settings, loglevel: str | None = None, queues: list[str] | None = None,
                 concurrency: int | None = None, on_event: Callable[[Event], None] | None = None,
                 backoff: Backoff = Backoff()):
        self.settings = settings
        self.loglevel = loglevel or settings.log_level
        self.queues = queues
        self.concurrency = concurrency
        self.emit = on_event or (lambda event: None)
        self.backoff = backoff
        self.broker = EmbeddedBroker(settings) if settings.uses_embedded_broker else None

    def all_services(self) -> list[str]:
        return configured_services(self.settings)

    def process(self, name: str) -> ServiceProcess:
        return service_process(self.settings, name, self.loglevel, self.queues, self.concurrency)

    def log_paths(self, names: Iterable[str]) -> dict[str, Path]:
        """Each service's log file, for the CLI to follow."""
        return {name: self.process(name).logfile for name in _in_order(names, START_ORDER)}

    # -- start / stop / restart ------------------------------------------------------------------

    def start(self, names: Iterable[str]) -> dict[str, int]:
        """Start `names` in START_ORDER, each ready before the next (the embedded broker first); their PIDs.

        A service a foreground supervisor owns is started by it (so it stays supervised); the others detached.
        """
        names = _in_order(names, START_ORDER)
        owners = foreground_owners(self.settings)
        running = {name: state.pid for name in names if (state := clear_stale_pidfile(self.process(name))).running}
        revive_broker = self.broker_down() and not owners  # a foreground supervisor revives it by itself
        if running and len(running) == len(names) and not revive_broker:
            first = next(iter(running))
            raise ServiceError(f"{', '.join(running)} already running (pid {running[first]}); "
                               "use 'restart' or 'stop' first")
        if revive_broker:
            self.start_broker()
        pids = {}
        for name in names:
            if name in running:
                self.emit(Event("already-running", name, running[name]))
                pids[name] = running[name]
            elif name in owners:
                pids[name] = self._start_supervised(owners[name], name)
            else:
                pids[name] = self._start_detached(name)
        return pids

    def stop(self, names: Iterable[str], timeout: float | None = None) -> dict[str, str]:
        """Stop `names` in STOP_ORDER (SIGTERM, wait, then SIGKILL); each one's outcome, an event kind.

        The embedded broker is stopped too when nothing else uses it. A service a foreground supervisor
        owns is stopped by it, and stays stopped until started again.
        """
        outcomes = self._stop(names, timeout)
        self._stop_broker_if_unused()
        return outcomes

    def restart(self, names: Iterable[str], timeout: float | None = None) -> dict[str, int]:
        """Stop and start `names` only (the others keep running, the broker too); their new PIDs, each ready.

        A beat is not stopped when the schedule table has an entry the new one would refuse.
        """
        names = _in_order(names, START_ORDER)
        if "beat" in names:
            refuse_bad_schedule()
        owners = foreground_owners(self.settings)
        detached = [name for name in names if name not in owners]
        self._stop(detached, timeout)
        pids = {name: self._restart_supervised(owners[name], name, timeout) for name in names if name in owners}
        if detached:
            pids.update(self.start(detached))
        return {name: pids[name] for name in names}

    def _stop(self, names: Iterable[str], timeout: float | None) -> dict[str, str]:
        owners = foreground_owners(self.settings)
        return {name: self._stop_supervised(owners[name], name, timeout) if name in owners
                else self._stop_detached(name, timeout) for name in _in_order(names, STOP_ORDER)}

    def _start_detached(self, name: str) -> int:
        service = self.process(name)
        offset = log_size(service)
        child = spawn(service, detached=True)
        self.emit(Event("started", name, child.pid, str(service.logfile)))
        try:
            wait_ready(service, child, offset)
        except ConfigRefused:
            raise  # its own one line says it all
        except ServiceError as error:
            lines = "\n".join(f"    {line}" for line in recent_output(service))
            files = f"{service.logfile.name} / {service.console.name}"
            raise ServiceError(f"{error}; last lines of {files}:\n{lines}") from None
        self.emit(Event("ready", name, child.pid, str(service.logfile)))
        return child.pid

    def _stop_detached(self, name: str, timeout: float | None) -> str:
        service = self.process(name)
        state = pid_state(service)

        def waiting(elapsed: float) -> None:
            if elapsed >= NOTE_AFTER_SECONDS:
                self.emit(Event("waiting", name, state.pid, "still finishing its work", seconds=elapsed))

        kind = stop_service(service, timeout, waiting).replace(" ", "-")
        self.emit(Event(kind, name, state.pid if state.running else None))
        return kind

    def _ask(self, owner: ForegroundOwner, action: str, name: str, timeout: float | None = None) -> dict:
        stop_time = self.process(name).stop_timeout if timeout is None else timeout
        patience = {"start": READY_TIMEOUT, "stop": stop_time, "restart": stop_time + READY_TIMEOUT}[action]

        def waiting(elapsed: float) -> None:
            self.emit(Event("waiting", name, None, f"for the foreground supervisor (pid {owner.pid})", seconds=elapsed))

        return owner.ask(action, name, timeout, patience + ANSWER_MARGIN_SECONDS, waiting)

    def _start_supervised(self, owner: ForegroundOwner, name: str) -> int:
        answer = self._ask(owner, "start", name)
        self.emit(Event("ready", name, answer["pid"], f"run by the foreground supervisor (pid {owner.pid})"))
        return answer["pid"]

    def _stop_supervised(self, owner: ForegroundOwner, name: str, timeout: float | None) -> str:
        answer = self._ask(owner, "stop", name, timeout)
        self.emit(Event(answer["outcome"], name, answer.get("old_pid"),
                        f"by the foreground supervisor (pid {owner.pid}), which keeps it stopped"))
        return answer["outcome"]

    def _restart_supervised(self, owner: ForegroundOwner, name: str, timeout: float | None) -> int:
        answer = self._ask(owner, "restart", name, timeout)
        if answer.get("old_pid"):
            self.emit(Event(answer["outcome"], name, answer["old_pid"],
                            f"by the foreground supervisor (pid {owner.pid})"))
        self.emit(Event("ready", name, answer["pid"], f"run by the foreground supervisor (pid {owner.pid})"))
        return answer["pid"]

    # -- the embedded broker ---------------------------------------------------------------------

    def broker_down(self) -> bool:
        """Whether this configuration has an embedded broker and it is not running."""
        return self.broker is not None and self.broker.pid() is None

    def start_broker(self) -> None:
        self.broker.start()
        self.emit(Event("ready", BROKER, self.broker.pid(), f"embedded, {self.broker.url}"))

    def stop_broker(self) -> None:
        pid = self.broker.pid()
        self.broker.stop()
        self.emit(Event("stopped", BROKER, pid, "embedded; nothing else was using it"))

    def _stop_broker_if_unused(self) -> None:
        users = [name for name in SERVICES
                 if name != "simulator" and pid_state(service_process(self.settings, name)).running]
        if self.broker and self.broker.pid() and not users and not foreground_owners(self.settings):
            self.stop_broker()

    # -- foreground ------------------------------------------------------------------------------

    def run_foreground(self, names: Iterable[str], should_stop: threading.Event,
                       on_ready: Callable[[], None] | None = None, stop_timeout: float | None = None) -> int:
        """Run `names` attached and keep them running until `should_stop` is set; then stop them all.

        `on_ready` is called once, when every service is first ready. A service that dies is started again
        after Backoff delays; one that dies too often in a row is given up, everything is stopped and the
        code is EXIT_GIVEN_UP. An embedded broker that dies is started again. The CLI follows the
        services' logs (`log_paths`) and renders the events.
        """
        names = _in_order(names, START_ORDER)
        busy = [name for name in names if clear_stale_pidfile(self.process(name)).running]
        if busy:
            raise ServiceError(f"{', '.join(busy)} already running in the background; 'stop' it first")
        return _Foreground(self, names, stop_timeout, on_ready).run(should_stop)

    # -- status ----------------------------------------------------------------------------------

    def status(self, names: Iterable[str] | None = None) -> StatusReport:
        """Every service's state judged from its PID file, beat's heartbeat and the workers' pings, and the probes."""
        settings = self.settings
        names = self.all_services() if names is None else _in_order(names, START_ORDER)
        broker = inspect.probe_broker(settings)
        liveness = inspect.beat_liveness(settings) if broker.ok else None
        workers = inspect.worker_queues() if broker.ok else None
        owners = foreground_owners(settings)
        services = [self._broker_status()] if self.broker else []
        services += [_supervision(self._service_status(name, liveness, workers or {}), owners.get(name))
                     for name in names]
        database = inspect.probe_database(settings)
        alive = {status.name: status.alive for status in services if status.name != BROKER}
        return StatusReport(
            services=services, broker=broker, database=database,
            leader=Probe(liveness.ok, liveness.detail) if liveness else None,
            workers=workers, queued=inspect.queue_depths(settings) if broker.ok else None,
            next_due=inspect.next_due_job() if database.ok else None,
            urls=_urls(settings, alive),
            problems=self._problems(services, broker, database, workers or {}),
        )

    def _broker_status(self) -> ServiceStatus:
        pid = self.broker.pid()
        return _observed(BROKER, pid, "embedded") if pid else ServiceStatus(BROKER, "stopped", detail="embedded")

    def _service_status(self, name: str, liveness, workers: dict[str, list[str]]) -> ServiceStatus:
        state = clear_stale_pidfile(service_process(self.settings, name))
        if name == "beat":
            return judge_beat(state, liveness, self.settings.beat_leader_timeout)
        if state.running:
            return _observed(name, state.pid)
        if name == "worker":
            return judge_cluster_workers(workers)
        return ServiceStatus(name, "stopped")

    def _problems(self, services: list[ServiceStatus], broker: Probe, database: Probe,
                  workers: dict[str, list[str]]) -> list[str]:
        """One line per service that is not running or does not answer; empty when all is well."""
        stopped = [status.name for status in services if status.name != BROKER and not status.alive]
        problems = [f"not running: {', '.join(stopped)}"] if stopped else []
        if self.broker_down():
            problems.append("not running: embedded broker (start any service to start it again)")
        elif not broker.ok:
            problems.append(f"unreachable: broker {broker.detail}")
        if not database.ok:
            problems.append(f"unreachable: database {database.detail}")
        worker = next((status for status in services if status.name == "worker"), None)
        own_worker = f"worker@{socket.gethostname()}"
        if worker and worker.alive and worker.pid and broker.ok and own_worker not in workers:
            problems.append(f"not answering: {own_worker} runs but did not answer a ping")
        return problems


ADMIN_LOGIN = "log in as a user made with 'celery_beat_manager.py createsuperuser'"


def _urls(settings: Settings, alive: dict[str, bool]) -> list[tuple[str, str, str]]:
    urls = []
    if alive.get("flower"):
        urls.append(("flower", f"http://{settings.flower_address}:{settings.flower_port}", flower_login(settings)))
    if alive.get("admin"):
        urls.append(("admin", f"http://{settings.admin_address}:{settings.admin_port}/admin/", ADMIN_LOGIN))
    return urls


def flower_login(settings: Settings) -> str:
    """Where Flower's login is: a setting, or the file of generated credentials."""
    if settings.flower_auth_disabled:
        return "no login (FLOWER_AUTH_DISABLED=true)"
    if settings.flower_basic_auth:
        return f"user {settings.flower_basic_auth.split(':')[0]}, password as set in FLOWER_BASIC_AUTH"
    user = flower_credentials(settings).partition(":")[0]
    return f"user {user}, password in {flower_credentials_path(settings)} (generated)"


# -- status judgements -----------------------------------------------------------------------


def _observed(name: str, pid: int, detail: str = "") -> ServiceStatus:
    """A process of this host, with its uptime, CPU and memory; 'stopped' if it has just gone."""
    stats = process_stats(pid)
    if stats is None:
        return ServiceStatus(name, "stopped", detail=detail)
    return ServiceStatus(name, "running", stats.pid, socket.gethostname(), stats.uptime_seconds, stats.cpu_percent,
                         stats.memory_bytes, detail)


def judge_beat(state: PidState, liveness, timeout: float) -> ServiceStatus:
    """A beat process of ours is judged by its heartbeat; without one, by the cluster's leader."""
    if not state.running:
        return judge_cluster_beat(liveness, state.pid)
    observed = _observed("beat", state.pid)
    if observed.state != "running":
        return observed
    if liveness is None:
        return replace(observed, detail="heartbeat unknown: broker unreachable")
    here = socket.gethostname()
    beat = next((b for b in liveness.heartbeats if b.pid == state.pid and b.host == here), None)
    if beat and beat.alive(timeout):
        return replace(observed, detail="leader" if beat.leading else "standby")
    if beat is None and observed.uptime_seconds < timeout:
        return replace(observed, state="starting", detail="no heartbeat yet")
    detail = (f"process alive but no tick for {beat.age_seconds:.0f} s (stuck?)" if beat
              else "process alive but never wrote a heartbeat")
    return replace(observed, state="down", detail=detail)


def judge_cluster_beat(liveness, dead_local_pid: int | None) -> ServiceStatus:
    """No beat process of ours: running when some beat leads and ticks (systemd, compose, another host).

    A heartbeat left by the beat whose stale PID file was just removed here is not taken for a live one.
    """
    if liveness is None:
        return ServiceStatus("beat", "stopped")
    leader = next((beat for beat in liveness.heartbeats if beat.leading), None)
    here = socket.gethostname()
    dead_here = leader is not None and leader.host == here and leader.pid == dead_local_pid
    if not liveness.ok or dead_here:
        return ServiceStatus("beat", "stopped", detail=f"no process here; cluster: {liveness.detail}")
    if leader is None:
        return ServiceStatus("beat", "running", detail=f"no process here; cluster: {liveness.detail}")
    if leader.host == here and _is_beat(leader.pid):
        observed = _observed("beat", leader.pid)
        if observed.state == "running":
            return replace(observed, detail=f"started outside the manager; cluster: {liveness.detail}")
    return ServiceStatus("beat", "running", leader.pid, leader.host,
                         detail=f"no process here; cluster: {liveness.detail}")


def _is_beat(pid: int) -> bool:
    try:
        return "beat" in psutil.Process(pid).cmdline()
    except psutil.Error:
        return False


def judge_cluster_workers(workers: dict[str, list[str]]) -> ServiceStatus:
    """No worker process of ours: running when any worker answered the ping, with their hosts."""
    if not workers:
        return ServiceStatus("worker", "stopped")
    hosts = sorted({name.partition("@")[2] for name in workers})
    return ServiceStatus("worker", "running", host=", ".join(hosts),
                         detail=f"no process here; {len(workers)} answer a ping")


SUPERVISION_NOTES = {
    "stopped": "stopped on request; its foreground supervisor keeps it stopped until started",
    "backoff": "exited; its foreground supervisor starts it again after a delay",
    "stopping": "being stopped by its foreground supervisor",
}


def _supervision(status: ServiceStatus, owner: ForegroundOwner | None) -> ServiceStatus:
    if owner is None:
        return status
    supervised_state = owner.services.get(status.name)
    note = SUPERVISION_NOTES.get(supervised_state)
    state = "starting" if supervised_state == "starting" and status.state == "running" else status.state
    return replace(status, state=state, supervised_by=owner.pid,
                   detail="; ".join(part for part in (status.detail, note) if part))


# -- the foreground run ------------------------------------------------------------------------


@dataclass
class _Member:
    """One service under a foreground supervisor, and where it is in its life."""

    service: ServiceProcess
    child: subprocess.Popen | None = None
    started_at: float = 0.0
    log_offset: int = 0
    ready: bool = False
    failures: int = 0  # exits in a row, each sooner than Backoff.reset_after after its start
    retry_at: float | None = None  # when to start it again after an exit
    stop_deadline: float | None = None  # a requested stop under way: SIGKILL after this
    killed: bool = False
    request: dict | None = None  # the request being carried out, answered when done

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def state(self) -> str:
        if self.child is None:
            return "backoff" if self.retry_at is not None else "stopped"
        if self.stop_deadline is not None:
            return "stopping"
        return "running" if self.ready else "starting"


class _Foreground:
    """One run_foreground: its children, their restarts with backoff, and the requests of other processes."""

    def __init__(self, supervisor: Supervisor, names: list[str], timeout: float | None,
                 on_ready: Callable[[], None] | None):
        self.supervisor = supervisor
        self.on_ready = on_ready
        self.emit = supervisor.emit
        self.backoff = supervisor.backoff
        self.members = {name: _Member(supervisor.process(name)) for name in names}
        self.channel = _Channel(supervisor.settings)
        self.timeout = timeout
        self.started_broker = False

    def run(self, should_stop: threading.Event) -> int:
        try:
            if self.supervisor.broker_down():
                self.supervisor.start_broker()
                self.started_broker = True
            self.channel.open(self._states())
            for member in self.members.values():
                self._spawn(member)
            while not should_stop.wait(TICK_SECONDS):
                if self._tick():
                    return EXIT_GIVEN_UP
            return EXIT_OK
        finally:
            self._shut_down()

    def _states(self) -> dict[str, str]:
        return {name: member.state for name, member in self.members.items()}

    def _tick(self) -> bool:
        """One look at everything; True when a service has been given up."""
        if self.supervisor.broker_down():
            self.emit(Event("exited", BROKER, None, "embedded; starting it again"))
            self.supervisor.start_broker()
        self._take_requests()
        now = time.monotonic()
        for member in self.members.values():
            if member.child is not None and member.child.poll() is not None:
                if self._exited(member, now):
                    return True
            elif member.child is not None:
                self._watch(member, now)
            elif member.retry_at is not None and now >= member.retry_at:
                self._spawn(member)
        self.channel.publish(self._states())
        if self.on_ready and all(member.ready for member in self.members.values()):
            self.on_ready, announce = None, self.on_ready
            announce()
        return False

    def _spawn(self, member: _Member) -> None:
        member.log_offset = log_size(member.service)
        member.child = spawn(member.service, detached=False)
        member.started_at, member.ready, member.retry_at = time.monotonic(), False, None
        self.emit(Event("started", member.name, member.child.pid, str(member.service.logfile)))

    def _watch(self, member: _Member, now: float) -> None:
        """Notice readiness, answer a start waiting for it, and escalate a stop that takes too long."""
        if not member.ready and member.service.is_ready(log_since(member.service, member.log_offset)):
            member.ready = True
            self.emit(Event("ready", member.name, member.child.pid, str(member.service.logfile)))
            if member.request:
                self._answer(member, outcome=member.request.get("outcome", "started"), pid=member.child.pid,
                             old_pid=member.request.get("old_pid"))
        elif not member.ready and member.request and now - member.started_at > READY_TIMEOUT:
            self._answer(member, error=f"{member.name} was not ready within {READY_TIMEOUT:.0f}s")
        if member.stop_deadline is not None and now >= member.stop_deadline and not member.killed:
            kill_process_group(member.child.pid)
            member.killed = True

    def _exited(self, member: _Member, now: float) -> bool:
        """React to a child that ended; True when it is given up."""
        pid, code = member.child.pid, member.child.returncode
        self._clean_up(member)
        if member.stop_deadline is not None:
            self._stopped_on_request(member, pid)
            return False
        self.emit(Event("exited", member.name, pid, f"exit code {code}"))
        if code == EXIT_CONFIG_REFUSED:
            reason = exit_error(member.service, code, log_since(member.service, member.log_offset))
            if member.request:
                self._answer(member, error=str(reason))
            self.emit(Event("given-up", member.name, pid, f"{reason}; starting it again cannot help"))
            return True
        if member.request:
            self._answer(member, error=f"{member.name} exited with code {code} while starting; see "
                                       f"{member.service.logfile}")
        member.failures = 1 if now - member.started_at >= self.backoff.reset_after else member.failures + 1
        if member.failures >= self.backoff.max_failures:
            self.emit(Event("given-up", member.name, pid, f"exited {member.failures} times in a row, each within "
                                                          f"{self.backoff.reset_after:.0f} s of its start"))
            return True
        delay = self.backoff.delay(member.failures)
        member.retry_at = now + delay
        self.emit(Event("restarting", member.name, None,
                        f"after exit {member.failures} of {self.backoff.max_failures} in a row", seconds=delay))
        return False

    def _clean_up(self, member: _Member) -> None:
        kill_process_group(member.child.pid)
        member.service.pidfile.unlink(missing_ok=True)
        member.child, member.ready = None, False

    def _stopped_on_request(self, member: _Member, pid: int) -> None:
        outcome = "killed" if member.killed else "stopped"
        member.stop_deadline, member.killed = None, False
        self.emit(Event(outcome, member.name, pid, "on request"))
        if member.request["action"] == "restart":
            member.request.update(outcome=outcome, old_pid=pid)  # answered once the new process is ready
            self._spawn(member)
        else:
            self._answer(member, outcome=outcome, old_pid=pid)

    def _take_requests(self) -> None:
        """Carry out the requests left by other processes; one at a time per service, the rest wait their turn."""
        for path, request in self.channel.requests():
            member = self.members.get(request.get("service"))
            if member is not None and member.request is not None:
                continue
            path.unlink(missing_ok=True)
            if member is None:
                self.channel.answer(request, error=f"{request.get('service')} is not run by the foreground "
                                                   f"supervisor (pid {os.getpid()})")
                continue
            member.request = request
            self._carry_out(member)

    def _carry_out(self, member: _Member) -> None:
        action = member.request["action"]
        if member.child is None:  # stopped, or waiting out a delay after an exit
            member.retry_at = None
            if action == "stop":
                self._answer(member, outcome="not-running")
            else:
                member.failures = 0
                self._spawn(member)
        elif action == "start":
            self._answer(member, outcome="already-running", pid=member.child.pid)
        else:
            member.child.terminate()  # SIGTERM: a worker finishes the tasks in hand first
            timeout = member.request.get("timeout")
            member.stop_deadline = time.monotonic() + (member.service.stop_timeout if timeout is None else timeout)

    def _answer(self, member: _Member, **answer) -> None:
        self.channel.answer(member.request, **answer)
        member.request = None

    def _shut_down(self) -> None:
        """Stop every child in STOP_ORDER, then the broker this run started."""
        try:
            for name in STOP_ORDER:
                member = self.members.get(name)
                if member is not None and member.child is not None:
                    self._stop_member(member)
        finally:
            self.channel.close()
            if self.started_broker:
                self.supervisor.stop_broker()

    def _stop_member(self, member: _Member) -> None:
        pid = member.child.pid

        def waiting(elapsed: float) -> None:
            if elapsed >= NOTE_AFTER_SECONDS:
                self.emit(Event("waiting", member.name, pid, "still finishing its work", seconds=elapsed))

        timeout = member.service.stop_timeout if self.timeout is None else self.timeout
        graceful = terminate_pid(pid, timeout, waiting)
        member.child.wait()
        self._clean_up(member)
        self.emit(Event("stopped" if graceful else "killed", member.name, pid))
        if member.request:
            self.channel.answer(member.request, error="the foreground supervisor is stopping")
