"""The service's processes: start, foreground, stop, restart, status, logs, check, health.

Everything here renders what app.manager.supervisor (the processes) and app.manager.inspect (the
probes) return; neither prints.
"""

import threading

import click

from app.cli.base import EXIT_ERROR, EXIT_OK, EXIT_STOPPED, CliError, expected_errors, one_line, settings, setup_django
from app.cli.output import human_bytes, human_duration, human_time, paint, table
from app.manager.processes import SERVICES

LOGLEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)
SERVICE_HELP = ("which service (default: beat); all = embedded broker + carrier simulator "
                "(TRACKING_PROVIDER=simulator) + worker + beat + flower + admin")
LOG_SOURCES = (*SERVICES, "broker")


def _service_option(default: str = "beat", choices=(*SERVICES, "all"), help_text: str = SERVICE_HELP):
    return click.option("--service", type=click.Choice(choices), default=default, show_default=True, help=help_text)


def _run_options(command):
    """--loglevel, --queues and --concurrency of the commands that start services."""
    command = click.option("--concurrency", type=click.IntRange(min=1), default=None,
                           help="worker processes (default: WORKER_CONCURRENCY)")(command)
    command = click.option("--queues", default=None, help="worker queues, comma separated (default: all five)")(command)
    return click.option("--loglevel", type=LOGLEVELS, default=None,
                        help="log level (default: LOG_LEVEL, else info)")(command)


_timeout_option = click.option("--timeout", type=float, default=None,
                               help="seconds to wait for a graceful stop before killing "
                                    "(default: beat 30, flower 10, worker 660 = hard time limit + 60)")


def _supervisor(loglevel: str | None = None, queues: str | None = None, concurrency: int | None = None):
    from app.manager.supervisor import Supervisor

    current = settings()
    return Supervisor(current, loglevel=(loglevel or current.log_level).lower(),
                      queues=[q for q in queues.split(",") if q] if queues else None,
                      concurrency=concurrency, on_event=_print_event)


EVENT_WORDS = {"ready": "started", "already-running": "already running", "not-running": "not running",
               "given-up": "given up"}
TROUBLE = ("exited", "restarting", "given-up", "killed")


def _print_event(event) -> None:
    """One line per step: '<service> <what happened> (pid N): detail'; 'started' once it is ready."""
    if event.kind == "started":
        return  # spawned, not yet ready: the 'ready' event says it
    pid = f" (pid {event.pid})" if event.pid else ""
    wait = f" in {event.seconds:.0f} s" if event.kind == "restarting" and event.seconds is not None else ""
    detail = f", {event.detail}" if event.detail else ""
    click.echo(f"{event.service:<9} {EVENT_WORDS.get(event.kind, event.kind)}{wait}{pid}{detail}",
               err=event.kind in TROUBLE)


def _names(service: str) -> list[str]:
    from app.manager.supervisor import chosen_services

    return chosen_services(settings(), service)


@click.command(help="后台运行 / start in the background and wait until up.", epilog=(
    "Starts the service detached (with the embedded broker when CELERY_BROKER_URL is unset); returns once it is "
    "up, or exits 1 with its last log lines."))
@_service_option()
@_run_options
def start(service: str, loglevel: str | None, queues: str | None, concurrency: int | None) -> int:
    names = _names(service)
    _supervisor(loglevel, queues, concurrency).start(names)
    _first_health_check(names)
    if service == "all":
        click.echo(banner())
    return EXIT_OK


def _greet(names: list[str]) -> None:
    """Once everything is first up: the first health check and the banner; a hiccup here never stops supervision."""
    try:
        _first_health_check(names)
        click.echo(banner())
    except expected_errors() as error:
        click.echo(f"(no banner: {one_line(error)})", err=True)


def _first_health_check(names: list[str]) -> None:
    """One system-health-check now, so logs/task_results.log shows a result within a minute, not at :05."""
    if "worker" in names:
        setup_django()
        from app.tasks.tracking_tasks import system_health_check

        system_health_check.apply_async(ignore_result=True)  # no result subscription kept open in the manager
        click.echo("a first system health check is on its way: its result lands in logs/task_results.log")


@click.command(help="前台运行 / run in this terminal until Ctrl-C, restarting a service that dies.", epilog=(
    "Each service's log lines are shown prefixed with its name. A service that exits unexpectedly is started "
    "again after 1, 2, 4 … 30 s; after five quick failures in a row everything stops with exit 1. 'restart' "
    "and 'stop' from another terminal act on one service without disturbing the others."))
@_service_option()
@_run_options
@_timeout_option
def foreground(service: str, loglevel: str | None, queues: str | None, concurrency: int | None,
               timeout: float | None) -> int:
    import signal

    from app.manager.tail import follow_in_background

    names = _names(service)
    supervisor = _supervisor(loglevel, queues, concurrency)
    stop_requested, stop_tailing = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    # A shell starting us in the background ignores SIGINT for us; Ctrl-C must stop us anyway.
    signal.signal(signal.SIGINT, lambda *_: stop_requested.set())
    follow_in_background(supervisor.log_paths(names), stop_tailing)
    try:
        return supervisor.run_foreground(names, stop_requested, stop_timeout=timeout,
                                         on_ready=lambda: _greet(names))
    finally:
        stop_tailing.set()


@click.command(help="停止服务 / stop gracefully (SIGTERM, wait, then SIGKILL).")
@_service_option()
@_timeout_option
def stop(service: str, timeout: float | None) -> int:
    _supervisor().stop(_names(service), timeout)
    return EXIT_OK


@click.command(help="重启服务 / restart the chosen service only; the others keep running.", epilog=(
    "Under 'foreground' the restart goes through it. Returns once the new process is up, with its PID."))
@_service_option()
@_run_options
@_timeout_option
def restart(service: str, loglevel: str | None, queues: str | None, concurrency: int | None,
            timeout: float | None) -> int:
    names = _names(service)
    _supervisor(loglevel, queues, concurrency).restart(names, timeout)
    return EXIT_OK


# -- status -----------------------------------------------------------------------------------

STATE_COLOURS = {"running": "green", "starting": "yellow", "stopped": "yellow", "down": "red"}


def _service_row(state) -> list[str]:
    shown = paint(state.state, STATE_COLOURS.get(state.state, "red"))
    if state.pid is None or state.uptime_seconds is None:
        return [state.name, shown, str(state.pid or "-"), state.host or "-", "-", "-", "-", state.detail]
    return [state.name, shown, str(state.pid), state.host or "-", human_duration(state.uptime_seconds),
            f"{state.cpu_percent:.1f}%", human_bytes(state.memory_bytes), state.detail]


def _next_due_cells(due) -> list[str]:
    """The next job and when it runs (Asia/Shanghai with offset), or why there is none."""
    if due.name is None:
        return ["-", due.note or "no enabled job"]
    return [due.name, f"at {human_time(due.at)}"]


def _ok(ok: bool, good: str, bad: str) -> str:
    return paint(good, "green") if ok else paint(bad, "red")


def _fact_rows(report, missing: list) -> list[list[str]]:
    rows = [["broker", _ok(report.broker.ok, "reachable", "unreachable"), report.broker.detail],
            ["database", _ok(report.database.ok, "reachable", "unreachable"), report.database.detail]]
    if report.leader is not None:
        rows.append(["leader", _ok(report.leader.ok, "ok", "none"), report.leader.detail])
    if report.workers is not None:
        rows.append(["workers", str(len(report.workers)),
                     "; ".join(f"{w}: {', '.join(q)}" for w, q in report.workers.items()) or "none answered a ping"])
    if report.queued is not None:
        rows.append(["queued", str(sum(report.queued.values())), "  ".join(f"{q} {n}" for q, n in report.queued.items())])
    if report.next_due is not None:
        rows.append(["next due", *_next_due_cells(report.next_due)])
    for name, url, how in report.urls:
        rows.append([name, url, how])
    rows += [[piece.name, paint("missing", "yellow"), f"{piece.detail}; {piece.disables}"] for piece in missing]
    return rows


@click.command(help="查看状态 / processes, broker, database, workers, queues, next job.", epilog=(
    "A beat or worker without a process on this host (systemd, compose, another host) is judged by its "
    "heartbeat and lease in the broker, or by a ping. Exit 0 when everything chosen runs, 3 when something is "
    "stopped or down, 1 on error."))
@_service_option()
def status(service: str) -> int:
    from app.manager.checks import missing_pieces

    report = _supervisor().status(_names(service))
    click.echo(table(["service", "state", "pid", "host", "uptime", "cpu", "memory", ""],
                     [_service_row(state) for state in report.services]))
    click.echo()
    click.echo(table(None, _fact_rows(report, missing_pieces(settings()))))
    for problem in report.problems:
        click.echo(paint(problem, "red"), err=True)
    return EXIT_STOPPED if report.problems else EXIT_OK


def banner() -> str:
    """What a new user needs once the stack is up: where to look, how to log in, when the first job runs."""
    from app.manager.checks import missing_pieces

    report = _supervisor().status(_names("all"))
    lines = ["", paint("ready", "bold") + f" — logs in {settings().logs_path}, Ctrl-C (foreground) or 'stop' ends it"]
    lines += [f"  {name:<8} {url}  ({how})" for name, url, how in report.urls]
    if report.next_due is not None:
        lines.append("  next job " + " ".join(_next_due_cells(report.next_due)))
    lines += [f"  {piece.name:<8} missing: {piece.detail}; {piece.disables}" for piece in missing_pieces(settings())]
    lines.append("  status: celery_beat_manager.py status · jobs: celery_beat_manager.py list")
    return "\n".join(lines) + "\n"


# -- logs -------------------------------------------------------------------------------------


def _log_path(current, name: str):
    from app.core.broker import EmbeddedBroker
    from app.manager.processes import service_process

    return EmbeddedBroker(current).logfile if name == "broker" else service_process(current, name).logfile


def _tail_lines(path, count: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-count:]
    except FileNotFoundError:
        return []


@click.command(help="查看日志 / show a service's log (all: every service's, each line prefixed with its name).")
@_service_option(choices=(*LOG_SOURCES, "all"),
                 help_text="whose log (default: beat): " + ", ".join(LOG_SOURCES) + " or all")
@click.option("--lines", "-n", type=click.IntRange(min=0), default=50, show_default=True, help="how many last lines")
@click.option("--follow", "-f", is_flag=True, help="keep printing new lines until Ctrl-C")
def logs(service: str, lines: int, follow: bool) -> int:
    from app.manager.tail import follow_in_background

    current = settings()
    names = list(LOG_SOURCES) if service == "all" else [service]
    paths = {name: _log_path(current, name) for name in names}
    present = {name: path for name, path in paths.items() if path.exists()}
    if not present and not follow:
        raise CliError(f"no log yet at {', '.join(str(p) for p in paths.values())}")
    for name, path in present.items():
        prefix = f"[{name}] " if service == "all" else ""
        for line in _tail_lines(path, lines):
            click.echo(f"{prefix}{line}")
    if follow:
        stop = threading.Event()
        follow_in_background({name: path for name, path in paths.items()}, stop,
                             prefixed=service == "all")
        try:
            stop.wait()
        except KeyboardInterrupt:
            stop.set()
    return EXIT_OK


# -- check ------------------------------------------------------------------------------------


@click.command(help="故障排除 / run the troubleshooting checks, one line each; exit 1 when any fails.", epilog=(
    "Optional pieces (Chromium, a Chinese font) are reported with what their absence disables."))
def check() -> int:
    from app.manager.checks import run_checks

    results = list(run_checks(settings()))
    for result in results:
        mark = paint("ok  ", "green") if result.ok else paint("FAIL", "red")
        click.echo(f"{mark}  {result.name:<11} {result.detail}")
    return EXIT_OK if all(result.ok for result in results) else EXIT_ERROR


# -- health (container healthchecks) ----------------------------------------------------------


@click.command(help="健康检查 / whether this host's beat, worker, Flower or admin works (exit 0 healthy, 1 not).",
               epilog="For container healthchecks: beat = a beat here ticked within BEAT_LEADER_TIMEOUT (leader or "
                      "standby); worker = a worker named …@<this host> answers a ping; flower = /healthcheck "
                      "answers 200; admin = the login page answers 200.")
@click.argument("service", type=click.Choice(["beat", "worker", "flower", "admin"]))
def health(service: str) -> int:
    from app.manager.checks import HEALTH_PROBES

    ok, detail = HEALTH_PROBES[service](settings())
    click.echo(f"{'ok' if ok else 'unhealthy'}: {service} {detail}")
    return EXIT_OK if ok else EXIT_ERROR


COMMANDS = [start, foreground, stop, restart, status, logs, check, health]
