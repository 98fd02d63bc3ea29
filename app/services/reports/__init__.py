"""Daily, weekly and monthly delivery reports: SQL aggregates, an HTML page with charts, a CSV."""

from app.services.reports.numbers import report_numbers
from app.services.reports.service import (
    KINDS,
    generate_report,
    last_ended_period,
    parse_day,
    period_bounds,
    report_details,
)

__all__ = ["KINDS", "generate_report", "last_ended_period", "parse_day", "period_bounds", "report_details",
           "report_numbers"]
