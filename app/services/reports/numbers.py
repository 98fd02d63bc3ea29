"""The numbers of one report period, computed by SQL aggregates on PostgreSQL and SQLite.

The deliveries table is read in three grouped passes: created in the period (by carrier and
day), signed in the period (by carrier, day and time-to-delivery bucket), and the percentiles
of time to delivery; Python only adds up those few grouped rows.

Time to delivery runs from the carrier's collection (揽收) to signing (`delivered_at`), never from
our row's `created_at`: shipments are often registered or imported after they were posted or even
signed. The collection is the earliest tracking event that says so: Kuaidi100's event status
"揽收", or a text naming it ("已揽收", EMS's "已收寄", "揽件") but not a wait for it ("待揽收").
A signed delivery with no such event is counted apart (no collection event), and so is one signed
before its collection (bad carrier data); neither enters the percentiles or the histogram.

Percentiles are continuous with linear interpolation between the two neighbouring values, as
PostgreSQL's `percentile_cont`: for n sorted values and fraction p, the value at 0-based position
p * (n - 1). SQLite has no such aggregate, so it reads the two neighbours with ORDER BY … LIMIT 2
OFFSET k and interpolates; the result is the same on both.
"""

from collections import Counter
from datetime import date, datetime, timedelta, timezone
from math import floor

from sqlalchemy import (
    ColumnElement,
    Date,
    Float,
    Subquery,
    and_,
    case,
    cast,
    extract,
    func,
    literal_column,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session

from app.models import Delivery, DeliveryFile, DeliveryStatus, FileKind, JobRun, TrackingEvent

# Asia/Shanghai has kept UTC+8 all year since 1991, so a fixed shift gives its calendar day in SQL.
SHANGHAI_OFFSET = timedelta(hours=8)
IN_TRANSIT = (DeliveryStatus.IN_TRANSIT, DeliveryStatus.OUT_FOR_DELIVERY)
ENDED_BADLY = (DeliveryStatus.TIMEOUT, DeliveryStatus.FAILED)
SKIPPED_OUTCOMES = ("skipped_overlap", "skipped_missed")
# Unfinished runs have not failed (yet); every other outcome of a run that was not skipped has.
NOT_FAILED_OUTCOMES = ("success", "running", "sent", "sending") + SKIPPED_OUTCOMES
# Time-to-delivery histogram: (label, exclusive upper bound in hours); the last bucket is open-ended.
BUCKETS = (("<24h", 24), ("1-2d", 48), ("2-3d", 72), ("3-5d", 120), ("5-7d", 168), (">7d", None))
# Signed deliveries that have no time to delivery, keyed apart from the BUCKETS indexes.
NO_COLLECTION_EVENT, SIGNED_BEFORE_COLLECTION = -1, -2
# Kuaidi100's `status` of a collection event (resultv2=1), and the words of carriers' collection texts.
COLLECTED_STATUS = "揽收"
COLLECTION_WORDS = ("揽收", "收寄", "揽件")
NOT_COLLECTION_WORDS = ("待揽", "待收寄", "未揽", "揽收失败", "取消揽收")


def report_numbers(session: Session, start_utc: datetime, end_utc: datetime) -> dict:
    """Every number of the report for [start_utc, end_utc): deliveries, carriers, receipts, jobs, series."""
    dialect = session.get_bind().dialect.name
    created = _created_counts(session, dialect, start_utc, end_utc)
    signed = _signed_in(start_utc, end_utc)
    delivered = _delivered_counts(session, dialect, signed)
    delivered_by_kind = _totals(delivered, 2)
    measured = _totals(Counter({key: n for key, n in delivered.items() if key[2] >= 0}), 0)
    median, p90, medians = _percentiles(session, dialect, signed, measured)
    ended_badly = _ended_badly(session, start_utc, end_utc)
    return {
        "deliveries": {
            "created": sum(created.values()),
            "delivered": sum(delivered.values()),
            "delivered_no_collection_event": delivered_by_kind[NO_COLLECTION_EVENT],
            "delivered_signed_before_collection": delivered_by_kind[SIGNED_BEFORE_COLLECTION],
            "in_transit": _in_transit(session),
            "timed_out": ended_badly.get(DeliveryStatus.TIMEOUT, 0),
            "failed": ended_badly.get(DeliveryStatus.FAILED, 0),
        },
        "time_to_delivery_hours": {"median": median, "p90": p90},
        "time_to_delivery_buckets": _buckets(delivered_by_kind),
        "carriers": _carriers(_totals(created, 0), _totals(delivered, 0), measured, medians),
        "receipts_issued": _receipts_issued(session, start_utc, end_utc),
        "receipts_issued_signed_earlier": _receipts_issued_signed_earlier(session, start_utc, end_utc),
        "jobs": _jobs(session, dialect, start_utc, end_utc),
        "per_day": _per_day(_totals(created, 1), _totals(delivered, 1), start_utc, end_utc),
    }


def _within(column, start_utc: datetime, end_utc: datetime) -> ColumnElement[bool]:
    return and_(column >= start_utc, column < end_utc)


def _seconds_between(dialect: str, earlier, later) -> ColumnElement[float]:
    if dialect == "postgresql":
        return cast(extract("epoch", later - earlier), Float)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def _hours_to_delivery(dialect: str, signed: Subquery) -> ColumnElement[float]:
    return _seconds_between(dialect, signed.c.collected_at, signed.c.delivered_at) / 3600.0


def _shanghai_day(dialect: str, column) -> ColumnElement:
    hours = int(SHANGHAI_OFFSET.total_seconds() // 3600)
    if dialect == "postgresql":
        return cast(func.timezone("UTC", column) + literal_column(f"INTERVAL '{hours} hours'"), Date)
    return func.date(column, literal_column(f"'+{hours} hours'"))


def _is_collection() -> ColumnElement[bool]:
    """A tracking event that records the carrier collecting the parcel (揽收)."""
    text = TrackingEvent.description
    return or_(TrackingEvent.carrier_status == COLLECTED_STATUS,
               and_(or_(*[text.contains(word) for word in COLLECTION_WORDS]),
                    not_(or_(*[text.contains(word) for word in NOT_COLLECTION_WORDS]))))


def _signed_in(start_utc: datetime, end_utc: datetime) -> Subquery:
    """Deliveries signed in the period: carrier, signing time and collection time (NULL: no collection event)."""
    collected_at = (select(func.min(TrackingEvent.occurred_at))
                    .where(TrackingEvent.delivery_id == Delivery.id, _is_collection())
                    .correlate(Delivery).scalar_subquery())
    return (select(Delivery.carrier, Delivery.delivered_at, collected_at.label("collected_at"))
            .where(_within(Delivery.delivered_at, start_utc, end_utc)).subquery("signed"))


def _measured(signed: Subquery) -> ColumnElement[bool]:
    """A signed delivery with a time to delivery: collected, and not signed before it was collected."""
    return signed.c.collected_at <= signed.c.delivered_at


def _bucket_index(dialect: str, signed: Subquery) -> ColumnElement[int]:
    """The index in BUCKETS of a delivery's time to delivery, or why it has none."""
    upper_bounds = [upper for _, upper in BUCKETS[:-1]]
    if dialect == "postgresql":
        # Comparing the interval itself takes half the time of turning each one into hours first.
        took, bounds = signed.c.delivered_at - signed.c.collected_at, [timedelta(hours=h) for h in upper_bounds]
    else:
        took, bounds = _hours_to_delivery(dialect, signed), upper_bounds
    return case((signed.c.collected_at.is_(None), NO_COLLECTION_EVENT),
                (not_(_measured(signed)), SIGNED_BEFORE_COLLECTION),
                *[(took < bound, i) for i, bound in enumerate(bounds)], else_=len(BUCKETS) - 1)


def _count_by(session: Session, condition, *keys) -> Counter:
    """Rows matching `condition`, counted per combination of the key expressions (dates as ISO strings)."""
    keyed = select(*[key.label(f"key_{i}") for i, key in enumerate(keys)]).where(condition).subquery()
    columns = list(keyed.c)
    rows = session.execute(select(*columns, func.count()).group_by(*columns))
    return Counter({tuple(_iso(value) for value in row[:-1]): row[-1] for row in rows})


def _iso(value):
    """PostgreSQL returns dates, SQLite ISO strings: key both by the ISO string."""
    return value.isoformat() if isinstance(value, date) else value


def _totals(counts: Counter, position: int) -> Counter:
    """Grouped counts added up by the key at `position` alone."""
    totals = Counter()
    for key, count in counts.items():
        totals[key[position]] += count
    return totals


def _created_counts(session: Session, dialect: str, start_utc: datetime, end_utc: datetime) -> Counter:
    """Deliveries created in the period, by (carrier, Shanghai day)."""
    return _count_by(session, _within(Delivery.created_at, start_utc, end_utc),
                     Delivery.carrier, _shanghai_day(dialect, Delivery.created_at))


def _delivered_counts(session: Session, dialect: str, signed: Subquery) -> Counter:
    """Deliveries signed in the period, by (carrier, Shanghai day of signing, time-to-delivery bucket)."""
    return _count_by(session, true(), signed.c.carrier, _shanghai_day(dialect, signed.c.delivered_at),
                     _bucket_index(dialect, signed))


def _percentiles(session: Session, dialect: str, signed: Subquery, counts: Counter) -> tuple:
    """Median and 90th percentile hours from collection to signing over all carriers, and each carrier's median;
    `counts` are the measured deliveries per carrier."""
    hours, measured = _hours_to_delivery(dialect, signed), _measured(signed)
    if dialect == "postgresql":
        # ROLLUP adds the all-carriers row (carrier NULL) to the per-carrier ones, in the same pass.
        rows = session.execute(select(signed.c.carrier, func.percentile_cont(0.5).within_group(hours),
                                      func.percentile_cont(0.9).within_group(hours))
                               .where(measured).group_by(func.rollup(signed.c.carrier))).all()
        median, p90 = next(((m, p) for carrier, m, p in rows if carrier is None), (None, None))
        medians = {carrier: _rounded(m) for carrier, m, _ in rows if carrier is not None}
        return _rounded(median), _rounded(p90), medians
    total = sum(counts.values())
    medians = {carrier: _rounded(_interpolated(session, hours, and_(measured, signed.c.carrier == carrier), n, 0.5))
               for carrier, n in counts.items()}
    return (_rounded(_interpolated(session, hours, measured, total, 0.5)),
            _rounded(_interpolated(session, hours, measured, total, 0.9)), medians)


def _interpolated(session: Session, value, condition, count: int, fraction: float) -> float | None:
    """The percentile from its two neighbouring rows, read by ORDER BY … LIMIT 2 OFFSET k."""
    if count == 0:
        return None
    position = fraction * (count - 1)
    lower = floor(position)
    neighbours = list(session.scalars(select(value).where(condition).order_by(value).limit(2).offset(lower)))
    if len(neighbours) == 1:
        return neighbours[0]
    return neighbours[0] + (position - lower) * (neighbours[1] - neighbours[0])


def _in_transit(session: Session) -> int:
    """Deliveries on their way now (the status index answers it alone)."""
    return session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status.in_(IN_TRANSIT)))


def _ended_badly(session: Session, start_utc: datetime, end_utc: datetime) -> dict[str, int]:
    """Deliveries that timed out or failed during the period (their last update), by status."""
    return dict(session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.status.in_(ENDED_BADLY), _within(Delivery.updated_at, start_utc, end_utc))
        .group_by(Delivery.status)).all())


def _buckets(counts: Counter) -> list[dict]:
    return [{"bucket": label, "count": counts[i]} for i, (label, _) in enumerate(BUCKETS)]


def _carriers(created: Counter, delivered: Counter, measured: Counter, medians: dict) -> list[dict]:
    return [{"carrier": carrier, "created": created[carrier], "delivered": delivered[carrier],
             "measured": measured[carrier], "median_hours": medians.get(carrier)}
            for carrier in sorted(set(created) | set(delivered))]


def _per_day(created: Counter, delivered: Counter, start_utc: datetime, end_utc: datetime) -> list[dict]:
    """Deliveries created and delivered on each Asia/Shanghai day of the period, zeros included."""
    return [{"day": day, "created": created[day], "delivered": delivered[day]}
            for day in _shanghai_days(start_utc, end_utc)]


def _shanghai_days(start_utc: datetime, end_utc: datetime) -> list[str]:
    start, end = start_utc.astimezone(timezone.utc), end_utc.astimezone(timezone.utc)
    first, last = (start + SHANGHAI_OFFSET).date(), (end + SHANGHAI_OFFSET - timedelta(microseconds=1)).date()
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def _receipt_issued_in(start_utc: datetime, end_utc: datetime) -> ColumnElement[bool]:
    return and_(DeliveryFile.kind == FileKind.RECEIPT, _within(DeliveryFile.created_at, start_utc, end_utc))


def _receipts_issued(session: Session, start_utc: datetime, end_utc: datetime) -> int:
    return session.scalar(select(func.count()).select_from(DeliveryFile).where(_receipt_issued_in(start_utc, end_utc)))


def _receipts_issued_signed_earlier(session: Session, start_utc: datetime, end_utc: datetime) -> int:
    """Receipts issued in the period for deliveries signed before it (an archived delivery is not counted)."""
    return session.scalar(select(func.count()).select_from(DeliveryFile)
                          .join(Delivery, Delivery.id == DeliveryFile.delivery_id)
                          .where(_receipt_issued_in(start_utc, end_utc), Delivery.delivered_at < start_utc))


def _jobs(session: Session, dialect: str, start_utc: datetime, end_utc: datetime) -> list[dict]:
    """Per periodic job with a run due in the period (a run sent by hand: started in it): runs, skips,
    failures, longest runtime of a finished run, and the max and mean lateness of the runs sent."""
    runtime = _seconds_between(dialect, JobRun.started_at, JobRun.finished_at)
    ran = JobRun.outcome.notin_(SKIPPED_OUTCOMES)
    rows = session.execute(
        select(JobRun.name, func.count().filter(ran), func.count().filter(JobRun.outcome.in_(SKIPPED_OUTCOMES)),
               func.count().filter(JobRun.outcome.notin_(NOT_FAILED_OUTCOMES)), func.max(runtime),
               func.max(JobRun.lateness_seconds).filter(ran), func.avg(JobRun.lateness_seconds).filter(ran))
        .where(_within(func.coalesce(JobRun.due_at, JobRun.started_at), start_utc, end_utc))
        .group_by(JobRun.name).order_by(JobRun.name))
    return [{"name": name, "runs": runs, "skipped": skipped, "failures": failures,
             "longest_seconds": _rounded(longest), "max_lateness_seconds": _rounded(max_lateness),
             "mean_lateness_seconds": _rounded(mean_lateness)}
            for name, runs, skipped, failures, longest, max_lateness, mean_lateness in rows]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
