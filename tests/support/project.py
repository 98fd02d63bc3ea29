"""A copy of the project in a scratch directory, run as a user runs it: its own var/ and logs/."""

import compileall
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
# Variables of the in-process test set-up that must not leak into the copy's processes.
TEST_ONLY_VARIABLES = ("VAR_DIR", "LOGS_DIR", "APP_ENV_FILE", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL")

PRIME_SCHEDULE = """
import sys
from datetime import timedelta
from django.utils import timezone
from app.tasks.celery_app import app
from django_celery_beat.models import PeriodicTask
from app.core.migrations import migrate_all
from app.scheduling.sync import sync_schedule_table
from app.tasks.beat_schedules import BEAT_SCHEDULE
migrate_all()
sync_schedule_table(BEAT_SCHEDULE)
PeriodicTask.objects.filter(name=sys.argv[1]).update(last_run_at=timezone.now() - timedelta(hours=1))
"""

SCHEDULE_STATE = """
import json
from app.tasks.celery_app import app
from django_celery_beat.models import PeriodicTask
print(json.dumps({t.name: t.enabled for t in PeriodicTask.objects.all()}))
"""

def moment(text: str | None) -> datetime | None:
    """A time from `Project.job_runs()` (an ISO string, or None) as a datetime."""
    return datetime.fromisoformat(text) if text else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@functools.cache
def compiled_app() -> Path:
    """The project's app/ with every module's bytecode written, once per test process: each copy takes it
    along, so its first processes do not all compile the same 120 modules at once."""
    compileall.compile_dir(ROOT / "app", quiet=1)
    return ROOT / "app"


class Project:
    def __init__(self, directory: Path, extra_env: dict[str, str] | None = None):
        self.root = directory / "project"
        shutil.copytree(compiled_app(), self.root / "app")  # bytecode is checked against each source's mtime
        shutil.copy2(ROOT / "celery_beat_manager.py", self.root)
        self.env = {k: v for k, v in os.environ.items() if k not in TEST_ONLY_VARIABLES}
        # Never collide with a Flower, admin or simulator already running (the in-process tests' included).
        self.env["FLOWER_PORT"] = str(free_port())
        self.env["ADMIN_PORT"] = str(free_port())
        self.env["SIMULATOR_PORT"] = str(free_port())
        self.env.update(extra_env or {})
        self.logs = self.root / "logs"
        self.foreground: subprocess.Popen | None = None
        self._history = None  # a CopyHistory of the database at self._history_url
        self._history_url: str | None = None

    def python(self, code: str, *args: str) -> str:
        result = subprocess.run([sys.executable, "-c", code, *args], cwd=self.root, env=self.env,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise AssertionError(result.stderr)
        return result.stdout

    def manager(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run `python celery_beat_manager.py ARGS` in the copy, as an operator would."""
        return subprocess.run([sys.executable, "celery_beat_manager.py", *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def app_cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run `python -m app ARGS` in the copy."""
        return subprocess.run([sys.executable, "-m", "app", *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    def add_task_module(self, name: str, code: str) -> None:
        """Add app/tasks/NAME.py and register it, as a developer adding a job does."""
        (self.root / "app" / "tasks" / f"{name}.py").write_text(code)
        celery_app = self.root / "app" / "tasks" / "celery_app.py"
        text = celery_app.read_text()
        celery_app.write_text(text.replace('TASK_MODULES = [', f'TASK_MODULES = ["app.tasks.{name}", ', 1))

    def make_due(self, job: str) -> None:
        """Migrate, sync the table, and make `job` overdue, as if beat had been down for an hour."""
        self.python(PRIME_SCHEDULE, job)

    def schedule_state(self) -> dict[str, bool]:
        return json.loads(self.python(SCHEDULE_STATE).strip().splitlines()[-1])

    def database_url(self) -> str:
        """The copy's database, as its own settings name it (its APP_HOME is the copy)."""
        from app.core.config import Settings

        return Settings(app_home=self.root, database_url=self.env.get("DATABASE_URL") or None,
                        var_dir=self.env.get("VAR_DIR") or None).sqlalchemy_url

    def job_runs(self) -> list[dict]:
        """The run history (job_runs) in the copy's database, oldest first, times as ISO strings; read
        from this process, so polling it starts no Python process."""
        from tests.support.inprocess_beat import CopyHistory

        url = self.database_url()
        if self._history is None or self._history_url != url:
            self.close_history()
            self._history, self._history_url = CopyHistory(url), url
        return self._history.runs()

    def close_history(self) -> None:
        if self._history is not None:
            self._history.close()
            self._history = None

    def edit_schedule(self, remove: str) -> None:
        """Remove one entry from the copy's beat_schedules.py, as a user would in an editor."""
        path = self.root / "app" / "tasks" / "beat_schedules.py"
        text = path.read_text()
        start = text.index(f'    "{remove}": {{')
        end = text.index("    },\n", start) + len("    },\n")
        path.write_text(text[:start] + text[end:])

    def start_foreground(self, *args: str, sigint_ignored: bool = False) -> subprocess.Popen:
        """Run `foreground`; `sigint_ignored` starts it as a non-interactive shell's `cmd &` does."""
        out = (self.root / "manager.out").open("w")
        ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        self.foreground = subprocess.Popen(
            [sys.executable, "celery_beat_manager.py", "foreground", *args],
            cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=ignore,
        )
        return self.foreground

    def log_text(self, name: str) -> str:
        path = self.logs / name
        return path.read_text(errors="replace") if path.exists() else ""

    def output(self) -> str:
        return (self.root / "manager.out").read_text()

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as in a terminal; the manager's exit code."""
        self.foreground.send_signal(signal.SIGINT)
        return self.foreground.wait(timeout)

    def processes(self) -> list[psutil.Process]:
        """Processes still running from this copy (by working directory or command line)."""
        found = []
        for process in psutil.process_iter(["cmdline", "cwd"]):
            info = process.info
            if process.pid == os.getpid():
                continue
            if info["cwd"] == str(self.root) or any(str(self.root) in part for part in info["cmdline"] or []):
                found.append(process)
        return found

    def task_results(self) -> list[dict]:
        path = self.logs / "task_results.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def wait_for_result(self, task_name: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.task_results():
                if line["name"] == task_name:
                    return line
            if self.foreground and self.foreground.poll() is not None:
                raise AssertionError(f"manager exited early:\n{self.output()}")
            time.sleep(0.2)
        raise AssertionError(f"{task_name} never finished; manager output:\n{self.output()}")

    def kill_all(self) -> None:
        """SIGKILL every process of the copy and wait until they are gone."""
        found = self.processes()
        for process in found:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(found, timeout=10)
        self.close_history()

    def start_process(self, *argv: str, output: str) -> subprocess.Popen:
        """Start `argv` in the copy, in a session of its own, its stdout and stderr into the file `output` there."""
        with (self.root / output).open("w") as out:
            return subprocess.Popen(list(argv), cwd=self.root, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
