"""Terminal output: tables aligned in display cells (a Chinese character takes two), colour only on a
terminal (and never with NO_COLOR), one time zone for people and ISO 8601 with offset for programs."""

import json
import os
import re
import sys
from datetime import date, datetime
from zoneinfo import ZoneInfo

import click
from wcwidth import wcswidth

from app.core.config import TIMEZONE

COLOURS = {"green": "32", "red": "31", "yellow": "33", "bold": "1", "dim": "2"}
SHANGHAI = ZoneInfo(TIMEZONE)
TIME_NOTE = "times are Asia/Shanghai (+08:00)"
COLOUR_CODE = re.compile(r"\033\[[0-9;]*m")


def colour_enabled(stream=None) -> bool:
    return (stream or sys.stdout).isatty() and "NO_COLOR" not in os.environ


def paint(text: str, colour: str, stream=None) -> str:
    if not colour_enabled(stream):
        return text
    return f"\033[{COLOURS[colour]}m{text}\033[0m"


def display_width(text: str) -> int:
    """Terminal cells `text` takes: colour codes take none, wide (CJK) characters two."""
    visible = COLOUR_CODE.sub("", text)
    width = wcswidth(visible)
    return width if width >= 0 else len(visible)  # a control character: count it as one cell


def truncate(text: str, cells: int) -> str:
    """`text` cut to at most `cells` display cells, marked with … when cut."""
    if display_width(text) <= cells:
        return text
    kept = ""
    for character in COLOUR_CODE.sub("", text):
        if display_width(kept + character) > cells - 1:
            break
        kept += character
    return kept + "…"


def table(headers: list[str] | None, rows: list[list], limits: dict[int, int] | None = None) -> str:
    """Rows (under headers, if any), each column as wide as its widest cell in display cells; `limits`
    caps the width of some columns (column index: cells), cutting longer cells with …."""
    cells = [[str(cell) for cell in row] for row in ([headers, *rows] if headers else rows)]
    if not cells:
        return ""
    for index, limit in (limits or {}).items():
        for row in cells[1 if headers else 0:]:
            row[index] = truncate(row[index], limit)
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(_pad(cell, width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def as_moment(value: datetime | str | None) -> datetime | None:
    """A datetime from a datetime or an ISO 8601 string; naive values are taken as UTC."""
    if value is None or value == "":
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo("UTC"))


def human_time(value: datetime | str | None, offset: bool = True) -> str:
    """A moment as people here read it: Asia/Shanghai, to the second, with its offset; '-' for none."""
    moment = as_moment(value)
    if moment is None:
        return "-"
    local = moment.astimezone(SHANGHAI)
    return local.strftime("%Y-%m-%d %H:%M:%S%z" if offset else "%Y-%m-%d %H:%M:%S").replace("+0800", "+08:00")


def iso_time(value: datetime | str | None) -> str | None:
    """A moment for programs: ISO 8601 in Asia/Shanghai with its offset."""
    moment = as_moment(value)
    return moment.astimezone(SHANGHAI).isoformat(timespec="seconds") if moment else None


def _json_default(value):
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def echo_json(value) -> None:
    """`value` as indented JSON, Chinese left readable, datetimes ISO 8601 with offset."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=_json_default))


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return " ".join(shown) or "0s"


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GB"


def confirm(question: str, error: type[Exception]) -> bool:
    """Ask `question` (yes/no, default no); without a terminal raise `error` telling to pass --yes."""
    if not sys.stdin.isatty():
        raise error("refusing to ask for confirmation without a terminal: pass --yes")
    return click.confirm(question, default=False)
