"""Terminal output: aligned tables, colour only on a terminal (and never with NO_COLOR); confirmations."""

import os
import re
import sys

COLOURS = {"green": "32", "red": "31", "yellow": "33", "bold": "1", "dim": "2"}


def colour_enabled(stream=sys.stdout) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


def paint(text: str, colour: str, stream=sys.stdout) -> str:
    if not colour_enabled(stream):
        return text
    return f"\033[{COLOURS[colour]}m{text}\033[0m"


def table(headers: list[str] | None, rows: list[list[str]]) -> str:
    """Rows (under headers, if any), each column as wide as its widest cell."""
    cells = [headers, *rows] if headers else rows
    if not cells:
        return ""
    widths = [max(len(_visible(str(row[i]))) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(_pad(str(cell), width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _visible(text: str) -> str:
    """The text without colour codes, for measuring its width."""
    return re.sub(r"\033\[[0-9;]*m", "", text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - len(_visible(text)))


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
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
