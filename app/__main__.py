"""python -m app: domain commands (deliveries, receipts). The service itself runs from celery_beat_manager.py."""

import argparse
import json
import sys
from pathlib import Path

from app.core.config import SIMULATOR_ACCOUNT, ConfigError, load_settings
from app.manager.output import table


def _deliveries_parser(commands) -> None:
    deliveries = commands.add_parser("deliveries", help="register and inspect deliveries",
                                     description="Register deliveries to follow, and look at them.")
    actions = deliveries.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="register one delivery")
    for name in ("reference", "recipient-name", "phone", "address", "carrier", "tracking-number"):
        add.add_argument(f"--{name}", required=True)
    add.add_argument("--deadline", help="ISO date, e.g. 2026-12-31")
    imported = actions.add_parser("import", help="register every valid row of a CSV file",
                                  description="Header: reference,recipient_name,phone,address,carrier,"
                                              "tracking_number,deadline. Bad rows are reported by line; "
                                              "rows already registered are skipped.")
    imported.add_argument("file", type=Path)
    listing = actions.add_parser("list", help="list deliveries, newest first")
    listing.add_argument("--status", help="only this status")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="one delivery with its tracking events")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    attach = actions.add_parser("attach", help="attach a PDF or image file to a delivery",
                                description="The file is checked by its content (PDF or PNG/JPEG/GIF/WebP/TIFF), "
                                            "copied into the files root and recorded once.")
    attach.add_argument("id", type=int)
    attach.add_argument("file", type=Path)


def _receipts_parser(commands) -> None:
    receipts = commands.add_parser("receipts", help="issue, show and verify PDF delivery receipts (送达回证)",
                                   description="The PDF receipts of delivered deliveries, and whether a file is one.")
    actions = receipts.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="say whether a file is, byte for byte, a receipt on record",
                                description="Recompute the file's SHA-256 and look it up among the issued receipts. "
                                            "Exit 0 when it matches one, 1 when it does not or the file is missing.")
    verify.add_argument("file", type=Path)
    show = actions.add_parser("show", help="a delivery's receipts: number, file, sha256, generation time")
    show.add_argument("id", type=int, metavar="DELIVERY_ID")
    show.add_argument("--json", action="store_true")
    generate = actions.add_parser("generate", help="issue a delivery's receipt now, in this process",
                                  description="Needs the delivery's tracking screenshot. An existing receipt is "
                                              "kept unless --regenerate, which issues one with a new number.")
    generate.add_argument("id", type=int, metavar="DELIVERY_ID")
    generate.add_argument("--regenerate", action="store_true", help="issue a new receipt even if one exists")


def _simulator_parser(commands) -> None:
    simulator = commands.add_parser("simulator", help="serve the Kuaidi100 protocol simulator on 127.0.0.1",
                                    description="The carrier the embedded default tracks against "
                                                "(TRACKING_PROVIDER=simulator); SIMULATOR_* settings apply.")
    simulator.add_argument("--port", type=int, default=None, help="default: SIMULATOR_PORT")


def run_simulator(args) -> int:
    import signal
    import threading

    from app.core.config import get_settings
    from app.services.carriers.simulator import CarrierSimulator, SimulatorServer

    settings = get_settings()
    simulator = CarrierSimulator(*SIMULATOR_ACCOUNT, error_rate=settings.simulator_error_rate,
                                 rate_limit=settings.simulator_rate_limit)
    server = SimulatorServer(simulator,
                             port=args.port or settings.simulator_port,
                             latency=settings.simulator_latency_ms / 1000).start()
    print(f"Kuaidi100 simulator at {server.url}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


def run_deliveries(args) -> int:
    from sqlalchemy import select

    from app.core.database import engine, session_scope
    from app.core.migrations import upgrade_app_schema
    from app.models import Delivery
    from app.services import deliveries

    upgrade_app_schema(engine.sa_engine)
    if args.action == "attach":
        return attach_document(args)
    with session_scope() as session:
        if args.action == "add":
            fields = {name: getattr(args, name) for name in deliveries.CSV_HEADER}
            delivery = deliveries.add_delivery(session, fields)
            print(f"registered delivery {delivery.id}: {delivery.carrier} {delivery.tracking_number}")
            return 0
        if args.action == "import":
            if not args.file.is_file():
                raise deliveries.DeliveryInputError(f"no such file: {args.file}")
            report = deliveries.import_csv(session, args.file)
            for line, reason in report.errors:
                print(f"line {line}: {reason}", file=sys.stderr)
            print(f"inserted {report.inserted}, already registered {report.duplicates}, rejected {len(report.errors)}")
            return 1 if report.errors else 0
        if args.action == "list":
            query = select(Delivery).order_by(Delivery.id.desc()).limit(args.limit)
            if args.status:
                query = query.where(Delivery.status == args.status)
            rows = [deliveries.delivery_summary(d) for d in session.scalars(query)]
            if args.json:
                print(json.dumps(rows, ensure_ascii=False, indent=2))
            else:
                print(table(["id", "reference", "recipient", "phone", "carrier", "tracking number", "status", "deadline"],
                            [[r["id"], r["reference"], r["recipient_name"], r["phone"], r["carrier"],
                              r["tracking_number"], r["status"], r["deadline"] or "-"] for r in rows]))
            return 0
        delivery = session.get(Delivery, args.id)
        if delivery is None:
            raise deliveries.DeliveryInputError(f"no delivery {args.id}")
        detail = {**deliveries.delivery_summary(delivery), "events": deliveries.event_summaries(delivery.events)}
        if args.json:
            print(json.dumps(detail, ensure_ascii=False, indent=2))
        else:
            for key, value in detail.items():
                if key != "events":
                    print(f"{key:<15} {value if value is not None else '-'}")
            for event in detail["events"]:
                print(f"  {event['time']}  {event['location'] or ''}  {event['description']}")
        return 0


def attach_document(args) -> int:
    from app.core.config import get_settings
    from app.core.database import SessionFactory
    from app.services.documents import register_document

    files_root = get_settings().files_path
    document = register_document(SessionFactory, files_root, args.id, args.file)
    pages = f", {document['page_count']} pages" if document["page_count"] else ""
    print(f"{'already attached' if document['duplicate'] else 'attached'} to delivery {args.id}: "
          f"stored as {files_root / document['path']}, sha256 {document['sha256']}, {document['content_type']}{pages}")
    return 0


def run_receipts(args) -> int:
    from app.core.config import get_settings
    from app.core.database import SessionFactory, engine, session_scope
    from app.core.migrations import upgrade_app_schema
    from app.services.evidence import receipt

    files_root = get_settings().files_path
    upgrade_app_schema(engine.sa_engine)
    if args.action == "generate":
        issued = receipt.generate_receipt(SessionFactory, files_root, args.id, args.regenerate)
        print(f"{'existing' if issued['existing'] else 'issued'} receipt {issued['receipt_number']} of delivery "
              f"{args.id}: {files_root / issued['path']}, {issued['pages']} pages, sha256 {issued['sha256']}")
        return 0
    with session_scope() as session:
        if args.action == "verify":
            result = receipt.verify_receipt(session, files_root, args.file)
            print(f"{'OK' if result.ok else 'MISMATCH'}: {result.message}")
            return 0 if result.ok else 1
        details = receipt.receipt_details(session, files_root, args.id)
    if args.json:
        print(json.dumps(details, ensure_ascii=False, indent=2))
        return 0
    for detail in details:
        print("\n".join(f"{key:<18} {value}" for key, value in detail.items() if key != "path"), end="\n\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _deliveries_parser(commands)
    _receipts_parser(commands)
    _simulator_parser(commands)
    args = parser.parse_args(argv)
    from app.services.errors import PermanentError

    try:
        load_settings()
        runners = {"deliveries": run_deliveries, "receipts": run_receipts, "simulator": run_simulator}
        return runners[args.command](args)
    except (ConfigError, PermanentError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
