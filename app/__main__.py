"""python -m app: domain commands (deliveries, receipts, reports, backups). The service itself runs from
celery_beat_manager.py."""

import argparse
import json
import sys
from pathlib import Path

from app.core.config import SIMULATOR_ACCOUNT, ConfigError, load_settings
from app.manager.output import confirm, table


def _deliveries_parser(commands) -> None:
    deliveries = commands.add_parser("deliveries", help="register and inspect deliveries",
                                     description="Register deliveries to follow, and look at them.")
    actions = deliveries.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="register one delivery")
    for name in ("reference", "recipient-name", "phone", "address", "carrier", "tracking-number"):
        add.add_argument(f"--{name}", required=True)
    add.add_argument("--deadline", help="ISO date, e.g. 2026-12-31")
    add.add_argument("--case-cause", help="案由, e.g. 民间借贷纠纷 (printed on the receipt)")
    add.add_argument("--case-number", help="案号, e.g. （2026）京0105民初123号")
    add.add_argument("--documents", help="送达文书名称及件数, e.g. '起诉状副本×1;传票×1'")
    add.add_argument("--remarks", help="备注, printed on the receipt")
    imported = actions.add_parser("import", help="register every valid row of a CSV file",
                                  description="Header: reference,recipient_name,phone,address,carrier,"
                                              "tracking_number,deadline (every column required, a deadline may be "
                                              "empty); optional case_cause,case_number,documents,remarks; "
                                              "other columns are ignored with a warning. UTF-8 or "
                                              "GB18030/GBK (Excel). Bad rows are reported by line; "
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
    verify = actions.add_parser("verify", help="say whether a file is, byte for byte, a receipt on record, "
                                               "or whether a receipt's QR content is",
                                description="FILE: recompute its SHA-256, look it up among the issued receipts and "
                                            "check its QR claim (receipt number, screenshot SHA-256) against the "
                                            "record. --qr TEXT: check what a phone read from the receipt's QR code "
                                            "(receipt number, timeline screenshot SHA-256, SHA-256 of the form's "
                                            "rows) against the record and the issued file. Exit 0 when it matches, "
                                            "1 when it does not or the file is missing.")
    verify.add_argument("file", type=Path, nargs="?")
    verify.add_argument("--qr", metavar="TEXT", help="the text of a receipt's QR code, instead of FILE")
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
    simulator.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default 127.0.0.1; 0.0.0.0 in a container other "
                                "containers reach by SIMULATOR_HOST)")


def run_simulator(args) -> int:
    import signal
    import threading

    from app.core.config import get_settings
    from app.services.carriers.simulator import CarrierSimulator, SimulatorServer

    settings = get_settings()
    simulator = CarrierSimulator(*SIMULATOR_ACCOUNT, error_rate=settings.simulator_error_rate,
                                 rate_limit=settings.simulator_rate_limit, pace=settings.simulator_pace)
    server = SimulatorServer(simulator,
                             port=args.port or settings.simulator_port,
                             latency=settings.simulator_latency_ms / 1000, host=args.host).start()
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
            fields = {name: getattr(args, name) for name in (*deliveries.CSV_HEADER, *deliveries.OPTIONAL_COLUMNS)}
            delivery = deliveries.add_delivery(session, fields)
            print(f"registered delivery {delivery.id}: {delivery.carrier} {delivery.tracking_number}")
            delivery_id = delivery.id
            session.commit()  # before a worker looks for it
            print(request_first_polls(delivery_id))
            return 0
        if args.action == "import":
            if not args.file.is_file():
                raise deliveries.DeliveryInputError(f"no such file: {args.file}")
            report = deliveries.import_csv(session, args.file)
            for warning in report.warnings:
                print(f"warning: {args.file.name}: {warning}", file=sys.stderr)
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


def request_first_polls(delivery_id: int) -> str:
    """Ask the running service to poll a just-registered delivery now (and, at the demo pace, until it is
    signed) rather than at the next scheduled run; what was asked, for the operator."""
    from app.core.config import get_settings
    from app.manager.inspect import probe_broker
    from app.services.carriers.simulator import DEMO_POLL_DELAYS

    settings = get_settings()
    if not probe_broker(settings).ok:
        return "the service is not running: update-tracking-status polls it once it is"
    import app.tasks.celery_app  # noqa: F401 - sets Django up, which the task modules need first
    from app.tasks.tracking_tasks import send_polls

    delays = DEMO_POLL_DELAYS if settings.demo_pace else (0,)
    send_polls(delivery_id, delays)
    if settings.demo_pace:
        return (f"polling it now and {len(delays) - 1} times within {delays[-1]} s (SIMULATOR_PACE=demo): "
                f"python -m app deliveries show {delivery_id}")
    return "polling it now"


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
    from app.services.errors import PermanentError
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
            if (args.file is None) == (args.qr is None):
                raise PermanentError("give either FILE or --qr TEXT")
            result = (receipt.verify_qr(session, files_root, args.qr) if args.qr is not None
                      else receipt.verify_receipt(session, files_root, args.file))
            print(f"{'OK' if result.ok else 'MISMATCH'}: {result.message}")
            return 0 if result.ok else 1
        details = receipt.receipt_details(session, files_root, args.id)
    if args.json:
        print(json.dumps(details, ensure_ascii=False, indent=2))
        return 0
    for detail in details:
        print("\n".join(f"{key:<18} {value}" for key, value in detail.items() if key != "path"), end="\n\n")
    return 0


def _backups_parser(commands) -> None:
    backups = commands.add_parser("backups", help="list the database backups, restore one",
                                  description="The backups the backup-database job writes under BACKUPS_DIR.")
    actions = backups.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every backup, newest first: size, age, what rotation keeps it for",
                                 description="'kept for' names the periods (daily, weekly, monthly) that keep a "
                                             "backup at the next rotation; '-' means the next rotation deletes it.")
    listing.add_argument("--json", action="store_true")
    restore = actions.add_parser("restore", help="replace the database with a backup (stop the services first)",
                                 description="Verify the backup, ask for confirmation, then replace the database "
                                             "(DATABASE_URL, or --target-url) with it. Stop the services first: "
                                             "celery_beat_manager.py stop --service all.")
    restore.add_argument("file", type=Path, metavar="FILE", help="a backup file, or the name of one in BACKUPS_DIR")
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore.add_argument("--target-url", metavar="URL", help="restore into this database instead of DATABASE_URL")


def run_backups(args) -> int:
    from app.core.config import get_settings
    from app.services import backups
    from app.services.errors import PermanentError

    settings = get_settings()
    if args.action == "list":
        return print_backups(backups.list_backups(settings), args.json, settings.backups_path)
    target = backups.restore_target(settings, args.target_url).render_as_string(hide_password=True)
    if not args.yes and not confirm(f"Replace everything in {target} with {args.file}? "
                                    "The services must be stopped.", PermanentError):
        print("nothing changed")
        return 1
    restored = backups.restore_backup(settings, args.file, args.target_url)
    print(f"restored {Path(restored['file']).name} into {restored['target']} in {restored['seconds']:.1f} s")
    return 0


def print_backups(found: list[dict], as_json: bool, folder: Path) -> int:
    from datetime import datetime

    from app.manager.output import human_bytes, human_duration

    if as_json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print(f"no backups in {folder}")
        return 0
    now = datetime.now().astimezone()
    print(table(["name", "size", "age", "kept for"],
                [[backup["name"], human_bytes(backup["size"]),
                  human_duration((now - datetime.fromisoformat(backup["taken_at"])).total_seconds()),
                  ", ".join(backup["kept_for"]) or "-"] for backup in found]))
    return 0




def _reports_parser(commands) -> None:
    reports = commands.add_parser("reports", help="generate and show the daily, weekly and monthly delivery reports",
                                  description="Periods are Asia/Shanghai days, Monday-Sunday weeks and calendar "
                                              "months. Each report is a row plus an HTML page with charts and a "
                                              "CSV under REPORTS_DIR (default var/reports/<kind>/<first day>).")
    actions = reports.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="a stored report's numbers and the paths of its HTML and CSV files",
                              description="Exit 1 when the period has no report (generate makes one).")
    generate = actions.add_parser("generate", help="compute a period's report now, in this process",
                                  description="Writes the HTML and CSV and stores the row; a period run again "
                                              "replaces its earlier report.")
    for action in (show, generate):
        action.add_argument("kind", choices=("daily", "weekly", "monthly"), metavar="KIND",
                            help="daily, weekly or monthly")
        action.add_argument("date", nargs="?", metavar="DATE",
                            help="any day inside the period, e.g. 2026-11-28 (default: the period just ended)")
    show.add_argument("--json", action="store_true")


def run_reports(args) -> int:
    from app.core.config import get_settings
    from app.core.database import SessionFactory, engine, session_scope
    from app.core.migrations import upgrade_app_schema
    from app.services import reports
    from app.services.errors import PermanentError

    reports_root = get_settings().reports_path
    upgrade_app_schema(engine.sa_engine)
    day = reports.parse_day(args.date) if args.date else reports.last_ended_period(args.kind)[0]
    if args.action == "generate":
        summary = reports.generate_report(SessionFactory, reports_root, args.kind, day)
        print(f"{'replaced' if summary['replaced'] else 'wrote'} the {args.kind} report of {summary['period_start']}: "
              f"{reports_root / summary['html_path']}, {reports_root / summary['csv_path']}")
        return 0
    with session_scope() as session:
        details = reports.report_details(session, reports_root, args.kind, day)
    if details is None:
        raise PermanentError(f"no {args.kind} report for {day.isoformat()}")
    return print_report(details, args.json)


def print_report(details: dict, as_json: bool) -> int:
    from app.services.reports.render import overview_rows

    if as_json:
        print(json.dumps(details, ensure_ascii=False, indent=2))
        return 0
    numbers = details["numbers"]
    print(f"{details['kind']} report from {details['period_start']} to {details['period_end']} (exclusive), "
          f"generated {details['generated_at']}\nhtml  {details['html_path']}\ncsv   {details['csv_path']}\n")
    print(table(["figure", "value", "basis 口径"],
                [[key, _dash(value), basis] for key, value, basis in overview_rows(numbers)]), end="\n\n")
    print(table(["carrier", "created", "delivered", "median hours"],
                [[c["carrier"], c["created"], c["delivered"], _dash(c["median_hours"])] for c in numbers["carriers"]])
          or "no deliveries", end="\n\n")
    print(table(["job", "runs", "failures", "longest s"],
                [[j["name"], j["runs"], j["failures"], _dash(j["longest_seconds"])] for j in numbers["jobs"]])
          or "no job runs")
    return 0


def _dash(value):
    return "-" if value is None else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _deliveries_parser(commands)
    _receipts_parser(commands)
    _simulator_parser(commands)
    _backups_parser(commands)
    _reports_parser(commands)
    args = parser.parse_args(argv)
    from app.services.errors import PermanentError

    try:
        load_settings()
        runners = {"deliveries": run_deliveries, "receipts": run_receipts, "simulator": run_simulator,
                   "backups": run_backups, "reports": run_reports}
        return runners[args.command](args)
    except (ConfigError, PermanentError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
