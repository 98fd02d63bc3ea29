"""The troubleshooting checks (`check`), container health probes (`health`) and the optional pieces this
host lacks. No printing: each check is a CheckResult the CLI renders."""

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from app.core.config import Settings, masked_url
from app.core.logging import HEALTH_PROBE_AGENT
from app.manager import inspect
from app.manager.processes import SERVICES, clear_stale_pidfile, pid_state, service_process

HEALTH_TIMEOUT = 5.0
PID_NOTES = {"none": "not running (no PID file)", "running": "running (pid {pid})",
             "stale": "stale PID file (pid {pid}) removed", "unreadable": "unreadable PID file removed"}


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    name: str
    detail: str


@dataclass(frozen=True)
class MissingPiece:
    """An optional piece this host lacks, and what its absence disables."""

    name: str
    detail: str
    disables: str


OPTIONAL_PIECES = {
    "chromium": "no tracking screenshots, so no 送达回证 receipts: delivered deliveries wait with evidence pending",
    "cjk font": "screenshots and receipts cannot render Chinese: evidence is not produced",
}


def _setup_django() -> None:
    import app.tasks.celery_app  # noqa: F401  (configures Django)


def _schedule_table() -> dict[str, dict]:
    _setup_django()
    from app.scheduling.table import load_schedule_table

    return load_schedule_table()


def run_checks(settings: Settings) -> Iterator[CheckResult]:
    """The seed's troubleshooting steps, in order; a failed probe skips the checks that need it."""
    for name in SERVICES:
        state = clear_stale_pidfile(service_process(settings, name))
        yield CheckResult(True, f"{name} pid", PID_NOTES[state.state].format(pid=state.pid))
    broker = inspect.probe_broker(settings)
    yield CheckResult(broker.ok, "broker", ("PONG from " if broker.ok else "") + broker.detail)
    database = inspect.probe_database(settings)
    yield CheckResult(database.ok, "database", ("SELECT 1 ok on " if database.ok else "") + database.detail)
    if database.ok:
        _setup_django()
        pending = inspect.pending_migrations()
        yield CheckResult(not pending, "migrations", "all applied" if not pending else
                          f"{len(pending)} not applied ({', '.join(pending[:3])}…); beat applies them at start")
    yield from _schedule_checks()
    yield from _evidence_checks(settings)
    if broker.ok:
        yield from _beat_liveness_check(settings)
        yield from _worker_checks()


def _evidence_checks(settings: Settings) -> Iterator[CheckResult]:
    """What the screenshot and receipt workers need on this host: Chromium (really started) and a Chinese font."""
    from app.services.errors import MissingDependencyError
    from app.services.evidence.fonts import cjk_font_path

    for name, find in (("chromium", _launched_chromium), ("cjk font", cjk_font_path)):
        try:
            yield CheckResult(True, name, str(find(settings)))
        except MissingDependencyError as error:
            yield CheckResult(False, name, f"{error}; without it, {OPTIONAL_PIECES[name]}")


def missing_pieces(settings: Settings) -> list[MissingPiece]:
    """The optional pieces this host lacks (looked up, not started: cheap enough for `status`)."""
    from app.services.errors import MissingDependencyError
    from app.services.evidence.browser import chromium_executable
    from app.services.evidence.fonts import cjk_font_path

    missing = []
    for name, find in (("chromium", chromium_executable), ("cjk font", cjk_font_path)):
        try:
            find(settings)
        except MissingDependencyError as error:
            missing.append(MissingPiece(name, str(error), OPTIONAL_PIECES[name]))
    return missing


def _launched_chromium(settings: Settings) -> str:
    """The Chromium a screenshot would use, once Playwright's driver has started it and closed it again."""
    from app.services.errors import MissingDependencyError
    from app.services.evidence.browser import chromium_executable
    from app.services.health import chromium_launch

    executable = chromium_executable(settings)
    try:
        version = chromium_launch(executable, settings.screenshot_timeout)
    except Exception as error:  # noqa: BLE001 - whatever stops the driver or the browser is the finding
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MissingDependencyError(f"{executable} found but Playwright could not start it: {first_line}") from None
    return f"{executable} (started and closed by Playwright, version {version})"


def _schedule_checks() -> Iterator[CheckResult]:
    _setup_django()
    from app.scheduling.table import ScheduleTableError, entry_problems, registered_tasks
    from app.tasks.celery_app import app

    try:
        table = _schedule_table()
    except ScheduleTableError as error:
        yield CheckResult(False, "schedule", str(error))
        return
    problems = entry_problems(table, registered_tasks(app))
    for problem in problems:
        yield CheckResult(False, "schedule", problem)
    if not problems:
        yield CheckResult(True, "schedule", f"{len(table)} entries valid")


def _beat_liveness_check(settings: Settings) -> Iterator[CheckResult]:
    liveness = inspect.beat_liveness(settings)
    if liveness is None:
        return
    beat_running = pid_state(service_process(settings, "beat")).running
    if liveness.ok or beat_running or liveness.heartbeats:
        yield CheckResult(liveness.ok, "beat leader", liveness.detail)


def _worker_checks() -> Iterator[CheckResult]:
    from app.scheduling.table import ScheduleTableError
    from app.tasks.queues import Queue

    consumers = inspect.worker_queues()
    if not consumers:
        yield CheckResult(False, "workers", "no worker answered a ping: start one with 'start --service worker'")
        return
    registered = set().union(*inspect.worker_tasks().values())  # a worker too slow to answer adds nothing
    try:
        scheduled = {entry["task"] for entry in _schedule_table().values()}
    except ScheduleTableError:
        scheduled = set()  # reported by the schedule check
    missing = sorted(scheduled - registered)
    yield CheckResult(not missing, "tasks", f"not registered with any worker: {', '.join(missing)}" if missing
                      else f"every scheduled task registered ({len(consumers)} worker(s))")
    consumed = {queue for queues in consumers.values() for queue in queues}
    idle = [q.value for q in Queue if q.value not in consumed]
    yield CheckResult(not idle, "queues", f"consumed by no worker: {', '.join(idle)}" if idle
                      else "every queue has a consumer")


# -- health probes (container healthchecks) ---------------------------------------------------


def beat_health(settings: Settings) -> tuple[bool, str]:
    """A beat on this host wrote its heartbeat within BEAT_LEADER_TIMEOUT (leading or standing by)."""
    liveness = inspect.beat_liveness(settings)
    if liveness is None:
        return False, f"cannot tell: broker {masked_url(settings.broker_url)} unreachable"
    host = socket.gethostname()
    here = [beat for beat in liveness.heartbeats if beat.host == host]
    if not here:
        return False, f"no heartbeat from host {host}"
    beat = min(here, key=lambda b: b.age_seconds)
    role = "leads" if beat.leading else "stands by"
    if not beat.alive(settings.beat_leader_timeout):
        return False, (f"{beat.identity} has not ticked for {beat.age_seconds:.0f} s "
                       f"(BEAT_LEADER_TIMEOUT {settings.beat_leader_timeout:.0f} s)")
    return True, f"{beat.identity} {role}, last tick {beat.age_seconds:.1f} s ago"


def worker_health(settings: Settings) -> tuple[bool, str]:
    """A worker named …@<this host> answers a ping."""
    if not inspect.probe_broker(settings).ok:
        return False, f"cannot tell: broker {masked_url(settings.broker_url)} unreachable"
    suffix = f"@{socket.gethostname()}"
    answered = [name for name in inspect.ping_workers(HEALTH_TIMEOUT) if name.endswith(suffix)]
    return bool(answered), (f"{', '.join(answered)} answered a ping" if answered
                            else f"no worker *{suffix} answered a ping within {HEALTH_TIMEOUT:.0f} s")


def _http_health(url: str, host: str | None) -> tuple[bool, str]:
    headers = {"User-Agent": HEALTH_PROBE_AGENT} | ({"Host": host} if host else {})
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HEALTH_TIMEOUT) as response:  # noqa: S310 - our own URL
            return response.status == 200, f"{url} answered {response.status}"
    except (urllib.error.URLError, OSError) as error:
        return False, f"{url}: {getattr(error, 'reason', error)}"


def flower_health(settings: Settings) -> tuple[bool, str]:
    return _http_health(f"http://127.0.0.1:{settings.flower_port}/healthcheck", None)


def admin_health(settings: Settings) -> tuple[bool, str]:
    hosts = settings.admin_hosts
    return _http_health(f"http://127.0.0.1:{settings.admin_port}/admin/login/", hosts[0] if hosts else None)


HEALTH_PROBES = {"beat": beat_health, "worker": worker_health, "flower": flower_health, "admin": admin_health}
