"""Delivery reports: the daily, weekly and monthly jobs, each for the period just ended by default."""

from app.core.config import get_settings
from app.core.database import SessionFactory
from app.services.reports import generate_report, parse_day
from app.tasks.celery_app import app
from app.tasks.policies import DEFAULT_POLICY


def _generate(kind: str, day: str | None) -> dict:
    period_day = parse_day(day) if day else None
    return generate_report(SessionFactory, get_settings().reports_path, kind, period_day)


@app.task(**DEFAULT_POLICY)
def generate_daily_report(day: str | None = None) -> dict:
    """The report of `day` (ISO date), by default yesterday in Asia/Shanghai; replaces an earlier one."""
    return _generate("daily", day)


@app.task(**DEFAULT_POLICY)
def generate_weekly_report(day: str | None = None) -> dict:
    """The report of the Monday–Sunday week containing `day`, by default last week; replaces an earlier one."""
    return _generate("weekly", day)


@app.task(**DEFAULT_POLICY)
def generate_monthly_report(day: str | None = None) -> dict:
    """The report of the month containing `day`, by default last month; replaces an earlier one."""
    return _generate("monthly", day)
