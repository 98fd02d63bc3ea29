"""receipts: issue, show and verify the PDF delivery receipts (送达回证)."""

from pathlib import Path

import click

from app.cli.base import EXIT_ERROR, EXIT_OK, OrderedGroup, ensure_schema, settings
from app.cli.output import echo_json, human_time


@click.group(cls=OrderedGroup, help="送达回证 / issue, show and verify the PDF receipts of delivered deliveries.")
def receipts() -> None:
    """The receipts group."""


@receipts.command("verify", help="Say whether a file, or a receipt's QR content, is a receipt on record.", epilog=(
    "FILE: recompute its SHA-256, look it up among the issued receipts and check its QR claim (receipt number, "
    "screenshot SHA-256) against the record. --qr TEXT: check what a phone read from the receipt's QR code "
    "(receipt number, timeline screenshot SHA-256, SHA-256 of the form's rows) against the record and the "
    "issued file. Exit 0 when it matches, 1 when it does not or the file is missing."))
@click.argument("file", type=click.Path(path_type=Path), required=False)
@click.option("--qr", metavar="TEXT", help="the text of a receipt's QR code, instead of FILE")
def verify(file: Path | None, qr: str | None) -> int:
    from app.core.database import session_scope
    from app.services.evidence import receipt

    if (file is None) == (qr is None):
        raise click.UsageError("give either FILE or --qr TEXT")
    ensure_schema()
    files_root = settings().files_path
    with session_scope() as session:
        result = (receipt.verify_qr(session, files_root, qr) if qr is not None
                  else receipt.verify_receipt(session, files_root, file))
    click.echo(f"{'OK' if result.ok else 'MISMATCH'}: {result.message}")
    return EXIT_OK if result.ok else EXIT_ERROR


@receipts.command("show", help="A delivery's receipts: number, file, sha256, generation time.")
@click.argument("delivery_id", type=int, metavar="DELIVERY_ID")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def show(delivery_id: int, as_json: bool) -> int:
    from app.core.database import session_scope
    from app.services.evidence import receipt

    ensure_schema()
    with session_scope() as session:
        details = receipt.receipt_details(session, settings().files_path, delivery_id)
    if as_json:
        echo_json(details)
        return EXIT_OK
    for detail in details:
        click.echo("\n".join(f"{key:<18} {human_time(value) if key.endswith('_at') else value}"
                             for key, value in detail.items() if key != "path"), nl=False)
        click.echo("\n")
    return EXIT_OK


@receipts.command("generate", help="Issue a delivery's receipt now, in this process.", epilog=(
    "Needs the delivery's tracking screenshot. An existing receipt is kept unless --regenerate, which issues "
    "one with a new number."))
@click.argument("delivery_id", type=int, metavar="DELIVERY_ID")
@click.option("--regenerate", is_flag=True, help="issue a new receipt even if one exists")
def generate(delivery_id: int, regenerate: bool) -> int:
    from app.core.database import SessionFactory
    from app.services.evidence import receipt

    ensure_schema()
    files_root = settings().files_path
    issued = receipt.generate_receipt(SessionFactory, files_root, delivery_id, regenerate)
    click.echo(f"{'existing' if issued['existing'] else 'issued'} receipt {issued['receipt_number']} of delivery "
               f"{delivery_id}: {files_root / issued['path']}, {issued['pages']} pages, sha256 {issued['sha256']}")
    return EXIT_OK


COMMANDS = [receipts]
