"""What the service writes (the SQLite database with phones and addresses, logs, reports) is its user's only."""

import os
import stat
from pathlib import Path

import pytest

from app.core.config import Settings

pytestmark = pytest.mark.e2e


def readable_by_others(root: Path) -> list[str]:
    """Every file or directory under `root` (itself included) with a group or other permission bit."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return found


def test_a_real_start_creates_files_for_its_user_only(embedded_project):
    project = embedded_project
    previous = os.umask(0o022)  # an operator's usual umask: the service must not rely on it
    try:
        for service in ("beat", "admin"):
            started = project.manager("start", "--service", service)
            assert started.returncode == 0, started.stdout + started.stderr
        assert project.app_cli("reports", "generate", "daily").returncode == 0  # the other entry point
    finally:
        os.umask(previous)

    var = project.root / "var"
    assert (var / "app.db").is_file() and (var / "app.db-wal").is_file() and any(var.glob("reports/daily/*"))
    assert {"celerybeat.log", "admin.log", "broker.log"} <= {path.name for path in project.logs.iterdir()}
    run = Settings(_env_file=None, var_dir=var).run_path  # under /tmp when var/ is deep
    for root in {var, project.logs, run}:
        assert readable_by_others(root) == [], root  # the services still run: their open files count too
