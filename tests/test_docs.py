"""CELERY_BEAT_CONFIG.md stays true: every list here comes from the code, so a change there fails here."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DOC = ROOT / "CELERY_BEAT_CONFIG.md"
README = ROOT / "README.md"

SEED_HEADINGS = ["概述", "文件结构", "配置详情", "队列配置", "使用方法", "任务重试配置", "性能配置",
                 "环境变量", "日志配置", "故障排除", "扩展配置", "最佳实践"]
# Every job the seed lists: each is either in BEAT_SCHEDULE or in the doc's "not yet implemented" list.
SEED_JOBS = {
    "check-pending-tasks", "update-tracking-status", "check-timeout-tasks", "system-health-check",
    "cleanup-temp-files", "cleanup-expired-results", "check-disk-space",
    "generate-daily-report", "optimize-database", "backup-database", "cleanup-expired-tasks",
    "cleanup-logs", "generate-weekly-report", "archive-old-data", "generate-monthly-report",
}
NOT_IMPLEMENTED_HEADING = "尚未实现 / not yet implemented"


@pytest.fixture(scope="module")
def doc() -> str:
    return CONFIG_DOC.read_text(encoding="utf-8")


def mentions(text: str, word: str) -> bool:
    """`word` as a whole token (FLOWER_PORT does not count inside FLOWER_PORTS)."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def lines_naming(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if f"`{name}`" in line]


def headings(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every Markdown heading, skipping `# comments` inside code fences."""
    found, fenced = [], False
    for number, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#+ ", line):
            found.append((number, line))
    return found


def section(text: str, heading: str) -> str:
    """The text under the first heading containing `heading`, up to the next heading."""
    lines, marks = text.splitlines(), headings(text)
    for index, (number, line) in enumerate(marks):
        if heading in line:
            end = marks[index + 1][0] if index + 1 < len(marks) else len(lines)
            return "\n".join(lines[number + 1:end])
    raise AssertionError(f"no heading containing {heading!r}")


@pytest.mark.parametrize("heading", SEED_HEADINGS)
def test_seed_section_heading_is_present(doc, heading):
    assert any(heading in line for _, line in headings(doc)), heading


def test_every_job_is_documented_with_its_queue_schedule_and_policy(doc):
    from app.scheduling.sync import crontab_fields
    from app.tasks.beat_schedules import BEAT_SCHEDULE
    from app.tasks.celery_app import app
    from app.tasks.policies import RETRY_POLICIES

    app.loader.import_default_modules()
    problems = []
    for name, entry in BEAT_SCHEDULE.items():
        queue = str(entry["options"]["queue"])
        rows = [line for line in lines_naming(doc, name) if mentions(line, queue)]
        if not rows:
            problems.append(f"{name}: no line naming it and its queue {queue}")
            continue
        fields = crontab_fields(entry["schedule"])
        cron = " ".join(fields[f] for f in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week"))
        task = app.tasks[entry["task"]]
        policy = next(policy_name for policy_name, options in RETRY_POLICIES.items()
                      if task.retry_kwargs == options["retry_kwargs"] and task.retry_backoff == options["retry_backoff"])
        if not any(f"`{cron}`" in row and f"`{policy}`" in row for row in rows):
            problems.append(f"{name}: its row must show crontab `{cron}` and policy `{policy}`")
    assert not problems, "\n".join(problems)


def test_not_yet_implemented_jobs_are_not_scheduled_and_seed_jobs_are_accounted_for(doc):
    from app.tasks.beat_schedules import BEAT_SCHEDULE

    pending = set(re.findall(r"^- `([a-z0-9-]+)`", section(doc, NOT_IMPLEMENTED_HEADING), re.M))
    assert not pending & set(BEAT_SCHEDULE), "implemented now: move them out of the not-yet-implemented list"
    assert SEED_JOBS - set(BEAT_SCHEDULE) <= pending, "a seed job neither scheduled nor listed as not implemented"


def test_every_route_is_documented_with_its_queue(doc):
    from app.tasks.celery_app import TASK_ROUTES
    from app.tasks.queues import Queue

    for pattern, route in TASK_ROUTES.items():
        assert any(f'"{pattern}"' in line and f'"{route["queue"]}"' in line for line in doc.splitlines()), pattern
    for queue in Queue:
        assert f"`{queue.value}`" in section(doc, "队列优先级"), queue.value


def _setting_literal(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


@pytest.mark.parametrize("setting", ["timezone", "enable_utc", "beat_scheduler", "task_soft_time_limit",
                                     "task_time_limit", "worker_prefetch_multiplier", "task_acks_late",
                                     "task_reject_on_worker_lost", "result_expires"])
def test_celery_setting_value_is_documented(doc, setting):
    from app.tasks.celery_app import app

    assert f"{setting}={_setting_literal(app.conf[setting])}" in doc


def test_visibility_timeout_is_documented(doc):
    from app.tasks.celery_app import VISIBILITY_TIMEOUT

    assert f"visibility_timeout={VISIBILITY_TIMEOUT}" in doc


def _policy_literal(name: str, options: dict) -> str:
    from app.tasks.policies import TRANSIENT_ERRORS

    def literal(value) -> str:
        if value == TRANSIENT_ERRORS:
            return "TRANSIENT_ERRORS"
        if isinstance(value, tuple):
            return "(" + ", ".join(item.__name__ for item in value) + ",)"
        return repr(value)

    return "\n".join([f"'{name}': {{", *(f"    '{key}': {literal(value)}," for key, value in options.items()), "}"])


def test_retry_policies_are_documented_verbatim(doc):
    from app.tasks.policies import RETRY_POLICIES

    for name, options in RETRY_POLICIES.items():
        assert _policy_literal(name, options) in doc, f"the {name!r} policy block differs from policies.py"


def test_every_transient_error_is_named_in_the_retry_table(doc):
    from app.tasks.policies import TRANSIENT_ERRORS

    table = doc.split("`TRANSIENT_ERRORS`", 1)[1].split("\n\n", 2)[1]
    missing = [error.__name__ for error in TRANSIENT_ERRORS if f"{error.__name__}`" not in table]
    assert not missing, f"not in the table after TRANSIENT_ERRORS: {missing}"


def test_every_settings_field_is_documented_as_an_environment_variable(doc):
    from app.core.config import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    table = section(doc, "环境变量")
    missing = []
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        names = [alias] if isinstance(alias, str) else [f"{prefix}{field_name}"]
        missing += [name.upper() for name in names if f"`{name.upper()}`" not in table]
    assert not missing, f"environment variables missing from 环境变量: {missing}"


def _commands(group=None, prefix: str = "") -> dict[str, object]:
    """Every runnable command of celery_beat_manager.py by its full name ('deliveries add'), groups walked."""
    import click

    from app.cli import cli

    found = {}
    for name, command in (group or cli).commands.items():
        if isinstance(command, click.Group):
            found |= _commands(command, f"{prefix}{name} ")
        else:
            found[f"{prefix}{name}"] = command
    return found


def test_every_manager_command_and_option_is_documented(doc):
    """The service's commands in CELERY_BEAT_CONFIG.md; the domain commands (groups) in README.md."""
    readme = README.read_text(encoding="utf-8")
    problems = []
    for name, command in _commands().items():
        text = readme if " " in name else doc
        if f"celery_beat_manager.py {name}" not in text:
            problems.append(f"command {name}")
        for parameter in command.params:
            for option in parameter.opts:
                if option.startswith("--") and option != "--help" and not mentions(text, option):
                    problems.append(f"{name} {option}")
    assert not problems, f"not documented: {problems}"


def test_every_log_file_is_documented(doc, tmp_path):
    from app.core.broker import EmbeddedBroker
    from app.core.config import Settings, get_settings
    from app.core.logging import task_results_logger
    from app.manager.processes import SERVICES, service_process

    # A private var/ and logs/: building Flower's command line may generate its credentials file.
    scratch = Settings(_env_file=None, var_dir=tmp_path / "var", logs_dir=tmp_path / "logs")
    files = {f"logs/{service_process(scratch, name).logfile.name}" for name in SERVICES}
    files.add(f"logs/{EmbeddedBroker(scratch).logfile.name}")
    logs_path = get_settings().logs_path  # the directory the app itself writes task results to
    # Only file handlers: pytest's log capture may have attached its own to the logger.
    files |= {f"logs/{Path(h.baseFilename).name}" for h in task_results_logger(logs_path).handlers
              if hasattr(h, "baseFilename")}
    table = section(doc, "日志文件位置")
    assert not [f for f in sorted(files) if f"`{f}`" not in table]
    consoles = {service_process(scratch, name).console.name for name in SERVICES} - {Path(f).name for f in files}
    assert not [c for c in sorted(consoles) if f"`{c}`" not in table]


def test_readme_keeps_the_two_commands_and_links_the_config_doc():
    readme = README.read_text(encoding="utf-8")
    assert re.search(r"^make run\b", readme, re.M) and re.search(r"^make test\b", readme, re.M)
    assert "CELERY_BEAT_CONFIG.md" in readme
