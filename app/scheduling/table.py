"""Load and check the schedule table, with one line per problem naming the entry."""

import ast
import importlib
import traceback
from pathlib import Path

from app.scheduling.job_policy import PolicyError, policy_of
from app.scheduling.sync import ScheduleEntryError, validate_entry

TABLE_MODULE = "app.tasks.beat_schedules"


class ScheduleTableError(Exception):
    """The schedule table cannot be used as it is; the message names each bad entry."""


def load_schedule_table() -> dict[str, dict]:
    """BEAT_SCHEDULE from beat_schedules.py; an error while importing it names the entry at fault."""
    try:
        return importlib.import_module(TABLE_MODULE).BEAT_SCHEDULE
    except Exception as error:  # noqa: BLE001 - any error in the operator's file is reported as one line
        raise ScheduleTableError(_describe_import_error(error)) from None


def _describe_import_error(error: Exception) -> str:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.endswith("beat_schedules.py")]
    if not frames:
        return f"beat_schedules.py cannot be loaded: {type(error).__name__}: {error}"
    line = frames[-1].lineno
    entry = _entry_at(Path(frames[-1].filename), line)
    where = f"entry {entry!r} (beat_schedules.py line {line})" if entry else f"beat_schedules.py line {line}"
    return f"{where}: {type(error).__name__}: {error}"


def _entry_at(path: Path, line: int) -> str | None:
    """The name of the schedule entry (a dict with a "task" key, under a string key) spanning `line`."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            pairs = zip(node.keys, node.values)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
            pairs = [(node.targets[0].slice, node.value)]
        else:
            continue
        for key, value in pairs:
            if _is_entry(key, value) and value.lineno <= line <= value.end_lineno:
                return key.value
    return None


def _is_entry(key, value) -> bool:
    return (isinstance(key, ast.Constant) and isinstance(key.value, str) and isinstance(value, ast.Dict)
            and any(isinstance(k, ast.Constant) and k.value == "task" for k in value.keys))


def entry_problems(table: dict[str, dict], registered_tasks: set[str]) -> list[str]:
    """One line per entry that beat cannot schedule as written; empty when all are good."""
    problems = []
    for name, entry in table.items():
        try:
            validate_entry(name, entry)
            policy_of(entry)
        except ScheduleEntryError as error:
            problems.append(str(error))
            continue
        except PolicyError as error:
            problems.append(f"{name}: policy: {error}")
            continue
        if entry["task"] not in registered_tasks:
            problems.append(f"{name}: unknown task {entry['task']!r} (no such task is registered)")
    return problems


def registered_tasks(celery_app) -> set[str]:
    """Every task name the app's task modules register."""
    celery_app.loader.import_default_modules()
    return set(celery_app.tasks)


def checked_schedule_table(celery_app, table: dict[str, dict] | None = None) -> dict[str, dict]:
    """The schedule table (`table`, else beat_schedules.py's), or ScheduleTableError listing every
    entry beat cannot schedule."""
    table = load_schedule_table() if table is None else table
    problems = entry_problems(table, registered_tasks(celery_app))
    if problems:
        raise ScheduleTableError("; ".join(problems))
    return table
