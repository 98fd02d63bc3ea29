"""The task results log (one JSON line per finished task in logs/task_results.log), errors told in one line,
and libraries' chatter kept out of info-level output."""

import json
import logging
import time
from collections.abc import Callable, Mapping
from logging.handlers import WatchedFileHandler
from pathlib import Path

RESULTS_LOGGER = "app.task_results"
RESULT_PREVIEW_CHARS = 500
# httpx logs every request at INFO with its full URL, and a robot webhook's URL carries its key
# (`?key=…`, `?access_token=…`); their warnings and errors name no URL.
HTTP_CLIENT_LOGGERS = ("httpx", "httpcore")


def quiet_http_client_loggers() -> None:
    """Keep httpx and httpcore to warnings, whatever level the worker, beat or CLI logs at."""
    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


# Library records that are chatter to someone watching the services at info level: told at debug instead.
# Logger name -> the message templates (a record's `msg`, before its arguments are put in) so told.
LIBRARY_CHATTER = {
    # Alembic names each of its plugins when imported, and its dialect at every look for migrations to run.
    "alembic.runtime.plugins": ("setup plugin %s",),
    "alembic.runtime.migration": ("Context impl %s.", "Will assume %s DDL."),
    "axes.apps": ("AXES: BEGIN version %s, %s",),
    # "mingle: sync with %s nodes" stays: it names the other workers found.
    "celery.worker.consumer.mingle": ("mingle: searching for neighbors", "mingle: all alone", "mingle: sync complete"),
    "flower.command": ("Registered tasks: \n%s",),  # every task name, one line each
    # No worker answered Flower in time: at every start Flower asks while the worker is still starting.
    # A broker error has its own template ("Inspect method %s failed: %s") and stays a warning.
    "flower.inspector": ("Inspect method %s failed",),
}
# The User-Agent of the manager's health checks (`health admin`, the compose healthchecks).
HEALTH_PROBE_AGENT = "celery-beat-manager-health"


class TellAtDebug(logging.Filter):
    """Turns the records `is_chatter` picks into DEBUG records, let through only when their logger shows debug."""

    def __init__(self, is_chatter: Callable[[logging.LogRecord], bool]):
        super().__init__()
        self.is_chatter = is_chatter

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.is_chatter(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def is_health_probe(record: logging.LogRecord) -> bool:
    """A gunicorn access line of one of the manager's health checks that was answered 200."""
    atoms = record.args if isinstance(record.args, Mapping) else {}
    return str(atoms.get("a", "")).startswith(HEALTH_PROBE_AGENT) and str(atoms.get("s", "")) == "200"


def _says_one_of(templates: tuple[str, ...]) -> Callable[[logging.LogRecord], bool]:
    return lambda record: record.msg in templates


def quiet_library_chatter() -> None:
    """Tell LIBRARY_CHATTER and the health checks' access lines at debug level; calling it again changes nothing."""
    pickers = {name: _says_one_of(templates) for name, templates in LIBRARY_CHATTER.items()}
    pickers["gunicorn.access"] = is_health_probe
    for name, is_chatter in pickers.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, TellAtDebug) for existing in logger.filters):
            logger.addFilter(TellAtDebug(is_chatter))


# On import: the Celery app (worker, beat, Flower) and app.services.alerts import this module.
quiet_http_client_loggers()
quiet_library_chatter()


def task_results_logger(logs_dir: Path) -> logging.Logger:
    """The logger writing task_results.log; a WatchedFileHandler reopens the file after rotation."""
    logger = logging.getLogger(RESULTS_LOGGER)
    path = logs_dir / "task_results.log"
    if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logs_dir.mkdir(parents=True, exist_ok=True)
        handler = WatchedFileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def one_line(error: BaseException) -> str:
    """`Kind: message` on one line, for an error that stops a service (its traceback is noise to an operator).

    A SQLAlchemy database error is told by the driver's exception it wraps, without SQLAlchemy's additions.
    """
    cause = getattr(error, "orig", None)
    if not isinstance(cause, BaseException):
        cause = error
    message = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
    return f"{type(cause).__name__}: {message}" if message else type(cause).__name__


def _preview(value) -> object:
    text = value if isinstance(value, str) else json.dumps(value, default=repr, ensure_ascii=False)
    if len(text) <= RESULT_PREVIEW_CHARS:
        return value
    return text[:RESULT_PREVIEW_CHARS] + "…"


def task_result_record(
    *, task_id: str, name: str, queue: str | None, state: str, runtime: float | None, retries: int, outcome
) -> dict:
    """The JSON-able line for one finished task; `outcome` is its result or the exception."""
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "id": task_id,
        "name": name,
        "queue": queue,
        "state": state,
        "runtime": None if runtime is None else round(runtime, 4),
        "retries": retries,
    }
    if isinstance(outcome, BaseException):
        record["error"] = f"{type(outcome).__name__}: {outcome}"[:RESULT_PREVIEW_CHARS]
    else:
        record["result"] = _preview(outcome)
    return record


def write_task_result(logs_dir: Path, record: dict) -> None:
    task_results_logger(logs_dir).info(json.dumps(record, default=repr, ensure_ascii=False))
