"""Report tasks through a real worker on the embedded default, and `python -m app reports` as operators run it."""

import json
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, select

from app.core.database import session_scope
from app.models import Delivery, Report, TrackingEvent
from tests.support.app_cli import run_app
from tests.test_receipt_tasks import task_result_line

SHANGHAI = ZoneInfo("Asia/Shanghai")
RESULT_TIMEOUT = 60
# A day no other test writes deliveries on (they use the current time).
REPORT_DAY = "2020-02-29"


@pytest.fixture
def leap_day_deliveries(django_db, settings):
    """Two deliveries created on REPORT_DAY in Shanghai, both collected 4 hours before, one delivered 20 hours
    after; removed with the report afterwards."""
    created = datetime(2020, 2, 29, 0, 30, tzinfo=SHANGHAI).astimezone(timezone.utc)
    rows = [Delivery(reference=f"REPORT-{n}", recipient_name="张三", phone="13800138000", address="北京市",
                     carrier="ems", tracking_number=f"RPT{n:09d}", status=status, created_at=created,
                     updated_at=created, delivered_at=created + timedelta(hours=20) if status == "delivered" else None,
                     events=[TrackingEvent(occurred_at=created - timedelta(hours=4), description="【北京市】已揽收",
                                           carrier_status="揽收", fingerprint="collected")])
            for n, status in enumerate(("delivered", "in_transit"))]
    with session_scope() as session:
        session.add_all(rows)
    yield
    with session_scope() as session:
        session.execute(delete(TrackingEvent).where(TrackingEvent.delivery_id.in_([row.id for row in rows])))
        session.execute(delete(Delivery).where(Delivery.id.in_([row.id for row in rows])))
        session.execute(delete(Report).where(Report.kind == "daily", Report.period_start == date(2020, 2, 29)))
    for suffix in ("html", "csv"):
        (settings.reports_path / "daily" / f"{REPORT_DAY}.{suffix}").unlink(missing_ok=True)


def test_daily_task_writes_the_report_of_the_given_day(worker, celery_app, leap_day_deliveries, settings):
    result = celery_app.send_task("app.tasks.report_tasks.generate_daily_report", args=[REPORT_DAY])
    summary = result.get(timeout=RESULT_TIMEOUT)

    assert (summary["period_start"], summary["period_end"]) == (REPORT_DAY, "2020-03-01")
    assert (summary["created"], summary["delivered"]) == (2, 1)
    assert (settings.reports_path / summary["html_path"]).read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert (settings.reports_path / summary["csv_path"]).is_file()
    with session_scope() as session:
        report = session.scalars(select(Report).where(Report.kind == "daily")
                                 .where(Report.period_start == date(2020, 2, 29))).one()
        # From the collection, 4 hours before registration, to the signing.
        assert report.data["time_to_delivery_hours"] == {"median": 24.0, "p90": 24.0}
    assert task_result_line(settings, result.id)["queue"] == "low_priority"


def test_a_malformed_day_fails_without_retrying(worker, celery_app, settings):
    result = celery_app.send_task("app.tasks.report_tasks.generate_weekly_report", args=["next tuesday"])
    with pytest.raises(Exception, match="not a date"):
        result.get(timeout=RESULT_TIMEOUT)
    assert task_result_line(settings, result.id)["retries"] == 0


def test_reports_generate_then_show(tmp_path):
    added = run_app(tmp_path / "var", "deliveries", "add", "--reference", "CASE-1", "--recipient-name", "张三", "--phone",
                "13800138000", "--address", "北京市", "--carrier", "ems", "--tracking-number", "EM123456789CN")
    assert added.returncode == 0, added.stderr
    today = datetime.now(SHANGHAI).date().isoformat()

    missing = run_app(tmp_path / "var", "reports", "show", "daily", today)
    assert missing.returncode == 1 and missing.stderr.strip() == f"error: no daily report for {today}"

    generated = run_app(tmp_path / "var", "reports", "generate", "monthly", today)
    html = tmp_path / "var" / "reports" / "monthly" / f"{today[:8]}01.html"
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith(f"wrote the monthly report of {today[:8]}01: {html}")

    shown = json.loads(run_app(tmp_path / "var", "reports", "show", "monthly", today, "--json").stdout)
    assert shown["html_path"] == str(html) and shown["numbers"]["deliveries"]["created"] == 1
    assert shown["numbers"]["carriers"][0]["carrier"] == "ems"
    text = run_app(tmp_path / "var", "reports", "show", "monthly", today)
    assert text.returncode == 0 and f"html  {html}" in text.stdout and "ems" in text.stdout
    assert "receipts_issued_signed_earlier" in text.stdout and "collection to signing" in text.stdout, \
        "every figure shown with its basis"
    again = run_app(tmp_path / "var", "reports", "generate", "monthly", today)
    assert again.stdout.startswith("replaced the monthly report")


def test_reports_show_defaults_to_the_period_just_ended(tmp_path):
    shown = run_app(tmp_path / "var", "reports", "show", "weekly")
    today = datetime.now(SHANGHAI).date()
    last_monday = today - timedelta(days=today.weekday() + 7)
    assert shown.returncode == 1 and shown.stderr.strip() == f"error: no weekly report for {last_monday}"

    assert run_app(tmp_path / "var", "reports", "generate", "weekly").returncode == 0
    assert json.loads(run_app(tmp_path / "var", "reports", "show", "weekly", "--json").stdout)["period_start"] == str(last_monday)


def test_reports_reject_a_bad_date_and_kind(tmp_path):
    bad_date = run_app(tmp_path / "var", "reports", "show", "daily", "28/11/2026")
    assert bad_date.returncode == 1 and "not a date (expected YYYY-MM-DD): '28/11/2026'" in bad_date.stderr
    assert run_app(tmp_path / "var", "reports", "show", "yearly").returncode == 2


def test_help_for_every_reports_action(tmp_path):
    for action in ("show", "generate"):
        helped = run_app(tmp_path / "var", "reports", action, "--help")
        assert helped.returncode == 0 and "any day inside the period" in helped.stdout
