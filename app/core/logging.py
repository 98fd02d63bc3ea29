"""The task results log (one JSON line per finished task in logs/task_results.log), and errors told in one line."""

import json
import logging
import time
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


quiet_http_client_loggers()  # on import: the Celery app and app.services.alerts import this module


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
