"""celery_beat_manager.py's click group in this process (click's CliRunner) and, where a real pipe or
process is the point, as a subprocess: help everywhere, one error policy, display width, one time zone."""

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from app.cli import cli
from app.cli.output import display_width
from tests.support.app_cli import PATH_VARIABLES

ROOT = Path(__file__).resolve().parents[1]


def every_command(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The argv prefix of every command and group, walked down the tree."""
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += every_command(command, (*prefix, name))
    return found


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_every_command_and_group_has_help():
    commands = every_command()
    assert {("start",), ("foreground",), ("stop",), ("restart",), ("status",), ("logs",), ("list",), ("clear",),
            ("run",), ("check",), ("deliveries", "poll"), ("receipts", "verify")} <= set(commands)
    for argv in [(), *commands]:
        shown = invoke(*argv, "--help")
        assert shown.exit_code == 0 and "Usage:" in shown.output, argv
        command = cli
        for name in argv:
            command = command.commands[name]
        assert (command.help or "").strip(), f"{' '.join(argv)} has no help text"


def test_wrong_usage_exits_2_and_names_the_problem():
    refused = invoke("logs", "--service", "nonsense")
    assert refused.exit_code == 2 and "Invalid value for '--service'" in refused.output
    assert invoke("no-such-command").exit_code == 2


def test_logs_offers_every_service_and_the_broker_and_all_of_them():
    choices = next(p for p in cli.commands["logs"].params if p.name == "service").type.choices
    assert set(choices) == {"simulator", "worker", "beat", "flower", "admin", "broker", "all"}


def _register(name: str, reference: str, address: str) -> str:
    """Add a delivery through the CLI; its tracking number."""
    number = f"EM{uuid.uuid4().int % 10**9:09d}CN"
    added = invoke("deliveries", "add", "--reference", reference, "--recipient-name", name, "--phone", "13800138000",
                   "--address", address, "--carrier", "ems", "--tracking-number", number)
    assert added.exit_code == 0, added.output
    return number


def test_delivery_columns_align_in_display_cells_with_chinese_names(django_db):
    tag = uuid.uuid4().hex[:6]
    numbers = [_register("张三", f"北京-{tag}", "北京市朝阳区建国路1号"), _register("Li Lei", f"BJ-{tag}", "Beijing")]
    listed = invoke("deliveries", "list", "--limit", "20")
    lines = listed.output.splitlines()
    header, rows = lines[0], [line for line in lines if tag in line]
    assert len(rows) == 2
    # the tracking number, not the status: a worker of another test may poll these deliveries meanwhile
    number_cell = display_width(header[:header.index("tracking number")])
    for row in rows:
        number = next(number for number in numbers if number in row)
        assert display_width(row[:row.index(number)]) == number_cell, row


def test_times_are_shanghai_with_offset_for_people_and_iso_with_offset_in_json(django_db):
    tag = uuid.uuid4().hex[:6]
    _register("王五", f"T-{tag}", "上海市")
    [row] = [r for r in json.loads(invoke("deliveries", "list", "--json").output) if r["reference"] == f"T-{tag}"]
    shown = json.loads(invoke("deliveries", "show", str(row["id"]), "--json").output)
    assert datetime.fromisoformat(shown["created_at"]).utcoffset().total_seconds() == 8 * 3600
    human = invoke("deliveries", "show", str(row["id"])).output
    created = next(line for line in human.splitlines() if line.startswith("created_at"))
    assert created.endswith("+08:00") and "+00:00" not in human


def test_list_json_times_carry_their_offset(django_db):
    from app.scheduling.sync import sync_schedule_table
    from app.tasks.beat_schedules import BEAT_SCHEDULE

    sync_schedule_table(BEAT_SCHEDULE)
    jobs = json.loads(invoke("list", "--json").output)
    times = [job["next_run"] for job in jobs if job["next_run"]]
    assert times and all(datetime.fromisoformat(t).utcoffset() is not None for t in times)


def test_list_fits_120_columns_and_wide_shows_every_field(django_db):
    narrow, wide = invoke("list").output, invoke("list", "--wide").output
    assert max(display_width(line) for line in narrow.splitlines()) <= 120
    assert "policy" in wide.splitlines()[0] and "policy" not in narrow.splitlines()[0]


def test_an_expected_failure_is_one_line_and_exit_1(django_db):
    missing = CliRunner().invoke(cli, ["deliveries", "show", "987654321"])
    assert (missing.exit_code, missing.output) == (1, "error: no delivery 987654321\n")


def _closed_reader_run(logs: Path, *args: str) -> subprocess.CompletedProcess:
    """ARGS run with a stdout whose reader has gone before anything is written (`| head` that already left)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {key: value for key, value in os.environ.items() if key not in PATH_VARIABLES} | {"LOGS_DIR": str(logs)}
    try:
        return subprocess.run([sys.executable, "celery_beat_manager.py", *args], cwd=ROOT, env=env,
                              stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("argv", [("--help",), ("list",), ("list", "--json"), ("deliveries", "list"),
                                  ("backups", "list"), ("logs", "--service", "all")])
def test_a_closed_pipe_ends_a_listing_quietly_with_exit_0(argv, django_db, tmp_path):
    (tmp_path / "celerybeat.log").write_text("a line\n")
    done = _closed_reader_run(tmp_path, *argv)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_deliveries_poll_asks_the_carrier_now_through_a_running_worker(django_db, worker, carrier_simulator):
    tag = uuid.uuid4().hex[:6]
    _register("赵六", f"P-{tag}", "广州市天河区")
    [row] = [r for r in json.loads(invoke("deliveries", "list", "--json").output) if r["reference"] == f"P-{tag}"]
    polled = CliRunner().invoke(cli, ["deliveries", "poll", str(row["id"])])
    assert polled.exit_code == 0, polled.output
    assert "polled 1, new events " in polled.output
    shown = json.loads(invoke("deliveries", "show", str(row["id"]), "--json").output)
    assert shown["last_polled_at"] is not None


def test_deliveries_poll_wants_ids_or_all():
    assert invoke("deliveries", "poll").exit_code == 2
    assert invoke("deliveries", "poll", "1", "--all").exit_code == 2
