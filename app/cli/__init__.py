"""celery_beat_manager.py (and its alias python -m app): one click group for the service and its domain.

The commands render what the printing-free models return: app.manager.supervisor for the processes,
app.manager.inspect for the probes, app.scheduling.overview for the schedule, app.services.* for the rest.
"""

import os
import sys

import click

from app.cli.base import EXIT_CODES, EXIT_ERROR, EXIT_OK, ErrorPolicyGroup, silence_closed_pipe
from app.core.config import PRIVATE_UMASK, load_settings

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=ErrorPolicyGroup, context_settings=CONTEXT, epilog=EXIT_CODES)
def cli() -> None:
    """Celery Beat 管理脚本: run, inspect and operate the scheduled-jobs service and its deliveries.

    Run COMMAND --help for the details of one command.
    """
    os.umask(PRIVATE_UMASK)  # what the commands create (var/, logs/, PID files) is their user's only
    load_settings()  # a bad setting stops every command here, in one line, before anything starts


def _register() -> None:
    from app.cli import backups, deliveries, receipts, reports, schedule, service, simulator

    for module in (service, schedule, deliveries, receipts, reports, backups, simulator):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None, prog_name: str = "celery_beat_manager.py") -> int:
    """Run one command; its exit code. Output cut short by a closed pipe ends quietly with 0."""
    try:
        cli.main(args=argv, prog_name=prog_name, standalone_mode=True)
        code = EXIT_OK
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (EXIT_OK if exit_.code is None else EXIT_ERROR)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_closed_pipe()
        return EXIT_OK
    return code
