"""Generating a period's report (numbers, HTML, CSV, its row) and reading it back."""

import logging
import os
import uuid
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import TIMEZONE
from app.core.database import session_scope
from app.models import Report
from app.models.base import utcnow
from app.services.errors import PermanentError
from app.services.reports.numbers import report_numbers
from app.services.reports.render import render_csv, render_html

log = logging.getLogger(__name__)

SHANGHAI = ZoneInfo(TIMEZONE)
KINDS = ("daily", "weekly", "monthly")


def parse_day(text: str) -> date:
    """An ISO date (2026-11-28); anything else is bad input, not worth a retry."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise PermanentError(f"not a date (expected YYYY-MM-DD): {text!r}") from None


def period_bounds(kind: str, day: date) -> tuple[date, date]:
    """The period of `kind` containing `day`: its first day and the day after its last (Mon–Sun weeks)."""
    if kind == "daily":
        return day, day + timedelta(days=1)
    if kind == "weekly":
        monday = day - timedelta(days=day.weekday())
        return monday, monday + timedelta(days=7)
    if kind == "monthly":
        first = day.replace(day=1)
        return first, (first + timedelta(days=32)).replace(day=1)
    raise PermanentError(f"unknown report kind {kind!r}; expected one of {', '.join(KINDS)}")


def last_ended_period(kind: str, now: datetime | None = None) -> tuple[date, date]:
    """The period of `kind` that ended last before `now`, in Asia/Shanghai days."""
    today = (now or utcnow()).astimezone(SHANGHAI).date()
    current_start, _ = period_bounds(kind, today)
    return period_bounds(kind, current_start - timedelta(days=1))


def shanghai_midnight_utc(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=SHANGHAI).astimezone(timezone.utc)


def generate_report(factory: sessionmaker, reports_root: Path, kind: str, period_start: date | None = None,
                    now: datetime | None = None) -> dict:
    """Compute the report of the period containing `period_start` (default: the one just ended), write its
    HTML and CSV, and store its row, replacing any earlier report of that period."""
    # 1. The period, in Shanghai days and as UTC bounds.
    start, end = period_bounds(kind, period_start) if period_start else last_ended_period(kind, now)
    generated_at = now or utcnow()
    with session_scope(factory) as session:
        # 2. The numbers, by SQL aggregates.
        numbers = report_numbers(session, shanghai_midnight_utc(start), shanghai_midnight_utc(end))
        # 3. The files, each written under a temporary name and renamed when complete.
        html_path, csv_path = f"{kind}/{start.isoformat()}.html", f"{kind}/{start.isoformat()}.csv"
        write_atomically(reports_root / html_path, render_html(kind, start, end, generated_at, numbers), "utf-8")
        # utf-8-sig: Excel, where managers open CSV files, reads UTF-8 only with the byte order mark.
        write_atomically(reports_root / csv_path, render_csv(kind, start, end, numbers), "utf-8-sig")
        # 4. The row: one per (kind, period_start), updated in place when the period is run again.
        replaced = _upsert_report(session, {"kind": kind, "period_start": start, "period_end": end,
                                            "generated_at": generated_at, "data": numbers,
                                            "html_path": html_path, "csv_path": csv_path})
    log.info("%s report %s written to %s (%s)", kind, start, reports_root / html_path,
             "replaced" if replaced else "new")
    return {"kind": kind, "period_start": start.isoformat(), "period_end": end.isoformat(), "replaced": replaced,
            "html_path": html_path, "csv_path": csv_path, **numbers["deliveries"]}


def write_atomically(path: Path, content: str, encoding: str) -> None:
    """Write `content` to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_text(content, encoding=encoding)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _upsert_report(session: Session, values: dict) -> bool:
    """Insert the report's row or update the existing one of its period; whether one existed."""
    existing = session.scalar(select(Report.id).where(Report.kind == values["kind"],
                                                      Report.period_start == values["period_start"]))
    dialect_insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = dialect_insert(Report).values(**values)
    session.execute(statement.on_conflict_do_update(
        index_elements=["kind", "period_start"],
        set_={key: statement.excluded[key] for key in values if key not in ("kind", "period_start")}))
    return existing is not None


def report_details(session: Session, reports_root: Path, kind: str, day: date) -> dict | None:
    """The stored report of the period of `kind` containing `day`, with absolute file paths; None if missing."""
    start, _ = period_bounds(kind, day)
    report = session.scalar(select(Report).where(Report.kind == kind, Report.period_start == start))
    if report is None:
        return None
    return {"kind": report.kind, "period_start": report.period_start.isoformat(),
            "period_end": report.period_end.isoformat(), "generated_at": report.generated_at.isoformat(),
            "html_path": str(reports_root / report.html_path), "csv_path": str(reports_root / report.csv_path),
            "numbers": report.data}
