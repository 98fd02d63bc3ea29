"""reports: generate and show the daily, weekly and monthly delivery reports."""

import click

from app.cli.base import EXIT_OK, CliError, OrderedGroup, ensure_schema, settings
from app.cli.output import echo_json, human_time, table

KINDS = click.Choice(["daily", "weekly", "monthly"])


@click.group(cls=OrderedGroup, help="报表 / the daily, weekly and monthly delivery reports.", epilog=(
    "Periods are Asia/Shanghai days, Monday-Sunday weeks and calendar months. Each report is a row plus an "
    "HTML page with charts and a CSV under REPORTS_DIR (default var/reports/<kind>/<first day>)."))
def reports() -> None:
    """The reports group."""


def _period(kind: str, date: str | None):
    from app.services import reports as service

    return service.parse_day(date) if date else service.last_ended_period(kind)[0]


DATE_HELP = "any day inside the period, e.g. 2026-11-28 (default: the period just ended)"


@reports.command("show", help="A stored report's numbers and the paths of its HTML and CSV files.",
                 epilog="KIND: daily, weekly or monthly. DATE: " + DATE_HELP + ". Exit 1 when the period has no "
                        "report ('generate' makes one).")
@click.argument("kind", type=KINDS)
@click.argument("date", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def show(kind: str, date: str | None, as_json: bool) -> int:
    from app.core.database import session_scope
    from app.services import reports as service

    ensure_schema()
    day = _period(kind, date)
    with session_scope() as session:
        details = service.report_details(session, settings().reports_path, kind, day)
    if details is None:
        raise CliError(f"no {kind} report for {day.isoformat()}")
    if as_json:
        echo_json(details)
    else:
        _print_report(details)
    return EXIT_OK


def _print_report(details: dict) -> None:
    from app.services.reports.render import overview_rows

    numbers = details["numbers"]
    click.echo(f"{details['kind']} report from {details['period_start']} to {details['period_end']} (exclusive), "
               f"generated {human_time(details['generated_at'])}\nhtml  {details['html_path']}\n"
               f"csv   {details['csv_path']}\n")
    click.echo(table(["figure", "value", "basis 口径"],
                     [[key, _dash(value), basis] for key, value, basis in overview_rows(numbers)]) + "\n")
    click.echo((table(["carrier", "created", "delivered", "median hours"],
                      [[c["carrier"], c["created"], c["delivered"], _dash(c["median_hours"])]
                       for c in numbers["carriers"]]) or "no deliveries") + "\n")
    click.echo(table(["job", "runs", "failures", "longest s"],
                     [[j["name"], j["runs"], j["failures"], _dash(j["longest_seconds"])] for j in numbers["jobs"]])
               or "no job runs")


def _dash(value):
    return "-" if value is None else value


@reports.command("generate", help="Compute a period's report now, in this process.",
                 epilog="KIND: daily, weekly or monthly. DATE: " + DATE_HELP + ". Writes the HTML and CSV and "
                        "stores the row; a period run again replaces its earlier report.")
@click.argument("kind", type=KINDS)
@click.argument("date", required=False)
def generate(kind: str, date: str | None) -> int:
    from app.core.database import SessionFactory
    from app.services import reports as service

    ensure_schema()
    reports_root = settings().reports_path
    summary = service.generate_report(SessionFactory, reports_root, kind, _period(kind, date))
    click.echo(f"{'replaced' if summary['replaced'] else 'wrote'} the {kind} report of {summary['period_start']}: "
               f"{reports_root / summary['html_path']}, {reports_root / summary['csv_path']}")
    return EXIT_OK


COMMANDS = [reports]
