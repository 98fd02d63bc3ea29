"""`python -m app` run as an operator runs it, in a subprocess, on the embedded default."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where the in-process test set-up may point; the CLI under test keeps everything under its VAR_DIR.
PATH_VARIABLES = ("DATABASE_URL", "FILES_DIR", "BACKUPS_DIR", "REPORTS_DIR")


def run_app(var_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m app ARGS` with VAR_DIR=`var_dir`, no terminal, output captured."""
    env = {key: value for key, value in os.environ.items() if key not in PATH_VARIABLES}
    env["VAR_DIR"] = str(var_dir)
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def command_of(argv: list[str]) -> tuple[str, dict]:
    """The name and parameters of the command `celery_beat_manager.py ARGV` would run, without running it."""
    from app.cli import cli

    context = cli.make_context("celery_beat_manager.py", list(argv))
    name, command, rest = cli.resolve_command(context, list(argv))
    return command.name, command.make_context(name, rest, parent=context).params
