"""The process model: what each service runs, its PID file and log, start/stop/status. No printing."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from app.core.config import PRIVATE_UMASK, PROJECT_ROOT, Settings
from app.core.exit_codes import EXIT_CONFIG_REFUSED
from app.tasks.queues import Queue

CELERY_APP = "app.tasks.celery_app"
FLOWER_APP = "app.manager.flower_login"  # the same app, with Flower's login throttled
SERVICES = ("simulator", "worker", "beat", "flower", "admin")
READY_TIMEOUT = 90.0
BEAT_STOP_TIMEOUT = 30.0
FLOWER_STOP_TIMEOUT = 10.0
ADMIN_STOP_TIMEOUT = 15.0  # gunicorn's graceful timeout (10 s) and a margin
ADMIN_APP = "app.core.wsgi:application"
# A warm worker shutdown waits for the tasks in hand, which may run up to the hard time limit.
WORKER_STOP_TIMEOUT = 660.0


class ServiceError(Exception):
    """A service could not be started or stopped; the message says why in one line."""


class ConfigRefused(ServiceError):
    """A service exited with EXIT_CONFIG_REFUSED; the message is the reason it logged. Not to be restarted."""


@dataclass(frozen=True)
class ServiceProcess:
    name: str
    argv: list[str]
    pidfile: Path
    logfile: Path
    console: Path  # stdout/stderr of a detached process: banners, and errors before logging starts
    is_ready: Callable[[str], bool]  # given the log text written since start
    stop_timeout: float
    marker: tuple[str, ...]  # words of its command line that tell it from any other process
    # Variables added to its environment, computed when it is spawned (not when it is inspected).
    environment: Callable[[], dict[str, str]] = dict


@dataclass(frozen=True)
class PidState:
    """What a PID file says: 'none', 'unreadable', 'stale' (dead or someone else's PID) or 'running'."""

    state: str
    pid: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


def _celery(loglevel: str, *args: str) -> list[str]:
    """A celery command of our app; below debug level without its start banner (the log says when it is up)."""
    quiet = [] if loglevel == "debug" else ["--quiet"]
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, *quiet, *args]


def _watched(logfile: Path, *argv: str) -> list[str]:
    """`argv` (celery or gunicorn) with its log in a file that survives rotation by rename."""
    return [sys.executable, "-m", "app.manager.watched_logs", str(logfile), *argv]


def _log_says(marker: str) -> Callable[[str], bool]:
    return lambda text: marker in text


def _port_open(port: int) -> Callable[[str], bool]:
    def check(_text: str) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False
    return check


def flower_credentials_path(settings: Settings) -> Path:
    return settings.var_path / "flower_credentials"


def flower_credentials(settings: Settings) -> str | None:
    """FLOWER_BASIC_AUTH, else credentials generated once and kept 0600 under var/; None when disabled."""
    if settings.flower_auth_disabled:
        return None
    if settings.flower_basic_auth:
        return settings.flower_basic_auth
    path = flower_credentials_path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(f"admin:{secrets.token_urlsafe(18)}\n")
    return path.read_text().strip()


def flower_environment(settings: Settings) -> dict[str, str]:
    """Flower's login, passed in its environment so the password never shows in `ps`."""
    credentials = flower_credentials(settings)
    if credentials is None:  # Flower's API refuses to work without a login unless told it is intended
        return {"FLOWER_UNAUTHENTICATED_API": "true"}
    return {"FLOWER_BASIC_AUTH": credentials}


def service_process(settings: Settings, name: str, loglevel: str = "info",
                    queues: list[str] | None = None, concurrency: int | None = None) -> ServiceProcess:
    """The process definition of `name` ('beat', 'worker', 'flower', 'admin' or 'simulator')."""
    run, logs = settings.run_path, settings.logs_path
    if name == "beat":
        logfile = logs / "celerybeat.log"
        return ServiceProcess(
            "beat", _celery(loglevel, "beat", "--loglevel", loglevel, "--logfile", str(logfile)),
            run / "celerybeat.pid", logfile, run / "beat.console", _log_says("schedule table synced"),
            BEAT_STOP_TIMEOUT, (CELERY_APP, "beat"))
    if name == "worker":
        logfile = logs / "celery_worker.log"
        argv = _celery(loglevel, "worker", "--queues", ",".join(queues or [q.value for q in Queue]),
                       "--hostname", "worker@%h", "--loglevel", loglevel, "--logfile", str(logfile))
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        return ServiceProcess("worker", argv, run / "celery_worker.pid", logfile, run / "worker.console",
                              _log_says(" ready."), WORKER_STOP_TIMEOUT, (CELERY_APP, "worker"))
    if name == "flower":
        logfile = logs / "flower.log"
        argv = _watched(logfile, "celery", "-A", FLOWER_APP, "flower", f"--address={settings.flower_address}",
                        f"--port={settings.flower_port}", f"--logging={loglevel}")
        return ServiceProcess("flower", argv, run / "flower.pid", logfile, run / "flower.console",
                              _port_open(settings.flower_port), FLOWER_STOP_TIMEOUT, (FLOWER_APP, "flower"),
                              lambda: flower_environment(settings))
    if name == "admin":
        logfile = logs / "admin.log"
        argv = _watched(logfile, "gunicorn", ADMIN_APP, "--bind", f"{settings.admin_address}:{settings.admin_port}",
                        "--workers", "2", "--preload", "--graceful-timeout", "10", "--log-level", loglevel,
                        "--no-control-socket")  # gunicorn 27's default socket is one per user, not per admin
        return ServiceProcess("admin", argv, run / "admin.pid", logfile, run / "admin.console",
                              _port_open(settings.admin_port), ADMIN_STOP_TIMEOUT, ("gunicorn", ADMIN_APP))
    if name == "simulator":
        logfile = logs / "simulator.log"
        argv = [sys.executable, "-m", "app", "simulator", "--port", str(settings.simulator_port)]
        return ServiceProcess("simulator", argv, run / "simulator.pid", logfile, logfile,
                              _port_open(settings.simulator_port), FLOWER_STOP_TIMEOUT, ("app", "simulator"))
    raise ValueError(f"unknown service {name!r}")


def _is_ours(process: psutil.Process, service: ServiceProcess) -> bool:
    """True when `process` runs `service` (a PID reused by anything else is not ours)."""
    try:
        cmdline = process.cmdline()
        cwd = process.cwd()
    except psutil.Error:
        return False
    return all(word in cmdline for word in service.marker) and cwd == str(PROJECT_ROOT)


def pid_state(service: ServiceProcess) -> PidState:
    try:
        text = service.pidfile.read_text().strip()
    except FileNotFoundError:
        return PidState("none")
    except OSError:
        return PidState("unreadable")
    try:
        pid = int(text)
    except ValueError:
        return PidState("unreadable")
    try:
        process = psutil.Process(pid)
    except psutil.Error:
        return PidState("stale", pid)
    if process.status() == psutil.STATUS_ZOMBIE or not _is_ours(process, service):
        return PidState("stale", pid)
    return PidState("running", pid)


def clear_stale_pidfile(service: ServiceProcess) -> PidState:
    """Remove a PID file that points at no process of ours; the state found."""
    state = pid_state(service)
    if state.state in ("stale", "unreadable"):
        service.pidfile.unlink(missing_ok=True)
    return state


def spawn(service: ServiceProcess, detached: bool) -> subprocess.Popen:
    """Start `service` in its own session and write its PID file.

    Detached, its stdout/stderr go to its console file; attached, to this terminal. The files it
    creates are its user's only, whatever umask the manager was started with.
    """
    for path in (service.pidfile.parent, service.logfile.parent):
        path.mkdir(parents=True, exist_ok=True)
    output = service.console.open("w") if detached else None
    try:
        child = subprocess.Popen(service.argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                 start_new_session=True, env={**os.environ, **service.environment()}, cwd=PROJECT_ROOT,
                                 umask=PRIVATE_UMASK)
    finally:
        if output:
            output.close()
    service.pidfile.write_text(f"{child.pid}\n")
    return child


def log_size(service: ServiceProcess) -> int:
    try:
        return service.logfile.stat().st_size
    except FileNotFoundError:
        return 0


def log_since(service: ServiceProcess, offset: int) -> str:
    try:
        with service.logfile.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _last_lines(path: Path, count: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-count:]
    except FileNotFoundError:
        return []


def recent_output(service: ServiceProcess, count: int = 15) -> list[str]:
    """The last lines `service` wrote: its console (errors before logging starts), then its log."""
    lines = _last_lines(service.console, 10)
    if service.logfile != service.console:
        lines += _last_lines(service.logfile, 10)
    return lines[-count:]


def wait_ready(service: ServiceProcess, child: subprocess.Popen, log_offset: int,
               timeout: float = READY_TIMEOUT) -> None:
    """Block until `service` says it is ready; ServiceError if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            service.pidfile.unlink(missing_ok=True)
            raise exit_error(service, child.returncode, log_since(service, log_offset))
        if service.is_ready(log_since(service, log_offset)):
            return
        time.sleep(0.2)
    terminate_pid(child.pid, 10)
    service.pidfile.unlink(missing_ok=True)
    raise ServiceError(f"{service.name} was not ready within {timeout:.0f}s")


def exit_error(service: ServiceProcess, code: int, output: str) -> ServiceError:
    """Why `service` exited with `code` while starting; ConfigRefused with its logged reason for EXIT_CONFIG_REFUSED."""
    if code == EXIT_CONFIG_REFUSED:
        reasons = [line.partition("CRITICAL/MainProcess] ")[2] for line in output.splitlines()
                   if "CRITICAL/MainProcess] " in line]
        if reasons:
            return ConfigRefused(reasons[-1])
    return ServiceError(f"{service.name} exited with code {code} while starting")


def terminate_pid(pid: int, timeout: float, on_wait: Callable[[float], None] | None = None) -> bool:
    """SIGTERM, wait up to `timeout` (calling on_wait(elapsed) now and then), then SIGKILL.

    True when the process ended by itself, False when it had to be killed.
    """
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        return True
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            process.wait(timeout=min(2.0, timeout))
            return True
        except psutil.TimeoutExpired:
            if on_wait:
                on_wait(time.monotonic() - started)
        except psutil.NoSuchProcess:
            return True
    try:
        process.kill()
        process.wait(timeout=10)
    except psutil.NoSuchProcess:
        pass
    return False


def kill_process_group(pid: int) -> None:
    """SIGKILL what is left of the session `pid` led (a dead worker's pool, gunicorn's workers)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_service(service: ServiceProcess, timeout: float | None = None,
                 on_wait: Callable[[float], None] | None = None) -> str:
    """Stop `service` gracefully and remove its PID file; 'stopped', 'killed' or 'not running'."""
    state = pid_state(service)
    if not state.running:
        service.pidfile.unlink(missing_ok=True)
        return "not running"
    graceful = terminate_pid(state.pid, service.stop_timeout if timeout is None else timeout, on_wait)
    service.pidfile.unlink(missing_ok=True)
    return "stopped" if graceful else "killed"


@dataclass(frozen=True)
class ProcessStats:
    pid: int
    uptime_seconds: float
    cpu_percent: float
    memory_bytes: int


def process_stats(pid: int) -> ProcessStats | None:
    """Uptime, CPU and resident memory of `pid` and its children (a worker's pool, say)."""
    try:
        process = psutil.Process(pid)
        family = [process, *process.children(recursive=True)]
        for member in family:
            member.cpu_percent(interval=None)  # the first reading only starts the measurement
        time.sleep(0.1)
        cpu = sum(member.cpu_percent(interval=None) for member in family)
        memory = sum(p.memory_info().rss for p in family)
        return ProcessStats(pid, time.time() - process.create_time(), cpu, memory)
    except psutil.Error:
        return None
