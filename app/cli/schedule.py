"""The schedule: list, clear, run one job now, a job's history, pause and resume; the schema and the admin's users."""

import os
import sys
import textwrap

import click

from app.cli.base import EXIT_ERROR, EXIT_OK, CliError, ensure_schema, require_worker, settings, setup_django
from app.cli.output import echo_json, human_time, paint, table

RUN_TIMEOUT = 900.0
OUTCOME_COLOURS = {"success": "green", "failure": "red", "lost": "red", "skipped_overlap": "yellow",
                   "skipped_missed": "yellow"}
LIST_NOTE = ("times are Asia/Shanghai (+08:00); policy = overlap/missed (CELERY_BEAT_CONFIG.md §2.2); outcome and "
             "late = the last recorded run and how long after its due time beat sent it; drift = a "
             "beat_schedules.py job edited in the admin (the edit stands until the entry changes in the file); "
             "replaced = an admin edit the file's change overwrote")


def schedule_table() -> dict[str, dict]:
    """beat_schedules.py's table; a file that cannot be loaded is one line naming the entry."""
    setup_django()
    from app.scheduling.table import load_schedule_table

    return load_schedule_table()


def _short_time(moment) -> str:
    """Month, day and time in Asia/Shanghai: what a 120-column table has room for."""
    return human_time(moment, offset=False)[5:] if moment else "-"


def _drift_note(row) -> str:
    if row.drift:
        return paint(",".join(row.drift), "yellow")
    if row.replaced_admin_edit:
        return paint(f"replaced:{','.join(row.replaced_admin_edit)}", "yellow")
    return "-"


def _outcome_note(outcome: str | None) -> str:
    return paint(outcome, OUTCOME_COLOURS[outcome]) if outcome in OUTCOME_COLOURS else outcome or "-"


def _late(row) -> str:
    return "-" if row.last_lateness_seconds is None else f"{row.last_lateness_seconds:.1f}s"


def _narrow_row(row) -> list[str]:
    next_run = _short_time(row.next_run) if row.enabled else paint("disabled", "yellow")
    return [row.name, row.expression, row.queue or "-", _short_time(row.last_run), _outcome_note(row.last_outcome),
            _late(row), next_run, "file" if row.source == "beat_schedules.py" else "admin"]


def _wide_row(row) -> list[str]:
    return [row.name, row.task.removeprefix("app.tasks."), row.schedule, row.expression, row.queue or "-",
            "yes" if row.enabled else paint("no", "yellow"), f"{row.policy['overlap']}/{row.policy['missed']}",
            human_time(row.last_run, offset=False), _outcome_note(row.last_outcome), _late(row),
            human_time(row.next_run, offset=False), row.source, _drift_note(row)]


def _narrow_footer(rows) -> str:
    """The notes the narrow table has no column for, wrapped to 120 columns."""
    from app.scheduling.overview import NOT_SYNCED

    notes = ["times are Asia/Shanghai (+08:00); --wide shows every field (task, words, policy, drift)."]
    unsynced = [row.name for row in rows if NOT_SYNCED in row.drift]
    edited = [row.name for row in rows if (row.drift and NOT_SYNCED not in row.drift) or row.replaced_admin_edit]
    if unsynced:
        notes.append(f"{len(unsynced)} job(s) not in the database yet: beat writes them at its next start.")
    if edited:
        notes.append(f"edited in the admin: {', '.join(edited)}.")
    return textwrap.fill(" ".join(notes), width=120)


NARROW = ["name", "cron/interval", "queue", "last run", "outcome", "late", "next run", "from"]
WIDE = ["name", "task", "schedule", "cron/interval", "queue", "enabled", "policy", "last run", "outcome", "late",
        "next run", "source", "drift"]


@click.command("list", help="列出所有定时任务 / every periodic job with its last and next run.")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (every field; times ISO 8601 with offset)")
@click.option("--wide", is_flag=True, help="every field: task, schedule in words, enabled, policy, drift")
def list_jobs(as_json: bool, wide: bool) -> int:
    table_entries = schedule_table()
    ensure_schema()
    from app.scheduling.overview import job_rows

    rows = job_rows(table_entries)
    if as_json:
        echo_json([row.as_dict() for row in rows])
        return EXIT_OK
    if not rows:
        click.echo("no periodic jobs yet: beat writes beat_schedules.py into the database at start")
        return EXIT_OK
    if wide:
        click.echo(table(WIDE, [_wide_row(row) for row in rows]))
        click.echo(f"\n{LIST_NOTE}")
    else:
        click.echo(table(NARROW, [_narrow_row(row) for row in rows], limits={0: 28, 1: 18}))
        click.echo("\n" + _narrow_footer(rows))
    return EXIT_OK


@click.command("migrate", help="数据库迁移 / apply every pending schema migration and exit.", epilog=(
    "Beat and workers migrate by themselves at start; this is for deployments that migrate once before "
    "starting them (the compose file's 'migrate' service)."))
def migrate() -> int:
    from app.core.config import masked_url

    ensure_schema()
    click.echo(f"database schema up to date ({masked_url(settings().sqlalchemy_url)})")
    return EXIT_OK


@click.command("createsuperuser", help="创建管理员 / create a login for the schedule admin.",
               epilog="Asks for the password; with --no-input it is read from DJANGO_SUPERUSER_PASSWORD.")
@click.option("--username", help="login name (asked when omitted)")
@click.option("--email", default="", help="e-mail address (optional)")
@click.option("--no-input", is_flag=True, help="do not prompt: needs --username and DJANGO_SUPERUSER_PASSWORD")
def createsuperuser(username: str | None, email: str, no_input: bool) -> int:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    if no_input and not (username and os.environ.get("DJANGO_SUPERUSER_PASSWORD")):
        raise CliError("--no-input needs --username and DJANGO_SUPERUSER_PASSWORD")
    if not no_input and not sys.stdin.isatty():
        raise CliError("no terminal to ask for the password: pass --no-input, --username and "
                       "DJANGO_SUPERUSER_PASSWORD")
    ensure_schema()
    if no_input:  # Django checks the password against AUTH_PASSWORD_VALIDATORS only when it asks for it
        _refuse_weak_password(username, os.environ["DJANGO_SUPERUSER_PASSWORD"])
    try:
        call_command("createsuperuser", interactive=not no_input, username=username, email=email, verbosity=0)
    except CommandError as error:
        raise CliError(str(error)) from None
    current = settings()
    click.echo(f"admin user created; log in at http://{current.admin_address}:{current.admin_port}/admin/")
    return EXIT_OK


def _refuse_weak_password(username: str, password: str) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    try:
        validate_password(password, get_user_model()(username=username))
    except ValidationError as error:
        raise CliError(f"DJANGO_SUPERUSER_PASSWORD refused: {' '.join(error.messages)}") from None


@click.command("clear", help="清除调度文件 / reset the schedule from beat_schedules.py.", epilog=(
    "Removes stock beat's schedule files and stale PID files and resets the database schedule from "
    "beat_schedules.py (run history of the reset jobs is lost). Jobs created in the admin survive unless --all."))
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@click.option("--all", "everything", is_flag=True, help="also delete jobs created in the admin")
def clear(yes: bool, everything: bool) -> int:
    setup_django()
    from app.cli.output import confirm
    from app.manager.processes import pid_state, service_process
    from app.scheduling.sync import reset_schedule

    current = settings()
    if pid_state(service_process(current, "beat")).running:
        raise CliError("beat is running: stop it first ('stop'), then clear")
    scope = "every periodic job, admin-created ones included," if everything else "the jobs of beat_schedules.py"
    if not yes and not confirm(f"Reset {scope} from beat_schedules.py (run history is lost)?", CliError):
        click.echo("nothing changed")
        return EXIT_ERROR
    entries = schedule_table()
    removed = _remove_schedule_files(current)
    ensure_schema()
    deleted, report = reset_schedule(entries, everything=everything)
    click.echo(f"removed {removed} schedule/PID file(s); deleted {deleted} job row(s); "
               f"recreated {len(report.created)} job(s) from beat_schedules.py")
    return EXIT_OK


def _remove_schedule_files(current) -> int:
    """Stock beat's schedule files (celerybeat-schedule*) and PID files that point at nothing."""
    from app.core.config import PROJECT_ROOT
    from app.manager.processes import SERVICES, clear_stale_pidfile, service_process

    removed = 0
    for folder in {PROJECT_ROOT, current.app_home, current.var_path, current.run_path}:
        for path in folder.glob("celerybeat-schedule*"):
            path.unlink()
            removed += 1
    for name in SERVICES:
        removed += clear_stale_pidfile(service_process(current, name)).state in ("stale", "unreadable")
    return removed


@click.command("run", help="立即执行 / send one job of the table now and print its result.")
@click.argument("job")
@click.option("--no-wait", is_flag=True, help="print the task id instead of waiting")
@click.option("--timeout", type=float, default=RUN_TIMEOUT, show_default=True, help="seconds to wait")
def run(job: str, no_wait: bool, timeout: float) -> int:
    """JOB: the job's name in beat_schedules.py, e.g. cleanup-temp-files ('list' shows them)."""
    from app.manager import inspect
    from app.tasks.celery_app import app

    entries = schedule_table()
    if job not in entries:
        raise CliError(f"no job {job!r} in beat_schedules.py; 'list' shows them")
    entry = entries[job]
    queue = entry["options"]["queue"]
    if no_wait:
        broker = inspect.probe_broker(settings())
        if not broker.ok:
            raise CliError(f"broker not reachable ({broker.detail}); start the service first")
    else:
        try:
            require_worker(queue)
        except CliError as error:
            raise CliError(f"{error}, or pass --no-wait to queue the job") from None
    from app.scheduling.actions import entry_call, send_now

    result = send_now(app, entry_call(job, entry))
    if no_wait:
        click.echo(result.id)
        return EXIT_OK
    click.echo(f"sent {job} ({entry['task']}) to {queue} as {result.id}; waiting…", err=True)
    value = result.get(timeout=timeout, propagate=False)
    if result.failed():
        click.echo(f"{job} failed: {type(value).__name__}: {value}", err=True)
        return EXIT_ERROR
    echo_json(value)
    return EXIT_OK


NOT_STORED = "'list' shows the jobs (beat writes those of beat_schedules.py at its start)"
HISTORY = ["due", "sent", "started", "finished", "outcome", "late", "task id"]
HISTORY_NOTE = ("times are Asia/Shanghai (+08:00), newest first; due = when the run fell due ('-': sent by hand with "
                "'run' or the admin's run now); late = how long after its due time beat sent it")


def _known_job(job: str) -> None:
    """CliError unless `job` is in the database or has runs recorded."""
    from django_celery_beat.models import PeriodicTask

    from app.core.database import SessionFactory
    from app.scheduling.history import has_runs

    if not PeriodicTask.objects.filter(name=job).exists() and not has_runs(SessionFactory, job):
        raise CliError(f"no job {job!r} in the database; {NOT_STORED}")


def _history_row(run) -> list[str]:
    late = "-" if run.lateness_seconds is None or run.sent_at is None else f"{run.lateness_seconds:.1f}s"
    return [_short_time(run.due_at), _short_time(run.sent_at), _short_time(run.started_at),
            _short_time(run.finished_at), _outcome_note(run.outcome), late, run.task_id or "-"]


@click.command("history", help="运行历史 / a job's latest runs: due, sent, started, finished, outcome, lateness, task id.")
@click.argument("job")
@click.option("--last", type=click.IntRange(1, 10_000), default=20, show_default=True, help="how many runs")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (times ISO 8601 with offset)")
def history(job: str, last: int, as_json: bool) -> int:
    """JOB: the job's name, e.g. cleanup-temp-files ('list' shows them)."""
    ensure_schema()
    from app.core.database import SessionFactory
    from app.scheduling.history import recent_runs

    _known_job(job)
    runs = recent_runs(SessionFactory, job, last)
    if as_json:
        echo_json([run.as_dict() for run in runs])
        return EXIT_OK
    if not runs:
        click.echo(f"{job}: no runs recorded yet")
        return EXIT_OK
    click.echo(table(HISTORY, [_history_row(run) for run in runs]))
    click.echo(f"\n{textwrap.fill(HISTORY_NOTE, width=120)}")
    return EXIT_OK


def _set_paused(job: str, paused: bool) -> int:
    ensure_schema()
    from app.scheduling.actions import UnknownJob, set_paused

    try:
        change = set_paused(job, paused)
    except UnknownJob:
        raise CliError(f"no job {job!r} in the database; {NOT_STORED}") from None
    state = "paused" if paused else "resumed"
    if not change.changed:
        click.echo(f"{job} was already {'paused' if paused else 'enabled'}; nothing changed")
    elif paused:
        click.echo(f"{job} {state}: beat sends none of its runs until 'resume' (within a tick, no restart)")
    else:
        click.echo(f"{job} {state}: its next run is at its next scheduled time (runs of the pause are not caught up)")
    return EXIT_OK


@click.command("pause", help="暂停任务 / stop sending a job's runs until 'resume'; it survives beat restarts.")
@click.argument("job")
def pause(job: str) -> int:
    """JOB: the job's name ('list' shows them)."""
    return _set_paused(job, True)


@click.command("resume", help="恢复任务 / send a paused job's runs again, from its next scheduled time.")
@click.argument("job")
def resume(job: str) -> int:
    """JOB: the job's name ('list' shows them)."""
    return _set_paused(job, False)


COMMANDS = [list_jobs, clear, run, history, pause, resume, migrate, createsuperuser]
