"""The process model: what each service runs and where it logs. No printing here."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.core.config import Settings
from app.tasks.queues import Queue

CELERY_APP = "app.tasks.celery_app"
LOGFILES = {"beat": "celerybeat.log", "worker": "celery_worker.log"}


@dataclass(frozen=True)
class ServiceProcess:
    name: str
    argv: list[str]
    pidfile: Path
    logfile: Path


def beat_process(settings: Settings, loglevel: str) -> ServiceProcess:
    pidfile = settings.run_path / "celerybeat.pid"
    logfile = settings.logs_path / LOGFILES["beat"]
    argv = [sys.executable, "-m", "celery", "-A", CELERY_APP, "beat",
            "--loglevel", loglevel, "--logfile", str(logfile), "--pidfile", str(pidfile)]
    return ServiceProcess("beat", argv, pidfile, logfile)


def worker_process(settings: Settings, loglevel: str, queues: list[str] | None = None,
                   concurrency: int | None = None) -> ServiceProcess:
    pidfile = settings.run_path / "celery_worker.pid"
    logfile = settings.logs_path / LOGFILES["worker"]
    argv = [sys.executable, "-m", "celery", "-A", CELERY_APP, "worker",
            "--queues", ",".join(queues or [q.value for q in Queue]),
            "--hostname", "worker@%h", "--loglevel", loglevel,
            "--logfile", str(logfile), "--pidfile", str(pidfile)]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return ServiceProcess("worker", argv, pidfile, logfile)


def spawn(process: ServiceProcess) -> subprocess.Popen:
    """Start a service in its own session, so a terminal's Ctrl-C reaches only the manager."""
    for path in (process.pidfile.parent, process.logfile.parent):
        path.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(process.argv, stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy())


def terminate(child: subprocess.Popen, timeout: float) -> int:
    """SIGTERM (Celery's warm shutdown), wait up to `timeout`, then SIGKILL; the exit code."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            return child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
    return child.wait()


def wait_any(children: dict[str, subprocess.Popen], interval: float = 0.2) -> str:
    """Block until one child exits; its name."""
    while True:
        for name, child in children.items():
            if child.poll() is not None:
                return name
        time.sleep(interval)
