"""Reports on SQLite and PostgreSQL: every number against one computed here in plain Python from the seed."""

import csv
import random
import re
import statistics
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from app.models import Delivery, DeliveryFile, JobRun, Report, TrackingEvent
from app.services.reports import generate_report, last_ended_period, period_bounds, report_details

SHANGHAI = ZoneInfo("Asia/Shanghai")
CARRIERS = ("ems", "sf", "yto")
SKIPPED = ("skipped_overlap", "skipped_missed")
UNFINISHED = ("sending", "sent", "running")
JOB_KEYS = ("runs", "skipped", "failures", "longest_seconds", "max_lateness_seconds", "mean_lateness_seconds")
BUCKET_HOURS = (("<24h", 0, 24), ("1-2d", 24, 48), ("2-3d", 48, 72), ("3-5d", 72, 120), ("5-7d", 120, 168),
                (">7d", 168, float("inf")))


def shanghai(*fields) -> datetime:
    """A Shanghai wall-clock time, as the UTC datetime the database stores."""
    return datetime(*fields, tzinfo=SHANGHAI).astimezone(timezone.utc)


def delivery(n: int, carrier: str, status: str, created: datetime, delivered: datetime | None = None,
             updated: datetime | None = None, collected: datetime | None = None, events: list | None = None) -> dict:
    """A delivery row; `collected` adds a collection event (揽收), `events` any others as (time, text, status)."""
    if collected is not None:
        events = [(collected, "【北京市】已揽收", "揽收")] + (events or [])
    if delivered is not None and events:
        events = events + [(delivered, "已签收，签收人：本人", "签收")]
    return {"reference": f"CASE-{n}", "recipient_name": "张三", "phone": "13800138000", "address": "北京市朝阳区",
            "carrier": carrier, "tracking_number": f"T{n:08d}", "status": status, "created_at": created,
            "delivered_at": delivered, "updated_at": updated or delivered or created, "collected_at": collected,
            "events": events or []}


def delivery_model(row: dict) -> Delivery:
    """The Delivery of a seed row, with its tracking events."""
    columns = {key: value for key, value in row.items() if key not in ("collected_at", "events")}
    events = [TrackingEvent(occurred_at=when, description=text, carrier_status=status, fingerprint=f"{i}")
              for i, (when, text, status) in enumerate(row["events"])]
    return Delivery(**columns, events=events)


def edge_deliveries() -> list[dict]:
    """Times at Shanghai midnights and bucket bounds, where a UTC day or an off-by-one would show."""
    return [
        delivery(9001, "ems", "pending", shanghai(2026, 10, 31, 23, 59, 59)),  # October in Shanghai, not November
        delivery(9002, "ems", "delivered", shanghai(2026, 11, 1, 0, 0, 0), shanghai(2026, 11, 2, 0, 0, 0),  # 24 h
                 collected=shanghai(2026, 11, 1, 0, 0, 0)),
        delivery(9003, "sf", "delivered", shanghai(2026, 11, 15, 7, 30), shanghai(2026, 11, 16, 0, 10),  # UTC: 14th
                 collected=shanghai(2026, 11, 15, 7, 30)),
        delivery(9004, "sf", "delivered", shanghai(2026, 11, 3, 8, 0), shanghai(2026, 11, 5, 8, 0),  # exactly 48 h
                 collected=shanghai(2026, 11, 3, 8, 0)),
        delivery(9005, "yto", "delivered", shanghai(2026, 11, 30, 23, 59, 59), shanghai(2026, 12, 1, 0, 0, 0),
                 collected=shanghai(2026, 11, 30, 23, 59, 59)),
        delivery(9006, "yto", "delivered", shanghai(2026, 10, 20, 9, 0), shanghai(2026, 11, 1, 0, 0, 30),  # 12 days
                 collected=shanghai(2026, 10, 20, 9, 0)),
        delivery(9007, "ems", "timeout", shanghai(2026, 10, 1, 9, 0), updated=shanghai(2026, 11, 1, 0, 0, 1)),
        delivery(9008, "ems", "failed", shanghai(2026, 10, 1, 9, 0), updated=shanghai(2026, 10, 31, 23, 59)),
        delivery(9009, "sf", "in_transit", shanghai(2026, 9, 1, 9, 0)),  # in transit now, whatever its period
    ]


# What the carrier's record of a signed delivery holds, by weight: see seeded_signing.
RECORDS = {"collected": 12, "collected_by_text": 3, "awaiting_then_collected": 3, "imported_after_signing": 6,
           "no_events": 2, "no_collection_event": 2, "signed_before_collection": 1}


def seeded_signing(n: int, rng: random.Random, posted: datetime) -> dict:
    """A signed delivery whose carrier record is one of RECORDS; registered here before or after its events."""
    record = rng.choices(list(RECORDS), list(RECORDS.values()))[0]
    collected = posted + timedelta(minutes=rng.randrange(0, 12 * 60))
    delivered = collected + timedelta(minutes=rng.randrange(30, 10 * 24 * 60))
    scan = (collected + (delivered - collected) / 2, "快件已到达【上海转运中心】", "在途")
    # Registered here around posting, or imported up to 20 days after signing.
    imported = delivered + timedelta(minutes=rng.randrange(20 * 24 * 60))
    created = imported if record == "imported_after_signing" else posted
    row = delivery(n, rng.choice(CARRIERS), "delivered", created, delivered, collected=collected, events=[scan])
    if record == "collected_by_text":  # EMS's wording, no status field
        row["events"][0] = (collected, "【北京市邮政速递物流】已收寄", None)
    elif record == "awaiting_then_collected":  # the earliest event is the order, not the collection
        row["events"].insert(0, (posted - timedelta(hours=5), "商家已下单，等待揽收", "在途"))
    elif record == "no_events":
        row.update(events=[], collected_at=None)
    elif record == "no_collection_event":
        row.update(events=row["events"][1:], collected_at=None)
    elif record == "signed_before_collection":
        row["events"][0] = (delivered + timedelta(hours=3), "【北京市】已揽收", "揽收")
        row["collected_at"] = delivered + timedelta(hours=3)
    return row


def seeded_deliveries() -> list[dict]:
    """A month of deliveries around November 2026, from a fixed seed, plus the edge cases."""
    rng = random.Random(6)
    rows = []
    for n in range(260):
        created = shanghai(2026, 10, 24) + timedelta(minutes=rng.randrange(45 * 24 * 60))
        status = rng.choices(["delivered", "in_transit", "out_for_delivery", "pending", "timeout", "failed"],
                             [10, 3, 1, 1, 1, 1])[0]
        if status == "delivered":
            rows.append(seeded_signing(n, rng, created))
            continue
        updated = created + timedelta(minutes=rng.randrange(24 * 60, 20 * 24 * 60))
        rows.append(delivery(n, rng.choice(CARRIERS), status, created, updated=updated))
    return rows + edge_deliveries()


def seeded_receipts() -> list[dict]:
    """Receipts around November, each of an edge delivery (by tracking number): 9006 was signed on 1 November,
    9005 on 1 December, 9002 on 2 November."""
    issued = [(shanghai(2026, 10, 31, 23, 59, 59), "T00009002"), (shanghai(2026, 11, 1), "T00009006"),
              (shanghai(2026, 11, 17, 12), "T00009002"), (shanghai(2026, 11, 30, 23, 59, 59), "T00009006"),
              (shanghai(2026, 12, 1), "T00009005"), (shanghai(2026, 12, 2), "T00009006")]
    rows = [{"kind": "receipt", "created_at": t, "receipt_number": f"R-{i}", "tracking_number": number}
            for i, (t, number) in enumerate(issued)]
    return rows + [{"kind": "screenshot", "created_at": shanghai(2026, 11, 17, 12), "receipt_number": None,
                    "tracking_number": "T00009002"}]


def seeded_job_runs() -> list[dict]:
    """Beat's history of due runs (sent, started or not, skipped) and runs sent by hand, around November."""
    def run(name, outcome, due=None, lateness=None, started=None, seconds=None, skipped_at=None, ended=None):
        """A due run is sent `lateness` seconds after it fell due, unless beat skipped it at `skipped_at`;
        a run sent by hand has no due time. `ended` is when a run that never started was found lost."""
        sent = due + timedelta(seconds=lateness) if due and outcome not in SKIPPED + ("sending",) else None
        finished = started + timedelta(seconds=seconds) if seconds is not None else skipped_at or ended
        return {"name": name, "outcome": outcome, "due_at": due, "sent_at": sent, "lateness_seconds": lateness,
                "started_at": started, "finished_at": finished}

    return [
        run("update-tracking-status", "success", shanghai(2026, 11, 1), 4.5, shanghai(2026, 11, 1, 0, 0, 5), 12.5),
        run("update-tracking-status", "failure", shanghai(2026, 11, 2, 10), 0.25, shanghai(2026, 11, 2, 10, 0, 1), 95),
        run("update-tracking-status", "running", shanghai(2026, 11, 20, 10), 1, shanghai(2026, 11, 20, 10, 0, 2)),
        # Due while the run above was still running.
        run("update-tracking-status", "skipped_overlap", shanghai(2026, 11, 20, 10, 5), 0.3,
            skipped_at=shanghai(2026, 11, 20, 10, 5, 0, 300000)),
        # Missed while beat was down for five hours: its lateness is no run's lateness.
        run("update-tracking-status", "skipped_missed", shanghai(2026, 11, 15, 9), 18000,
            skipped_at=shanghai(2026, 11, 15, 14)),
        run("update-tracking-status", "success", started=shanghai(2026, 11, 15, 14, 0, 30), seconds=20),  # by hand
        # Sent, not started yet: neither a failure nor a runtime.
        run("update-tracking-status", "sent", shanghai(2026, 11, 29, 23, 55), 1.5),
        run("update-tracking-status", "failure", shanghai(2026, 10, 31, 23, 50), 2,
            shanghai(2026, 10, 31, 23, 50, 3), 4000),  # October, though it ended in November
        run("update-tracking-status", "success", shanghai(2026, 10, 31, 23, 59, 59, 500000), 0.7,
            shanghai(2026, 11, 1, 0, 0, 1), 10),  # due in October, started in November
        run("update-tracking-status", "failure", shanghai(2026, 11, 30, 23, 59, 59, 900000), 0.3,
            shanghai(2026, 12, 1, 0, 0, 0, 500000), 30),  # due in November, started in December
        run("cleanup-logs", "success", shanghai(2026, 11, 8, 3, 30), 0.8, shanghai(2026, 11, 8, 3, 30, 1), 3.25),
        # Sent and never started; found lost an hour later.
        run("cleanup-logs", "lost", shanghai(2026, 11, 15, 3, 30), 0.5, ended=shanghai(2026, 11, 15, 4, 30)),
        run("cleanup-logs", "skipped_missed", shanghai(2026, 11, 22, 3, 30), 19800,
            skipped_at=shanghai(2026, 11, 22, 9)),
        run("cleanup-logs", "success", started=shanghai(2026, 10, 31, 23, 59, 50), seconds=30),  # by hand, October
        run("cleanup-logs", "success", started=shanghai(2026, 11, 30, 23, 59, 59), seconds=2),  # by hand
        run("archive-old-data", "running", shanghai(2026, 11, 30, 23, 59), 0.4, shanghai(2026, 11, 30, 23, 59, 1)),
        # Recorded by beat, not yet known to be published.
        run("archive-old-data", "sending", shanghai(2026, 11, 29, 2), 0.1),
        # Nothing but a skip in its week.
        run("backup-database", "skipped_overlap", shanghai(2026, 11, 26, 2), 0.5,
            skipped_at=shanghai(2026, 11, 26, 2, 0, 0, 500000)),
    ]


def seed(factory) -> dict:
    """Insert the seed; the plain-Python rows it was made from."""
    seeded = {"deliveries": seeded_deliveries(), "receipts": seeded_receipts(), "job_runs": seeded_job_runs()}
    with factory.begin() as session:
        session.add_all(delivery_model(row) for row in seeded["deliveries"])
        session.flush()
        ids = dict(session.execute(select(Delivery.tracking_number, Delivery.id)).all())
        session.add_all(DeliveryFile(delivery_id=ids[row["tracking_number"]], path=f"x/{i}", sha256=f"{i:064d}",
                                     size=1, content_type="application/pdf", kind=row["kind"],
                                     created_at=row["created_at"], receipt_number=row["receipt_number"])
                        for i, row in enumerate(seeded["receipts"]))
        session.add_all(JobRun(**row) for row in seeded["job_runs"])
    return seeded


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between the closest ranks (statistics' 'inclusive' method, as percentile_cont)."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def expected_numbers(seeded: dict, first_day: date, end_day: date) -> dict:
    """The report's numbers for [first_day, end_day) in Shanghai, computed row by row in Python."""
    start = datetime.combine(first_day, datetime.min.time(), SHANGHAI)
    end = datetime.combine(end_day, datetime.min.time(), SHANGHAI)

    def within(moment):
        return moment is not None and start <= moment < end

    def hours(row):
        return (row["delivered_at"] - row["collected_at"]).total_seconds() / 3600

    def measured(row):
        return row["collected_at"] is not None and row["collected_at"] <= row["delivered_at"]

    rows = seeded["deliveries"]
    by_number = {r["tracking_number"]: r for r in rows}
    created = [r for r in rows if within(r["created_at"])]
    delivered = [r for r in rows if within(r["delivered_at"])]
    timed = [r for r in delivered if measured(r)]
    durations = sorted(hours(r) for r in timed)
    receipts = [r for r in seeded["receipts"] if r["kind"] == "receipt" and within(r["created_at"])]
    carriers = sorted({r["carrier"] for r in created + delivered})
    days = [first_day + timedelta(days=n) for n in range((end_day - first_day).days)]
    # A run belongs to the period it fell due in; a run sent by hand to the one it started in.
    job_runs = [r for r in seeded["job_runs"] if within(r["due_at"] or r["started_at"])]

    def shanghai_day(moment):
        return moment.astimezone(SHANGHAI).date()

    def job(name):
        rows = [r for r in job_runs if r["name"] == name]
        ran = [r for r in rows if r["outcome"] not in SKIPPED]
        lateness = [r["lateness_seconds"] for r in ran if r["lateness_seconds"] is not None]
        return {"name": name, "runs": len(ran), "skipped": len(rows) - len(ran),
                "failures": sum(r["outcome"] not in ("success", *UNFINISHED) for r in ran),
                "longest_seconds": max(((r["finished_at"] - r["started_at"]).total_seconds() for r in ran
                                        if r["started_at"] and r["finished_at"]), default=None),
                "max_lateness_seconds": max(lateness, default=None),
                "mean_lateness_seconds": statistics.mean(lateness) if lateness else None}

    return {
        "deliveries": {
            "created": len(created),
            "delivered": len(delivered),
            "delivered_no_collection_event": sum(r["collected_at"] is None for r in delivered),
            "delivered_signed_before_collection": sum(r["collected_at"] is not None and not measured(r)
                                                      for r in delivered),
            "in_transit": sum(r["status"] in ("in_transit", "out_for_delivery") for r in rows),
            "timed_out": sum(r["status"] == "timeout" and within(r["updated_at"]) for r in rows),
            "failed": sum(r["status"] == "failed" and within(r["updated_at"]) for r in rows),
        },
        "time_to_delivery_hours": {"median": percentile(durations, 0.5), "p90": percentile(durations, 0.9)},
        "time_to_delivery_buckets": [{"bucket": label, "count": sum(low <= h < high for h in durations)}
                                     for label, low, high in BUCKET_HOURS],
        "carriers": [{"carrier": c, "created": sum(r["carrier"] == c for r in created),
                      "delivered": sum(r["carrier"] == c for r in delivered),
                      "measured": sum(r["carrier"] == c for r in timed),
                      "median_hours": percentile(sorted(hours(r) for r in timed if r["carrier"] == c), 0.5)}
                     for c in carriers],
        "receipts_issued": len(receipts),
        "receipts_issued_signed_earlier": sum(by_number[r["tracking_number"]]["delivered_at"] < start
                                              for r in receipts),
        "jobs": [job(name) for name in sorted({r["name"] for r in job_runs})],
        "per_day": [{"day": day.isoformat(),
                     "created": sum(shanghai_day(r["created_at"]) == day for r in created),
                     "delivered": sum(shanghai_day(r["delivered_at"]) == day for r in delivered)} for day in days],
    }


def approximately(tree):
    """`tree` with every float compared to within the report's rounding (3 decimals)."""
    if isinstance(tree, dict):
        return {key: approximately(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [approximately(value) for value in tree]
    return pytest.approx(tree, abs=1e-3) if isinstance(tree, float) else tree


def stored_report(factory, kind: str, first_day: date) -> Report:
    with factory() as session:
        return session.scalars(select(Report).where(Report.kind == kind, Report.period_start == first_day)).one()


def test_monthly_numbers_equal_the_ones_computed_from_the_seed(factory, tmp_path):
    seeded = seed(factory)
    summary = generate_report(factory, tmp_path, "monthly", date(2026, 11, 18))

    expected = expected_numbers(seeded, date(2026, 11, 1), date(2026, 12, 1))
    assert stored_report(factory, "monthly", date(2026, 11, 1)).data == approximately(expected)
    assert (summary["period_start"], summary["period_end"]) == ("2026-11-01", "2026-12-01")
    assert summary["created"] == expected["deliveries"]["created"] and not summary["replaced"]


@pytest.mark.parametrize(("kind", "day", "first_day", "end_day"), [
    ("daily", date(2026, 11, 15), date(2026, 11, 15), date(2026, 11, 16)),
    ("daily", date(2026, 11, 1), date(2026, 11, 1), date(2026, 11, 2)),
    ("daily", date(2026, 11, 17), date(2026, 11, 17), date(2026, 11, 18)),  # a receipt of a delivery signed earlier
    ("weekly", date(2026, 11, 28), date(2026, 11, 23), date(2026, 11, 30)),
])
def test_daily_and_weekly_numbers_follow_shanghai_days(factory, tmp_path, kind, day, first_day, end_day):
    seeded = seed(factory)
    generate_report(factory, tmp_path, kind, day)

    data = stored_report(factory, kind, first_day).data
    assert data == approximately(expected_numbers(seeded, first_day, end_day))


def test_days_are_shanghai_days_and_percentiles_interpolate(factory, tmp_path):
    with factory.begin() as session:
        session.add_all(delivery_model(row) for row in edge_deliveries())
    for day in (date(2026, 10, 31), date(2026, 11, 15)):
        generate_report(factory, tmp_path, "daily", day)
    generate_report(factory, tmp_path, "monthly", date(2026, 11, 1))

    october_31 = stored_report(factory, "daily", date(2026, 10, 31)).data["deliveries"]
    november_15 = stored_report(factory, "daily", date(2026, 11, 15)).data["deliveries"]
    november = stored_report(factory, "monthly", date(2026, 11, 1)).data
    assert (october_31["created"], october_31["failed"]) == (1, 1)  # at 23:59:59 and 23:59, not the next day
    assert november_15["created"] == 1  # 07:30 in Shanghai is 23:30 on the 14th in UTC
    assert november["per_day"][0] == {"day": "2026-11-01", "created": 1, "delivered": 1}  # 00:00:00 and 00:00:30
    assert november["deliveries"]["timed_out"] == 1 and november["deliveries"]["failed"] == 0
    # Delivered in November after 16.67, 24, 48 and 279.01 hours; 9005 was delivered on 1 December.
    assert november["time_to_delivery_hours"] == {"median": 36.0, "p90": pytest.approx(48 + 0.7 * (279 + 1 / 120 - 48),
                                                                                       abs=1e-3)}
    assert [b["count"] for b in november["time_to_delivery_buckets"]] == [1, 1, 1, 0, 0, 1]


def imported_after_signing() -> list[dict]:
    """November deliveries registered here 1 to 20 days after the carrier signed for them; the earliest event of
    each is the order awaiting collection; three have no event, two a collection dated after the signing."""
    rng = random.Random(18)
    rows = []
    for n in range(45):
        collected = shanghai(2026, 11, 1) + timedelta(minutes=rng.randrange(23 * 24 * 60))
        delivered = collected + timedelta(minutes=rng.randrange(60, 6 * 24 * 60))
        registered = delivered + timedelta(minutes=rng.randrange(24 * 60, 20 * 24 * 60))
        awaiting = (collected - timedelta(hours=rng.randrange(1, 48)), "商家已下单，待揽收", None)
        rows.append(delivery(n, rng.choice(CARRIERS), "delivered", registered, delivered, collected=collected,
                             events=[awaiting]))
    for row in rows[:3]:
        row.update(events=[], collected_at=None)
    for row in rows[3:5]:
        row["collected_at"] = row["delivered_at"] + timedelta(hours=2)
        row["events"][0] = (row["collected_at"], "【上海市】已揽收", "揽收")
    return rows


def test_a_month_imported_after_signing_is_timed_from_the_collection_event(factory, tmp_path):
    rows = imported_after_signing()
    with factory.begin() as session:
        session.add_all(delivery_model(row) for row in rows)
    generate_report(factory, tmp_path, "monthly", date(2026, 11, 1))

    data = stored_report(factory, "monthly", date(2026, 11, 1)).data
    timed = rows[5:]
    hours = {r["tracking_number"]: (r["delivered_at"] - r["collected_at"]).total_seconds() / 3600 for r in timed}
    assert all(r["created_at"] > r["delivered_at"] for r in rows), "registered after signing: created_at is no start"
    assert data["deliveries"]["delivered"] == 45
    assert (data["deliveries"]["delivered_no_collection_event"],
            data["deliveries"]["delivered_signed_before_collection"]) == (3, 2)
    assert data["time_to_delivery_hours"] == approximately({"median": percentile(sorted(hours.values()), 0.5),
                                                            "p90": percentile(sorted(hours.values()), 0.9)})
    assert 0 < data["time_to_delivery_hours"]["median"] <= data["time_to_delivery_hours"]["p90"] < 6 * 24
    assert {c["carrier"]: [c["measured"], c["median_hours"]] for c in data["carriers"]} == approximately({
        carrier: [sum(r["carrier"] == carrier for r in timed),
                  percentile(sorted(hours[r["tracking_number"]] for r in timed if r["carrier"] == carrier), 0.5)]
        for carrier in CARRIERS})
    assert [b["count"] for b in data["time_to_delivery_buckets"]] == [
        sum(low <= h < high for h in hours.values()) for _, low, high in BUCKET_HOURS]


def test_every_figure_states_its_basis_in_the_html_and_the_csv(factory, tmp_path):
    seed(factory)
    generate_report(factory, tmp_path, "monthly", date(2026, 11, 1))

    rows = csv_rows(tmp_path / "monthly" / "2026-11-01.csv")
    basis = {(section, key): text for section, key, _, text in rows[1:]}
    assert all(text for (section, _), text in basis.items() if section != "period")
    duration = basis["time_to_delivery_hours", "median"]
    assert "揽收至签收，按签收时间落入本期" in duration and "collection to signing, by signing time in the period" in duration
    assert "by signing time in the period" in basis["delivered_per_day", "2026-11-05"]
    assert "by registration here" in basis["deliveries", "created"]
    assert "without a collection event" in basis["deliveries", "delivered_no_collection_event"]
    html = (tmp_path / "monthly" / "2026-11-01.html").read_text(encoding="utf-8")
    cards = re.findall(r'<div class="card">.*?</div>\n', html)
    assert len(cards) == 10 and all('<p class="basis">' in card for card in cards)
    assert "无揽收记录 No collection event" in html
    sections = re.findall(r"<h2>([^<]+)</h2>\n(.*)", html)
    assert all(following.startswith('<p class="basis">口径 basis: ') for title, following in sections
               if not title.startswith("口径说明"))


def test_receipts_issued_for_deliveries_signed_earlier_are_explained(factory, tmp_path):
    signed = shanghai(2026, 11, 10, 9)
    rows = [delivery(n, "ems", "delivered", signed - timedelta(days=2), signed, collected=signed - timedelta(days=1))
            for n in range(3)]
    with factory.begin() as session:
        models = [delivery_model(row) for row in rows]
        session.add_all(models)
        session.flush()
        session.add_all(DeliveryFile(delivery_id=model.id, kind="receipt", path=f"r/{n}", sha256=f"{n:064d}", size=1,
                                     content_type="application/pdf", receipt_number=f"R-{n}",
                                     created_at=shanghai(2026, 11, 12, 10)) for n, model in enumerate(models))
    generate_report(factory, tmp_path, "daily", date(2026, 11, 12))

    data = stored_report(factory, "daily", date(2026, 11, 12)).data
    assert data["deliveries"]["delivered"] == 0
    assert (data["receipts_issued"], data["receipts_issued_signed_earlier"]) == (3, 3)
    html = (tmp_path / "daily" / "2026-11-12.html").read_text(encoding="utf-8")
    assert "本期之前签收、本期才签发回证的有 3 份" in html and "3 of them are for deliveries signed before the period" in html
    assert "Delivered: deliveries the carrier signed for during the period, whenever they were registered here" in html
    values = {(section, key): value for section, key, value, _ in csv_rows(tmp_path / "daily" / "2026-11-12.csv")}
    assert values["receipts", "issued_signed_earlier"] == "3"


def test_running_a_period_again_replaces_its_row_and_files(factory, tmp_path):
    seed(factory)
    generate_report(factory, tmp_path, "daily", date(2026, 11, 15))
    first = stored_report(factory, "daily", date(2026, 11, 15))
    html = (tmp_path / first.html_path).read_text(encoding="utf-8")
    with factory.begin() as session:
        session.add(delivery_model(delivery(7777, "<sf&co>", "pending", shanghai(2026, 11, 15, 12))))

    summary = generate_report(factory, tmp_path, "daily", date(2026, 11, 15), now=shanghai(2026, 11, 16, 2))

    second = stored_report(factory, "daily", date(2026, 11, 15))
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Report)) == 1
    assert summary["replaced"] and second.id == first.id
    assert second.data["deliveries"]["created"] == first.data["deliveries"]["created"] + 1
    assert second.generated_at == shanghai(2026, 11, 16, 2)
    assert (tmp_path / second.html_path).read_text(encoding="utf-8") != html
    assert "&lt;sf&amp;co&gt;" in (tmp_path / second.html_path).read_text(encoding="utf-8")
    assert "<sf&co>" not in (tmp_path / second.html_path).read_text(encoding="utf-8")
    assert ["carrier:<sf&co>", "created", "1"] in [row[:3] for row in csv_rows(tmp_path / second.csv_path)]
    assert sorted(p.name for p in (tmp_path / "daily").iterdir()) == ["2026-11-15.csv", "2026-11-15.html"]


def csv_rows(path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle))


def test_csv_holds_the_same_numbers(factory, tmp_path):
    seeded = seed(factory)
    generate_report(factory, tmp_path, "monthly", date(2026, 11, 1))
    expected = expected_numbers(seeded, date(2026, 11, 1), date(2026, 12, 1))

    rows = csv_rows(tmp_path / "monthly" / "2026-11-01.csv")
    values = {(section, key): value for section, key, value, _ in rows[1:]}
    assert rows[0] == ["section", "key", "value", "basis"]
    assert values["period", "first_day"] == "2026-11-01" and values["period", "last_day"] == "2026-11-30"
    assert {key: int(values["deliveries", key]) for key in expected["deliveries"]} == expected["deliveries"]
    assert float(values["time_to_delivery_hours", "p90"]) == pytest.approx(expected["time_to_delivery_hours"]["p90"],
                                                                           abs=1e-3)
    assert [int(values["created_per_day", d["day"]]) for d in expected["per_day"]] == [
        d["created"] for d in expected["per_day"]]
    jobs = {(section, key): None if value == "" else float(value)
            for (section, key), value in values.items() if section.startswith("job:")}
    assert jobs == approximately({(f"job:{job['name']}", key): job[key]
                                  for job in expected["jobs"] for key in JOB_KEYS})
    assert values["receipts", "issued"] == str(expected["receipts_issued"])


def test_html_jobs_table_shows_skips_and_lateness(factory, tmp_path):
    seed(factory)
    generate_report(factory, tmp_path, "weekly", date(2026, 11, 26))

    html = (tmp_path / "weekly" / "2026-11-23.html").read_text(encoding="utf-8")
    assert ('<th class="n">跳过 Skipped</th><th class="n">失败 Failures</th><th>最长耗时 Longest run</th>'
            "<th>最大延迟 Max lateness</th><th>平均延迟 Mean lateness</th>") in html
    # Only skipped in that week: no run, so no lateness either.
    assert ('<tr><td>backup-database</td><td class="n">0</td><td class="n">1</td><td class="n">0</td>'
            "<td>–</td><td>–</td><td>–</td></tr>") in html
    assert '<tr><td>update-tracking-status</td><td class="n">1</td>' in html and "<td>1.5 s</td>" in html


def test_an_empty_period_has_zeros_and_no_percentiles(factory, tmp_path):
    generate_report(factory, tmp_path, "weekly", date(2026, 11, 4))

    data = stored_report(factory, "weekly", date(2026, 11, 2)).data
    assert data["deliveries"] == {"created": 0, "delivered": 0, "delivered_no_collection_event": 0,
                                  "delivered_signed_before_collection": 0, "in_transit": 0, "timed_out": 0,
                                  "failed": 0}
    assert data["time_to_delivery_hours"] == {"median": None, "p90": None}
    assert [d["day"] for d in data["per_day"]] == [f"2026-11-{n:02d}" for n in range(2, 9)]
    assert data["carriers"] == [] and data["jobs"] == []


def test_period_bounds_of_each_kind():
    assert period_bounds("daily", date(2026, 12, 31)) == (date(2026, 12, 31), date(2027, 1, 1))
    assert period_bounds("weekly", date(2026, 11, 29)) == (date(2026, 11, 23), date(2026, 11, 30))  # a Sunday
    assert period_bounds("weekly", date(2026, 11, 30)) == (date(2026, 11, 30), date(2026, 12, 7))  # a Monday
    assert period_bounds("weekly", date(2026, 12, 31)) == (date(2026, 12, 28), date(2027, 1, 4))
    assert period_bounds("monthly", date(2026, 12, 31)) == (date(2026, 12, 1), date(2027, 1, 1))
    assert period_bounds("monthly", date(2028, 2, 29)) == (date(2028, 2, 1), date(2028, 3, 1))


def test_the_period_just_ended_is_counted_in_shanghai_time():
    # 2026-12-01 01:00 in Shanghai is still 2026-11-30 in UTC.
    now = shanghai(2026, 12, 1, 1, 0)
    assert last_ended_period("daily", now) == (date(2026, 11, 30), date(2026, 12, 1))
    assert last_ended_period("weekly", shanghai(2026, 11, 30, 6, 0)) == (date(2026, 11, 23), date(2026, 11, 30))
    assert last_ended_period("monthly", shanghai(2026, 12, 1, 6, 0)) == (date(2026, 11, 1), date(2026, 12, 1))
    assert last_ended_period("monthly", shanghai(2027, 1, 1, 6, 0)) == (date(2026, 12, 1), date(2027, 1, 1))


def test_default_period_is_the_one_just_ended(factory, tmp_path):
    summary = generate_report(factory, tmp_path, "daily", now=shanghai(2026, 12, 1, 2, 0))

    assert summary["period_start"] == "2026-11-30"
    with factory() as session:
        details = report_details(session, tmp_path, "daily", date(2026, 11, 30))
    assert details["html_path"] == str(tmp_path / "daily" / "2026-11-30.html")


def test_html_report_shows_both_charts_in_chromium(factory, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.support.browser import launch

    seeded = seed(factory)
    generate_report(factory, tmp_path, "monthly", date(2026, 11, 1))
    expected = expected_numbers(seeded, date(2026, 11, 1), date(2026, 12, 1))
    page_file = tmp_path / "monthly" / "2026-11-01.html"

    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page()
        requested = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(page_file.as_uri())
        charts = {chart: page.locator(f"svg#{chart}") for chart in ("chart-per-day", "chart-time-to-delivery")}
        boxes = {chart: svg.bounding_box() for chart, svg in charts.items()}
        created_bars = [int(v) for v in page.locator("#chart-per-day rect.bar.created").evaluate_all(
            "bars => bars.map(bar => bar.dataset.value)")]
        bar_counts = {chart: page.locator(f"#{chart} rect.bar").count() for chart in charts}
        tallest = page.locator("#chart-time-to-delivery rect.bar").evaluate_all(
            "bars => Math.max(...bars.map(bar => bar.getBoundingClientRect().height))")
        title = page.title()
        browser.close()

    assert requested == [page_file.as_uri()], "the page loads nothing else: it works offline"
    assert all(box and box["width"] > 0 and box["height"] > 0 for box in boxes.values())
    assert bar_counts == {"chart-per-day": 2 * 30, "chart-time-to-delivery": 6}
    assert created_bars == [d["created"] for d in expected["per_day"]]
    assert tallest > 0
    assert title.startswith("投递月报 Monthly delivery report 2026-11-01 – 2026-11-30")
