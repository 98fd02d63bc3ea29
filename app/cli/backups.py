"""backups: list the database backups the backup-database job writes, restore one."""

from datetime import datetime
from pathlib import Path

import click

from app.cli.base import EXIT_ERROR, EXIT_OK, CliError, OrderedGroup, settings
from app.cli.output import confirm, echo_json, human_bytes, human_duration, table


@click.group(cls=OrderedGroup, help="备份 / the database backups under BACKUPS_DIR: list them, restore one.")
def backups() -> None:
    """The backups group."""


@backups.command("list", help="Every backup, newest first: size, age, what rotation keeps it for.", epilog=(
    "'kept for' names the periods (daily, weekly, monthly) that keep a backup at the next rotation; '-' means "
    "the next rotation deletes it."))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_backups(as_json: bool) -> int:
    from app.services import backups as service

    current = settings()
    found = service.list_backups(current)
    if as_json:
        echo_json(found)
        return EXIT_OK
    if not found:
        click.echo(f"no backups in {current.backups_path}")
        return EXIT_OK
    now = datetime.now().astimezone()
    click.echo(table(["name", "size", "age", "kept for"],
                     [[backup["name"], human_bytes(backup["size"]),
                       human_duration((now - datetime.fromisoformat(backup["taken_at"])).total_seconds()),
                       ", ".join(backup["kept_for"]) or "-"] for backup in found]))
    return EXIT_OK


@backups.command("restore", help="Replace the database with a backup (stop the services first).", epilog=(
    "Verifies the backup, asks for confirmation, then replaces the database (DATABASE_URL, or --target-url) "
    "with it. Stop the services first: celery_beat_manager.py stop --service all."))
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@click.option("--target-url", metavar="URL", help="restore into this database instead of DATABASE_URL")
def restore(file: Path, yes: bool, target_url: str | None) -> int:
    from app.services import backups as service

    current = settings()
    target = service.restore_target(current, target_url).render_as_string(hide_password=True)
    if not yes and not confirm(f"Replace everything in {target} with {file}? The services must be stopped.", CliError):
        click.echo("nothing changed")
        return EXIT_ERROR
    restored = service.restore_backup(current, file, target_url)
    click.echo(f"restored {Path(restored['file']).name} into {restored['target']} in {restored['seconds']:.1f} s")
    return EXIT_OK


COMMANDS = [backups]
