"""What every command shares: exit codes, the one error policy, the settings, Django and the schema."""

import os
import sys

import click

from app.core.config import ConfigError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3
EXIT_CODES = "Exit codes: 0 ok, 1 error, 2 wrong usage, 3 (status) something is not running."
DEBUG_VARIABLE = "CBM_DEBUG"


class CliError(Exception):
    """An expected failure: reported as one line and exit 1, never a traceback."""


def expected_errors() -> tuple[type[Exception], ...]:
    """Failures an operator meets in normal use: each is one line naming what is wrong."""
    setup_django()  # the schedule's errors live beside Django models
    from kombu.exceptions import OperationalError as BrokerOperationalError
    from redis import RedisError
    from sqlalchemy.exc import OperationalError as DatabaseOperationalError

    from app.core.broker import BrokerError
    from app.core.config import ConfigError
    from app.manager.processes import ServiceError
    from app.scheduling.table import ScheduleTableError
    from app.services.backups import BackupError
    from app.services.errors import PermanentError

    return (CliError, ConfigError, BrokerError, ServiceError, ScheduleTableError, PermanentError, BackupError,
            BrokerOperationalError, RedisError, DatabaseOperationalError)


def one_line(error: Exception) -> str:
    """What went wrong, for the operator: a library's outage as its first line, prefixed by what it is; our
    own errors whole (a failed start carries the service's last log lines)."""
    text = str(error).strip() or type(error).__name__
    kind = type(error).__module__.split(".")[0]
    if kind == "sqlalchemy":
        return f"database unreachable or refused the request: {text.splitlines()[0]}"
    if kind in ("redis", "kombu"):
        return f"broker unreachable: {text.splitlines()[0]}"
    return text


def silence_closed_pipe() -> None:
    """The reader of our output went away (`| head`): write nothing more, say nothing about it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):  # a stream without a file descriptor (click's test runner)
            pass


class OrderedGroup(click.Group):
    """A click group that lists its commands in the order they were added (the order of a user's day)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


class ErrorPolicyGroup(OrderedGroup):
    """A click group whose commands return an exit code and whose expected errors end in one line."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:  # --help into a closed pipe: click itself would exit 1
            silence_closed_pipe()
            raise click.exceptions.Exit(EXIT_OK) from None

    def invoke(self, ctx: click.Context):
        try:
            code = super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            silence_closed_pipe()
            raise click.exceptions.Exit(EXIT_OK) from None
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_ERROR) from None
        except ConfigError as error:  # before expected_errors(), which needs a configuration that loads
            click.echo(f"error: {one_line(error)}", err=True)
            raise click.exceptions.Exit(EXIT_ERROR) from None
        except expected_errors() as error:
            click.echo(f"error: {one_line(error)}", err=True)
            raise click.exceptions.Exit(EXIT_ERROR) from None
        except Exception as error:  # noqa: BLE001 - an operator gets one line; CBM_DEBUG=1 shows the rest
            if os.environ.get(DEBUG_VARIABLE):
                raise
            click.echo(f"error: unexpected {type(error).__name__}: {one_line(error)} "
                       f"({DEBUG_VARIABLE}=1 shows the traceback)", err=True)
            raise click.exceptions.Exit(EXIT_ERROR) from None
        if isinstance(code, int) and code != EXIT_OK:
            raise click.exceptions.Exit(code)
        return code


def settings():
    """The one typed Settings object, read from the environment (and .env) once per process."""
    from app.core.config import get_settings

    return get_settings()


def setup_django() -> None:
    import app.tasks.celery_app  # noqa: F401  (configures Django)


def ensure_schema() -> None:
    """Every pending migration applied, Django's and Alembic's: the same in every command that needs the database."""
    setup_django()
    from app.core.migrations import migrate_all

    migrate_all()


# A busy worker may answer late: asked again, for longer, before the command says there is none.
WORKER_ANSWER_TIMEOUTS = (1.5, 5.0)


def require_worker(queue: str) -> None:
    """CliError unless the broker answers and a running worker consumes `queue`."""
    from app.manager import inspect

    broker = inspect.probe_broker(settings())
    if not broker.ok:
        raise CliError(f"broker not reachable ({broker.detail}); start the service first: "
                       "celery_beat_manager.py start --service all")
    for timeout in WORKER_ANSWER_TIMEOUTS:
        if any(queue in queues for queues in inspect.worker_queues(timeout).values()):
            return
    raise CliError(f"no running worker consumes queue {queue}: start one ('start --service worker')")
