"""celery_beat_manager.py: the seed's 使用方法 and 故障排除 as one command-line tool."""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time

from app.core.broker import BrokerError, EmbeddedBroker
from app.core.config import PRIVATE_UMASK, PROJECT_ROOT, ConfigError, Settings, load_settings, masked_url
from app.manager import inspect
from app.manager.output import confirm, human_bytes, human_duration, paint, table
from app.manager.processes import (
    SERVICES,
    ServiceError,
    ServiceProcess,
    clear_stale_pidfile,
    flower_credentials,
    flower_credentials_path,
    log_size,
    pid_state,
    process_stats,
    service_process,
    spawn,
    stop_service,
    wait_ready,
)
from app.manager.tail import follow, follow_in_background

LOGLEVELS = ["debug", "info", "warning", "error"]
START_ORDER = ["simulator", "worker", "beat", "flower", "admin"]
STOP_ORDER = ["admin", "flower", "beat", "worker", "simulator"]
EXIT_OK, EXIT_ERROR, EXIT_STOPPED = 0, 1, 3
RUN_TIMEOUT = 900.0


class ManagerError(Exception):
    """An expected failure: reported as one line and a non-zero exit, never a traceback."""


def _interrupt(*_):
    raise KeyboardInterrupt


def _chosen(args, settings: Settings) -> list[str]:
    service = getattr(args, "service", "beat")
    return _all_services(settings) if service == "all" else [service]


def _all_services(settings: Settings) -> list[str]:
    """Every service this configuration runs: the simulator only when tracking against it."""
    return [name for name in START_ORDER if name != "simulator" or settings.tracking_provider == "simulator"]


def _process(settings: Settings, name: str, args) -> ServiceProcess:
    return service_process(settings, name, getattr(args, "loglevel", None) or settings.log_level,
                           getattr(args, "queues", None), getattr(args, "concurrency", None))


def _broker(settings: Settings) -> EmbeddedBroker | None:
    return EmbeddedBroker(settings) if settings.uses_embedded_broker else None


def _tail_lines(path, count: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-count:]
    except FileNotFoundError:
        return []


def _anything_running(settings: Settings) -> bool:
    return any(pid_state(service_process(settings, name)).running for name in SERVICES if name != "simulator")


# -- start / stop / restart -------------------------------------------------------------------


def cmd_start(settings: Settings, args) -> int:
    names = _chosen(args, settings)
    running = [name for name in names if clear_stale_pidfile(_process(settings, name, args)).running]
    broker = _broker(settings)
    broker_dead = bool(broker) and broker.pid() is None
    if running and len(running) == len(names) and not broker_dead:
        pid = pid_state(_process(settings, running[0], args)).pid
        raise ManagerError(f"{', '.join(running)} already running (pid {pid}); use 'restart' or 'stop' first")
    if "beat" in names and "beat" not in running:
        _refuse_bad_schedule()
    if broker_dead:
        broker.start()
        print(f"broker   started (embedded, {broker.url})")
    for name in names:
        if name in running:
            print(f"{name:<8} already running")
            continue
        _start_detached(_process(settings, name, args))
    return EXIT_OK


def _start_detached(service: ServiceProcess) -> None:
    offset = log_size(service)
    child = spawn(service, detached=True)
    try:
        wait_ready(service, child, offset)
    except ServiceError as error:
        lines = _tail_lines(service.console, 10) + _tail_lines(service.logfile, 10)
        detail = "\n".join(f"    {line}" for line in lines[-15:])
        raise ManagerError(f"{error}; last lines of {service.logfile.name} / {service.console.name}:\n{detail}") from None
    print(f"{service.name:<8} started (pid {child.pid}), log {service.logfile}")


def cmd_stop(settings: Settings, args) -> int:
    names = [name for name in STOP_ORDER if name in _chosen(args, settings)]
    for name in names:
        service = _process(settings, name, args)
        state = pid_state(service)

        def waiting(elapsed, name=name):
            if elapsed >= 5:
                print(f"{name:<8} still finishing its work after {elapsed:.0f}s…", flush=True)

        outcome = stop_service(service, args.timeout, waiting)
        detail = f" (pid {state.pid})" if state.running else ""
        print(f"{name:<8} {outcome}{detail}")
    broker = _broker(settings)
    if broker and broker.pid() and not _anything_running(settings):
        broker.stop()
        print("broker   stopped (embedded; nothing else was using it)")
    return EXIT_OK


def cmd_restart(settings: Settings, args) -> int:
    cmd_stop(settings, args)
    return cmd_start(settings, args)


# -- foreground ------------------------------------------------------------------------------


def cmd_foreground(settings: Settings, args) -> int:
    """Run the chosen services in this terminal until Ctrl-C; stop them all on the way out."""
    services = [_process(settings, name, args) for name in _chosen(args, settings)]
    busy = [s.name for s in services if clear_stale_pidfile(s).running]
    if busy:
        raise ManagerError(f"{', '.join(busy)} already running in the background; 'stop' it first")
    if any(s.name == "beat" for s in services):
        _refuse_bad_schedule()
    broker = _broker(settings)
    started_broker = bool(broker) and broker.pid() is None
    children, stop_tailing = {}, threading.Event()
    signal.signal(signal.SIGTERM, _interrupt)
    # A shell starting us in the background ignores SIGINT for us; Ctrl-C must stop us anyway.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if started_broker:
            broker.start()
            print(f"embedded broker ready at {broker.url}", flush=True)
        follow_in_background({s.name: s.logfile for s in services}, stop_tailing)
        for service in services:
            children[service.name] = spawn(service, detached=False)
            print(f"started {service.name} (pid {children[service.name].pid}), log {service.logfile}", flush=True)
        exited = _wait_any(children, broker if started_broker else None)
        code = children[exited].returncode
        print(f"{exited} exited with code {code}; stopping the rest", file=sys.stderr, flush=True)
        return code or EXIT_ERROR
    except KeyboardInterrupt:
        print("stopping…", flush=True)
        return EXIT_OK
    finally:
        for service in sorted(services, key=lambda s: STOP_ORDER.index(s.name)):
            if service.name in children:
                stop_service(service, args.timeout)
                children[service.name].wait()
        stop_tailing.set()
        if started_broker:
            broker.stop()


def _wait_any(children: dict, broker: EmbeddedBroker | None) -> str:
    """The name of the first child to exit; an embedded broker that dies meanwhile is started again."""
    while True:
        for name, child in children.items():
            if child.poll() is not None:
                return name
        if broker and broker.pid() is None:
            print("embedded broker exited; starting it again", file=sys.stderr, flush=True)
            broker.start()
            print(f"embedded broker ready at {broker.url}", flush=True)
        time.sleep(0.2)


# -- status / check --------------------------------------------------------------------------


def _service_rows(settings: Settings, names: list[str], liveness,
                  workers: dict | None) -> tuple[list[list[str]], dict[str, bool]]:
    """One row per service; a beat or worker with no process here is judged by the broker (compose, other hosts)."""
    rows, running = [], {}
    broker = _broker(settings)
    if broker:
        rows.append(_stats_row("broker", broker.pid(), "embedded"))
    for name in names:
        state = clear_stale_pidfile(service_process(settings, name))
        running[name] = state.running
        rows.append(_stats_row(name, state.pid if state.running else None, ""))
        if name == "beat" and state.running:
            running[name] = _judge_beat(rows[-1], state.pid, liveness, settings.beat_leader_timeout)
        elif name == "beat":
            running[name] = _judge_cluster_beat(rows[-1], liveness, state.pid)
        elif name == "worker" and not state.running:
            running[name] = _judge_cluster_workers(rows[-1], workers)
    return rows, running


def _judge_cluster_beat(row: list[str], liveness, dead_local_pid: int | None) -> bool:
    """No beat process here: whether some beat leads and ticks, from the lease and heartbeats in the broker.

    A heartbeat left by the beat whose stale PID file was just removed here is not taken for a live one.
    """
    if liveness is None:
        return False
    host = socket.gethostname()
    leader = next((b for b in liveness.heartbeats if b.leading), None)
    dead_here = leader is not None and leader.host == host and leader.pid == dead_local_pid
    if liveness.ok and not dead_here:
        row[1], row[6] = paint("running", "green"), f"no process here; cluster: {liveness.detail}"
        return True
    row[6] = f"no process here; cluster: {liveness.detail}"
    return False


def _judge_cluster_workers(row: list[str], workers: dict | None) -> bool:
    """No worker process here: whether any worker answered the ping."""
    if not workers:
        return False
    row[1], row[6] = paint("running", "green"), f"no process here; {len(workers)} answer a ping"
    return True


def _stats_row(name: str, pid: int | None, note: str) -> list[str]:
    stats = process_stats(pid) if pid else None
    if stats is None:
        return [name, paint("stopped", "yellow"), "-", "-", "-", "-", note]
    return [name, paint("running", "green"), str(stats.pid), human_duration(stats.uptime_seconds),
            f"{stats.cpu_percent:.1f}%", human_bytes(stats.memory_bytes), note]


def _judge_beat(row: list[str], pid: int, liveness, timeout: float) -> bool:
    """Mark a running beat process down when its heartbeat is stale; whether it is alive."""
    if liveness is None:
        row[6] = "heartbeat unknown: broker unreachable"
        return True
    host = socket.gethostname()
    beat = next((b for b in liveness.heartbeats if b.pid == pid and b.host == host), None)
    if beat and beat.alive(timeout):
        row[6] = "leader" if beat.leading else "standby"
        return True
    stats = process_stats(pid)
    if beat is None and stats and stats.uptime_seconds < timeout:
        row[1], row[6] = paint("starting", "yellow"), "no heartbeat yet"
        return True
    row[1] = paint("down", "red")
    row[6] = (f"process alive but no tick for {beat.age_seconds:.0f} s (stuck?)" if beat
              else "process alive but never wrote a heartbeat")
    return False


def cmd_status(settings: Settings, args) -> int:
    names = _all_services(settings) if args.service == "all" else (args.service,)
    broker_probe = inspect.probe_broker(settings)
    liveness = inspect.beat_liveness(settings) if broker_probe.ok else None
    workers = inspect.worker_queues() if broker_probe.ok else {}
    rows, running = _service_rows(settings, list(names), liveness, workers)
    print(table(["service", "state", "pid", "uptime", "cpu", "memory", ""], rows))
    print()
    database_probe = inspect.probe_database(settings)
    facts = [
        ["broker", _ok(broker_probe.ok, "reachable", "unreachable"), broker_probe.detail],
        ["database", _ok(database_probe.ok, "reachable", "unreachable"), database_probe.detail],
    ]
    if liveness is not None:
        facts.append(["leader", _ok(liveness.ok, "ok", "none"), liveness.detail])
    if broker_probe.ok:
        facts.append(["workers", str(len(workers)), "; ".join(f"{w}: {', '.join(q)}" for w, q in workers.items()) or "none answered a ping"])
        depths = inspect.queue_depths(settings)
        facts.append(["queued", str(sum(depths.values())), "  ".join(f"{q} {n}" for q, n in depths.items())])
    if database_probe.ok:
        facts.append(["next due", *_next_due()])
    if running.get("flower"):
        facts.append(["flower", f"http://{settings.flower_address}:{settings.flower_port}", _flower_login(settings)])
    if running.get("admin"):
        facts.append(["admin", f"http://{settings.admin_address}:{settings.admin_port}/admin/",
                      "log in as a user made with 'celery_beat_manager.py createsuperuser'"])
    print(table(None, facts))
    problems = _status_problems(settings, running, broker_probe, database_probe, workers)
    for problem in problems:
        print(paint(problem, "red"), file=sys.stderr)
    return EXIT_STOPPED if problems else EXIT_OK


def _status_problems(settings: Settings, running: dict[str, bool], broker_probe, database_probe,
                     workers: dict) -> list[str]:
    """One line per service that is not running or does not answer; empty when all is well."""
    stopped = [name for name, alive in running.items() if not alive]
    problems = [f"not running: {', '.join(stopped)}"] if stopped else []
    broker = _broker(settings)
    if broker and broker.pid() is None:
        problems.append("not running: embedded broker (start any service to start it again)")
    elif not broker_probe.ok:
        problems.append(f"unreachable: broker {broker_probe.detail}")
    if not database_probe.ok:
        problems.append(f"unreachable: database {database_probe.detail}")
    own_worker = f"worker@{socket.gethostname()}"
    if running.get("worker") and broker_probe.ok and own_worker not in workers:
        problems.append(f"not answering: {own_worker} runs but did not answer a ping")
    return problems


def _flower_login(settings: Settings) -> str:
    if settings.flower_auth_disabled:
        return paint("no login (FLOWER_AUTH_DISABLED=true)", "yellow")
    if settings.flower_basic_auth:
        return f"user {settings.flower_basic_auth.split(':')[0]}, password as set in FLOWER_BASIC_AUTH"
    user = flower_credentials(settings).partition(":")[0]
    return f"user {user}, password in {flower_credentials_path(settings)} (generated)"


def _ok(ok: bool, good: str, bad: str) -> str:
    return paint(good, "green") if ok else paint(bad, "red")


def _next_due() -> list[str]:
    _setup_django()
    from app.scheduling.overview import next_due

    try:
        row = next_due(_schedule_table())
    except Exception as error:  # noqa: BLE001 - a fresh database has no tables until beat starts
        return ["-", f"schedule not readable yet ({type(error).__name__}); beat creates it at start"]
    return [row.name, f"at {row.next_run} (Asia/Shanghai)"] if row else ["-", "no enabled job"]


def _setup_django() -> None:
    import app.tasks.celery_app  # noqa: F401  (configures Django)


def _schedule_table() -> dict[str, dict]:
    """beat_schedules.py's table; a file that cannot be loaded is one line naming the entry."""
    _setup_django()
    from app.scheduling.table import ScheduleTableError, load_schedule_table

    try:
        return load_schedule_table()
    except ScheduleTableError as error:
        raise ManagerError(str(error)) from None


def _refuse_bad_schedule() -> None:
    """Stop before starting beat when an entry of the table could not be scheduled."""
    _setup_django()
    from app.scheduling.table import ScheduleTableError, checked_schedule_table
    from app.tasks.celery_app import app

    try:
        checked_schedule_table(app)
    except ScheduleTableError as error:
        raise ManagerError(f"beat not started: {error}") from None


def cmd_check(settings: Settings, args) -> int:
    """The seed's troubleshooting steps, one line each; exit 1 when any fails."""
    results = list(_checks(settings))
    for ok, name, detail in results:
        mark = paint("ok  ", "green") if ok else paint("FAIL", "red")
        print(f"{mark}  {name:<11} {detail}")
    return EXIT_OK if all(ok for ok, _, _ in results) else EXIT_ERROR


def _checks(settings: Settings):
    for name in SERVICES:
        state = clear_stale_pidfile(service_process(settings, name))
        note = {"none": "not running (no PID file)", "running": f"running (pid {state.pid})",
                "stale": f"stale PID file (pid {state.pid}) removed", "unreadable": "unreadable PID file removed"}
        yield True, f"{name} pid", note[state.state]
    broker = inspect.probe_broker(settings)
    yield broker.ok, "broker", ("PONG from " if broker.ok else "") + broker.detail
    database = inspect.probe_database(settings)
    yield database.ok, "database", ("SELECT 1 ok on " if database.ok else "") + database.detail
    if database.ok:
        _setup_django()
        pending = inspect.pending_migrations()
        yield not pending, "migrations", ("all applied" if not pending else
                                          f"{len(pending)} not applied ({', '.join(pending[:3])}…); beat applies them at start")
    yield from _schedule_checks()
    yield from _evidence_checks(settings)
    if broker.ok:
        yield from _beat_liveness_check(settings)
        yield from _worker_checks()


def _evidence_checks(settings: Settings):
    """What the screenshot and receipt workers need on this host: Chromium and a Chinese font."""
    from app.services.errors import MissingDependencyError
    from app.services.evidence.fonts import cjk_font_path

    for name, find in (("chromium", _launched_chromium), ("cjk font", cjk_font_path)):
        try:
            yield True, name, str(find(settings))
        except MissingDependencyError as error:
            yield False, name, str(error)


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


def _schedule_checks():
    _setup_django()
    from app.scheduling.table import entry_problems, registered_tasks
    from app.tasks.celery_app import app

    try:
        table = _schedule_table()
    except ManagerError as error:
        yield False, "schedule", str(error)
        return
    problems = entry_problems(table, registered_tasks(app))
    for problem in problems:
        yield False, "schedule", problem
    if not problems:
        yield True, "schedule", f"{len(table)} entries valid"


def _beat_liveness_check(settings: Settings):
    liveness = inspect.beat_liveness(settings)
    if liveness is None:
        return
    beat_running = pid_state(service_process(settings, "beat")).running
    if liveness.ok or beat_running or liveness.heartbeats:
        yield liveness.ok, "beat leader", liveness.detail


def _worker_checks():
    from app.tasks.queues import Queue

    consumers = inspect.worker_queues()
    if not consumers:
        yield False, "workers", "no worker answered a ping: start one with 'start --service worker'"
        return
    registered = set().union(*inspect.worker_tasks().values())  # a worker too slow to answer adds nothing
    missing = sorted({entry["task"] for entry in _schedule_table().values()} - registered)
    yield not missing, "tasks", (f"not registered with any worker: {', '.join(missing)}" if missing
                                 else f"every scheduled task registered ({len(consumers)} worker(s))")
    consumed = {queue for queues in consumers.values() for queue in queues}
    idle = [q.value for q in Queue if q.value not in consumed]
    yield not idle, "queues", (f"consumed by no worker: {', '.join(idle)}" if idle else "every queue has a consumer")


# -- health (container healthchecks) ---------------------------------------------------------

HEALTH_TIMEOUT = 5.0


def cmd_health(settings: Settings, args) -> int:
    """One service of this host (container) in one line: exit 0 when it does its job, 1 when not."""
    ok, detail = HEALTH_PROBES[args.service](settings)
    print(f"{'ok' if ok else 'unhealthy'}: {args.service} {detail}")
    return EXIT_OK if ok else EXIT_ERROR


def _beat_health(settings: Settings) -> tuple[bool, str]:
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


def _worker_health(settings: Settings) -> tuple[bool, str]:
    """A worker named …@<this host> answers a ping."""
    if not inspect.probe_broker(settings).ok:
        return False, f"cannot tell: broker {masked_url(settings.broker_url)} unreachable"
    suffix = f"@{socket.gethostname()}"
    answered = [name for name in inspect.ping_workers(HEALTH_TIMEOUT) if name.endswith(suffix)]
    return bool(answered), (f"{', '.join(answered)} answered a ping" if answered
                            else f"no worker *{suffix} answered a ping within {HEALTH_TIMEOUT:.0f} s")


def _http_health(url: str, host: str | None) -> tuple[bool, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=HEALTH_TIMEOUT) as response:  # noqa: S310 - our own URL
            return response.status == 200, f"{url} answered {response.status}"
    except (urllib.error.URLError, OSError) as error:
        return False, f"{url}: {getattr(error, 'reason', error)}"


def _flower_health(settings: Settings) -> tuple[bool, str]:
    return _http_health(f"http://127.0.0.1:{settings.flower_port}/healthcheck", None)


def _admin_health(settings: Settings) -> tuple[bool, str]:
    hosts = settings.admin_hosts
    return _http_health(f"http://127.0.0.1:{settings.admin_port}/admin/login/", hosts[0] if hosts else None)


HEALTH_PROBES = {"beat": _beat_health, "worker": _worker_health, "flower": _flower_health, "admin": _admin_health}


# -- logs / list / clear / run ---------------------------------------------------------------


def cmd_logs(settings: Settings, args) -> int:
    name = "beat" if args.service == "all" else args.service
    path = service_process(settings, name).logfile
    if not path.exists() and not args.follow:
        raise ManagerError(f"no log yet at {path}")
    for line in _tail_lines(path, args.lines):
        print(line)
    if args.follow:
        stop = threading.Event()
        try:
            follow(path, "", stop)
        except KeyboardInterrupt:
            stop.set()
    return EXIT_OK


def _drift_note(row) -> str:
    if row.drift:
        return paint(",".join(row.drift), "yellow")
    if row.replaced_admin_edit:
        return paint(f"replaced:{','.join(row.replaced_admin_edit)}", "yellow")
    return "-"


OUTCOME_COLOURS = {"success": "green", "failure": "red", "lost": "red", "skipped_overlap": "yellow",
                   "skipped_missed": "yellow"}


def _outcome_note(outcome: str | None) -> str:
    return paint(outcome, OUTCOME_COLOURS[outcome]) if outcome in OUTCOME_COLOURS else outcome or "-"


def cmd_list(settings: Settings, args) -> int:
    schedule_table = _schedule_table()
    _setup_django()
    from app.scheduling.overview import job_rows
    from app.core.migrations import migrate_all

    migrate_all()
    rows = job_rows(schedule_table)
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], ensure_ascii=False, indent=2))
        return EXIT_OK
    if not rows:
        print("no periodic jobs yet: beat writes beat_schedules.py into the database at start")
        return EXIT_OK
    print(table(
        ["name", "task", "schedule", "cron/interval", "queue", "enabled", "policy", "last run", "outcome", "late",
         "next run", "source", "drift"],
        [[r.name, r.task.removeprefix("app.tasks."), r.schedule, r.expression, r.queue or "-",
          "yes" if r.enabled else paint("no", "yellow"), f"{r.policy['overlap']}/{r.policy['missed']}",
          r.last_run or "-", _outcome_note(r.last_outcome),
          "-" if r.last_lateness_seconds is None else f"{r.last_lateness_seconds:.1f}s",
          r.next_run or "-", r.source, _drift_note(r)] for r in rows]))
    print("\ntimes are Asia/Shanghai; policy = overlap/missed (CELERY_BEAT_CONFIG.md §2.2); "
          "outcome and late = the last recorded run and how long after its due time "
          "beat sent it; drift = a beat_schedules.py job edited in the admin (the edit stands "
          "until the entry changes in the file); replaced = an admin edit the file's change overwrote")
    return EXIT_OK


def cmd_migrate(settings: Settings, args) -> int:
    _setup_django()
    from app.core.migrations import migrate_all

    migrate_all()
    print(f"database schema up to date ({masked_url(settings.sqlalchemy_url)})")
    return EXIT_OK


def cmd_createsuperuser(settings: Settings, args) -> int:
    _setup_django()
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from app.core.migrations import migrate_all

    if args.no_input and not (args.username and os.environ.get("DJANGO_SUPERUSER_PASSWORD")):
        raise ManagerError("--no-input needs --username and DJANGO_SUPERUSER_PASSWORD")
    if not args.no_input and not sys.stdin.isatty():
        raise ManagerError("no terminal to ask for the password: pass --no-input, --username and "
                           "DJANGO_SUPERUSER_PASSWORD")
    migrate_all()
    if args.no_input:  # Django checks the password against AUTH_PASSWORD_VALIDATORS only when it asks for it
        _refuse_weak_password(args.username, os.environ["DJANGO_SUPERUSER_PASSWORD"])
    try:
        call_command("createsuperuser", interactive=not args.no_input, username=args.username,
                     email=args.email, verbosity=0)
    except CommandError as error:
        raise ManagerError(str(error)) from None
    print(f"admin user created; log in at http://{settings.admin_address}:{settings.admin_port}/admin/")
    return EXIT_OK


def _refuse_weak_password(username: str, password: str) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    try:
        validate_password(password, get_user_model()(username=username))
    except ValidationError as error:
        raise ManagerError(f"DJANGO_SUPERUSER_PASSWORD refused: {' '.join(error.messages)}") from None


def cmd_clear(settings: Settings, args) -> int:
    if pid_state(service_process(settings, "beat")).running:
        raise ManagerError("beat is running: stop it first ('stop'), then clear")
    scope = "every periodic job, admin-created ones included," if args.all else "the jobs of beat_schedules.py"
    if not args.yes and not confirm(f"Reset {scope} from beat_schedules.py (run history is lost)?", ManagerError):
        print("nothing changed")
        return EXIT_ERROR
    schedule_table = _schedule_table()
    removed = _remove_schedule_files(settings)
    _setup_django()
    from app.core.migrations import migrate_all
    from app.scheduling.sync import reset_schedule

    migrate_all()
    deleted, report = reset_schedule(schedule_table, everything=args.all)
    print(f"removed {removed} schedule/PID file(s); deleted {deleted} job row(s); "
          f"recreated {len(report.created)} job(s) from beat_schedules.py")
    return EXIT_OK


def _remove_schedule_files(settings: Settings) -> int:
    """Stock beat's schedule files (celerybeat-schedule*) and PID files that point at nothing."""
    removed = 0
    for folder in {PROJECT_ROOT, settings.app_home, settings.var_path, settings.run_path}:
        for path in folder.glob("celerybeat-schedule*"):
            path.unlink()
            removed += 1
    for name in SERVICES:
        removed += clear_stale_pidfile(service_process(settings, name)).state in ("stale", "unreadable")
    return removed


def cmd_run(settings: Settings, args) -> int:
    schedule_table = _schedule_table()
    if args.job not in schedule_table:
        raise ManagerError(f"no job {args.job!r} in beat_schedules.py; 'list' shows them")
    entry = schedule_table[args.job]
    from app.tasks.celery_app import app

    queue = entry["options"]["queue"]
    broker = inspect.probe_broker(settings)
    if not broker.ok:
        raise ManagerError(f"broker not reachable ({broker.detail}); start the service first")
    if not args.no_wait and not any(queue in queues for queues in inspect.worker_queues().values()):
        raise ManagerError(f"no running worker consumes queue {queue}: start one, or pass --no-wait to queue the job")
    result = app.send_task(entry["task"], args=entry.get("args", []), kwargs=entry.get("kwargs", {}), queue=queue)
    if args.no_wait:
        print(result.id)
        return EXIT_OK
    print(f"sent {args.job} ({entry['task']}) to {queue} as {result.id}; waiting…", file=sys.stderr, flush=True)
    value = result.get(timeout=args.timeout, propagate=False)
    if result.failed():
        print(f"{args.job} failed: {type(value).__name__}: {value}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(value, ensure_ascii=False, indent=2, default=str))
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------


def _add_service(parser, default="beat", choices=(*SERVICES, "all")):
    parser.add_argument("--service", choices=choices, default=default,
                        help=f"which service (default: {default}); all = broker + carrier simulator "
                             "(TRACKING_PROVIDER=simulator) + worker + beat + flower + admin")


def _add_loglevel(parser):
    parser.add_argument("--loglevel", type=str.lower, choices=LOGLEVELS, default=None,
                        help="log level (default: LOG_LEVEL, else info)")
    parser.add_argument("--queues", type=lambda v: [q for q in v.split(",") if q], default=None,
                        help="worker queues, comma separated (default: all five)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="worker processes (default: WORKER_CONCURRENCY)")


def _add_timeout(parser):
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for a graceful stop before killing "
                             "(default: beat 30, flower 10, worker 660 = hard time limit + 60)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celery_beat_manager.py",
        description="Celery Beat 管理脚本: start, stop and inspect the scheduled-jobs service.",
        epilog="Exit codes: 0 ok, 1 error, 3 (status) service stopped. Run COMMAND --help for details.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, summary, description=None):
        sub = commands.add_parser(name, help=summary, description=description or summary)
        sub.set_defaults(handler=handler)
        return sub

    start = command("start", cmd_start, "后台运行 / start in the background and wait until up",
                    "Start the service detached (with the embedded broker when CELERY_BROKER_URL is unset); "
                    "returns once it is up, or exits 1 with its last log lines.")
    _add_service(start)
    _add_loglevel(start)

    foreground = command("foreground", cmd_foreground, "前台运行 / run in this terminal until Ctrl-C")
    _add_service(foreground)
    _add_loglevel(foreground)
    _add_timeout(foreground)

    stop = command("stop", cmd_stop, "停止服务 / stop gracefully (SIGTERM, wait, then SIGKILL)")
    _add_service(stop)
    _add_timeout(stop)

    restart = command("restart", cmd_restart, "重启服务 / stop, then start")
    _add_service(restart)
    _add_loglevel(restart)
    _add_timeout(restart)

    status = command("status", cmd_status, "查看状态 / processes, broker, database, workers, queues, next job",
                     "Exit 0 when the service runs, 3 when it is stopped, 1 on error.")
    _add_service(status)

    logs = command("logs", cmd_logs, "查看日志 / show a service's log")
    _add_service(logs, choices=SERVICES)
    logs.add_argument("--lines", "-n", type=int, default=50, help="how many last lines (default 50)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until Ctrl-C")

    listing = command("list", cmd_list, "列出所有定时任务 / every periodic job with its next run")
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    clear = command("clear", cmd_clear, "清除调度文件 / reset the schedule from beat_schedules.py",
                    "Remove schedule files and stale PID files and reset the database schedule from "
                    "beat_schedules.py. Jobs created in the admin survive unless --all.")
    clear.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    clear.add_argument("--all", action="store_true", help="also delete jobs created in the admin")

    run = command("run", cmd_run, "立即执行 / send one job of the table now and print its result")
    run.add_argument("job", help="the job's name in beat_schedules.py, e.g. cleanup-temp-files")
    run.add_argument("--no-wait", action="store_true", help="print the task id instead of waiting")
    run.add_argument("--timeout", type=float, default=RUN_TIMEOUT, help=f"seconds to wait (default {RUN_TIMEOUT:.0f})")

    command("check", cmd_check, "故障排除 / run the troubleshooting checks, one line each")

    health = command("health", cmd_health, "健康检查 / whether this host's beat, worker, Flower or admin works",
                     "For container healthchecks: beat = a beat here ticked within BEAT_LEADER_TIMEOUT "
                     "(leader or standby); worker = a worker named …@<this host> answers a ping; flower = "
                     "/healthcheck answers 200; admin = the login page answers 200. Exit 0 healthy, 1 not.")
    health.add_argument("service", choices=list(HEALTH_PROBES), help="beat, worker, flower or admin")

    command("migrate", cmd_migrate, "数据库迁移 / apply every pending schema migration and exit",
            "Beat and workers migrate by themselves at start; this is for deployments that migrate "
            "once before starting them (the compose file's 'migrate' service).")

    superuser = command("createsuperuser", cmd_createsuperuser, "创建管理员 / create a login for the schedule admin",
                        "Asks for the password; with --no-input it is read from DJANGO_SUPERUSER_PASSWORD.")
    superuser.add_argument("--username", help="login name (asked when omitted)")
    superuser.add_argument("--email", default="", help="e-mail address (optional)")
    superuser.add_argument("--no-input", action="store_true",
                           help="do not prompt: needs --username and DJANGO_SUPERUSER_PASSWORD")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.umask(PRIVATE_UMASK)  # what the manager creates (var/, logs/, PID files) is its user's only
    try:
        settings = load_settings()
        return args.handler(settings, args)
    except (ConfigError, BrokerError, ManagerError, ServiceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    except BrokenPipeError:  # `status | head`: the reader has gone, and that is fine
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return EXIT_OK
    except Exception as error:  # noqa: BLE001 - an operator gets one line; CBM_DEBUG=1 shows the rest
        if os.environ.get("CBM_DEBUG"):
            raise
        print(f"error: unexpected {type(error).__name__}: {error} (CBM_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return EXIT_ERROR

