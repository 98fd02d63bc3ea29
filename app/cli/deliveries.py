"""deliveries: register deliveries to follow, look at them, attach documents, poll them now."""

from pathlib import Path

import click

from app.cli.base import EXIT_ERROR, EXIT_OK, CliError, OrderedGroup, ensure_schema, require_worker, settings
from app.cli.output import TIME_NOTE, echo_json, human_time, table

POLL_TIMEOUT = 120.0


@click.group(cls=OrderedGroup, help="登记与查看送达 / register deliveries to follow, and look at them.")
def deliveries() -> None:
    """The deliveries group."""


def _text(name: str, help_text: str, required: bool = False):
    return click.option(f"--{name}", name.replace("-", "_"), required=required, help=help_text)


@deliveries.command("add", help="Register one delivery; the running service polls it at once.")
@_text("reference", "your reference, e.g. CASE-1", required=True)
@_text("recipient-name", "收件人 / recipient", required=True)
@_text("phone", "recipient's phone", required=True)
@_text("address", "recipient's address", required=True)
@_text("carrier", "carrier code, e.g. ems or shunfeng", required=True)
@_text("tracking-number", "the carrier's tracking number", required=True)
@_text("deadline", "ISO date, e.g. 2026-12-31")
@_text("case-cause", "案由, e.g. 民间借贷纠纷 (printed on the receipt)")
@_text("case-number", "案号, e.g. （2026）京0105民初123号")
@_text("documents", "送达文书名称及件数, e.g. '起诉状副本×1;传票×1'")
@_text("remarks", "备注, printed on the receipt")
def add(**fields) -> int:
    from app.core.database import session_scope
    from app.services import deliveries as service

    ensure_schema()
    with session_scope() as session:
        delivery = service.add_delivery(session, fields)
        session.commit()  # before a worker looks for it
        delivery_id, carrier, number = delivery.id, delivery.carrier, delivery.tracking_number
    click.echo(f"registered delivery {delivery_id}: {carrier} {number}")
    click.echo(_request_first_polls(delivery_id))
    return EXIT_OK


def _request_first_polls(delivery_id: int) -> str:
    """Ask the running service to poll a just-registered delivery now (and, at the demo pace, until it is
    signed) rather than at the next scheduled run; what was asked, for the operator."""
    from app.manager.inspect import probe_broker
    from app.services.carriers.simulator import DEMO_POLL_DELAYS
    from app.tasks.tracking_tasks import send_polls

    current = settings()
    if not probe_broker(current).ok:
        return "the service is not running: update-tracking-status polls it once it is"
    delays = DEMO_POLL_DELAYS if current.demo_pace else (0,)
    send_polls(delivery_id, delays)
    if current.demo_pace:
        return (f"polling it now and {len(delays) - 1} times within {delays[-1]} s (SIMULATOR_PACE=demo): "
                f"celery_beat_manager.py deliveries show {delivery_id}")
    return "polling it now"


@deliveries.command("import", help="Register every valid row of a CSV file.", epilog=(
    "Header: reference,recipient_name,phone,address,carrier,tracking_number,deadline (every column required, "
    "a deadline may be empty); optional case_cause,case_number,documents,remarks; other columns are ignored "
    "with a warning. UTF-8 or GB18030/GBK (Excel). Bad rows are reported by line; rows already registered "
    "are skipped. Exit 1 when any row was rejected."))
@click.argument("file", type=click.Path(path_type=Path))
def import_file(file: Path) -> int:
    from app.core.database import session_scope
    from app.services import deliveries as service

    if not file.is_file():
        raise CliError(f"no such file: {file}")
    ensure_schema()
    with session_scope() as session:
        report = service.import_csv(session, file)
    for warning in report.warnings:
        click.echo(f"warning: {file.name}: {warning}", err=True)
    for line, reason in report.errors:
        click.echo(f"line {line}: {reason}", err=True)
    click.echo(f"inserted {report.inserted}, already registered {report.duplicates}, rejected {len(report.errors)}")
    return EXIT_ERROR if report.errors else EXIT_OK


@deliveries.command("list", help="List deliveries, newest first.")
@click.option("--status", help="only this status, e.g. in_transit")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_deliveries(status: str | None, limit: int, as_json: bool) -> int:
    from sqlalchemy import select

    from app.core.database import session_scope
    from app.models import Delivery
    from app.services import deliveries as service

    ensure_schema()
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if status:
        query = query.where(Delivery.status == status)
    with session_scope() as session:
        rows = [service.delivery_summary(d) for d in session.scalars(query)]
    if as_json:
        echo_json(rows)
    elif not rows:
        click.echo("no deliveries yet: 'deliveries add' or 'deliveries import' registers them")
    else:
        click.echo(table(["id", "reference", "recipient", "phone", "carrier", "tracking number", "status", "deadline"],
                         [[r["id"], r["reference"], r["recipient_name"], r["phone"], r["carrier"],
                           r["tracking_number"], r["status"], r["deadline"] or "-"] for r in rows],
                         limits={1: 20, 2: 12}))
    return EXIT_OK


@deliveries.command("show", help="One delivery with its tracking events.")
@click.argument("delivery_id", type=int, metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def show(delivery_id: int, as_json: bool) -> int:
    from app.core.database import session_scope
    from app.models import Delivery
    from app.services import deliveries as service

    ensure_schema()
    with session_scope() as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            raise CliError(f"no delivery {delivery_id}")
        detail = {**service.delivery_summary(delivery), "events": service.event_summaries(delivery.events)}
    if as_json:
        echo_json(detail)
        return EXIT_OK
    for key, value in detail.items():
        if key != "events":
            shown = human_time(value) if key.endswith("_at") else value
            click.echo(f"{key:<15} {shown if shown is not None else '-'}")
    for event in detail["events"]:
        click.echo(f"  {human_time(event['time'])}  {event['location'] or ''}  {event['description']}")
    click.echo(TIME_NOTE)
    return EXIT_OK


@deliveries.command("attach", help="Attach a PDF or image file to a delivery.", epilog=(
    "The file is checked by its content (PDF or PNG/JPEG/GIF/WebP/TIFF), copied into the files root and "
    "recorded once."))
@click.argument("delivery_id", type=int, metavar="ID")
@click.argument("file", type=click.Path(path_type=Path))
def attach(delivery_id: int, file: Path) -> int:
    from app.core.database import SessionFactory
    from app.services.documents import register_document

    ensure_schema()
    files_root = settings().files_path
    document = register_document(SessionFactory, files_root, delivery_id, file)
    pages = f", {document['page_count']} pages" if document["page_count"] else ""
    click.echo(f"{'already attached' if document['duplicate'] else 'attached'} to delivery {delivery_id}: "
               f"stored as {files_root / document['path']}, sha256 {document['sha256']}, "
               f"{document['content_type']}{pages}")
    return EXIT_OK


@deliveries.command("poll", help="Ask the carrier about some deliveries now, through the running service.", epilog=(
    "Sends the polls to the workers (queue default_queue) and prints what they found; the schedule's own "
    "polls go on as before. Without IDs, --all polls every delivery still on its way."))
@click.argument("delivery_ids", type=int, nargs=-1, metavar="[ID]...")
@click.option("--all", "every", is_flag=True, help="every delivery that is not delivered, returned or timed out")
@click.option("--timeout", type=float, default=POLL_TIMEOUT, show_default=True, help="seconds to wait for the answers")
def poll(delivery_ids: tuple[int, ...], every: bool, timeout: float) -> int:
    from app.core.database import session_scope
    from app.services.tracking import active_delivery_ids
    from app.tasks.queues import Queue
    from app.tasks.tracking_tasks import poll_now

    if bool(delivery_ids) == every:
        raise click.UsageError("give delivery IDs or --all, not both or neither")
    ensure_schema()
    if every:
        with session_scope() as session:
            ids = active_delivery_ids(session)
    else:
        ids = list(delivery_ids)
    if not ids:
        click.echo("no delivery on its way: nothing to poll")
        return EXIT_OK
    require_worker(Queue.TRACKING.value)
    click.echo(f"polling {len(ids)} deliver{'y' if len(ids) == 1 else 'ies'} on the workers…", err=True)
    summary = poll_now(ids, timeout)
    click.echo(f"polled {summary['polled']}, new events {summary['new_events']}, delivered "
               f"{len(summary['delivered_ids'])}, rejected by the carrier {summary['failed']}, "
               f"to try again later {summary['errors'] + summary['config_errors']}")
    for sample in summary["error_samples"]:
        click.echo(f"  {sample}", err=True)
    return EXIT_ERROR if summary["failed"] or summary["errors"] or summary["config_errors"] else EXIT_OK


COMMANDS = [deliveries]
