"""Archiving and retention on SQLite and PostgreSQL: interrupted runs lose and duplicate nothing."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.models import ArchivedDelivery, ArchivedTrackingEvent, Delivery, JobRun, TrackingEvent
from app.models.base import utcnow
from app.services.archive import archive_delivered
from app.services.retention import remove_expired_deliveries, remove_old_job_runs

NOW = utcnow()
CUTOFF = NOW - timedelta(days=180)


def seed(factory, count, status, age_days, events_each=2):
    with factory() as session:
        for i in range(count):
            moment = NOW - timedelta(days=age_days)
            delivery = Delivery(reference=f"{status}-{age_days}-{i}", recipient_name="张三", phone="13800138000",
                                address="北京市", carrier="ems", tracking_number=f"EM{status[:3]}{age_days}X{i:05d}",
                                status=status, delivered_at=moment if status == "delivered" else None,
                                updated_at=moment, created_at=moment)
            delivery.events = [TrackingEvent(occurred_at=moment + timedelta(hours=h), description=f"event {h}",
                                             fingerprint=f"{i}-{h}") for h in range(events_each)]
            session.add(delivery)
        session.commit()


def count(factory, model):
    with factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_archive_interrupted_midway_and_resumed_keeps_every_row_exactly_once(factory):
    seed(factory, 53, "delivered", age_days=400)
    seed(factory, 4, "delivered", age_days=10)
    seed(factory, 3, "in_transit", age_days=400)
    batches = []

    def crash_on_third_batch(ids):
        batches.append(ids)
        if len(batches) == 3:
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError):
        archive_delivered(factory, CUTOFF, batch_size=10, before_commit=crash_on_third_batch)
    assert count(factory, ArchivedDelivery) == 20, "two whole batches, nothing of the third"
    assert count(factory, Delivery) == 60 - 20

    resumed = archive_delivered(factory, CUTOFF, batch_size=10)
    assert resumed == {"deliveries": 33, "events": 66, "batches": 4}
    assert count(factory, ArchivedDelivery) == 53 and count(factory, ArchivedTrackingEvent) == 106
    with factory() as session:
        live = set(session.scalars(select(Delivery.tracking_number)))
        archived_ids = list(session.scalars(select(ArchivedDelivery.id)))
    assert live == {f"EMdel10X{i:05d}" for i in range(4)} | {f"EMin_400X{i:05d}" for i in range(3)}
    assert len(archived_ids) == len(set(archived_ids))
    assert archive_delivered(factory, CUTOFF) == {"deliveries": 0, "events": 0, "batches": 0}


def test_archive_stops_after_max_batches_and_carries_on_later(factory):
    seed(factory, 25, "delivered", age_days=365, events_each=1)
    assert archive_delivered(factory, CUTOFF, batch_size=10, max_batches=1)["deliveries"] == 10
    assert archive_delivered(factory, CUTOFF, batch_size=10)["deliveries"] == 15


def test_retention_removes_old_failures_and_job_runs_only(factory):
    seed(factory, 5, "failed", age_days=100)
    seed(factory, 2, "timeout", age_days=100)
    seed(factory, 3, "failed", age_days=10)
    seed(factory, 2, "delivered", age_days=100)
    with factory() as session:
        session.add_all([JobRun(name="old", started_at=NOW - timedelta(days=120)), JobRun(name="new", started_at=NOW)])
        session.commit()
    assert remove_expired_deliveries(factory, NOW - timedelta(days=90), batch_size=3) == 7
    assert count(factory, Delivery) == 5 and count(factory, TrackingEvent) == 10
    assert remove_old_job_runs(factory, NOW - timedelta(days=90)) == 1
    assert count(factory, JobRun) == 1


def test_job_run_retention_dates_runs_never_started_by_their_due_time(factory):
    def days_ago(days):
        return None if days is None else NOW - timedelta(days=days)

    # (name, outcome, due, started, finished), times in days ago; the cut-off is 90 days ago.
    runs = [("skipped-long-ago", "skipped_missed", 120, None, 80),  # skipped when beat came back: its due time counts
            ("lost-in-queue", "lost", 100, None, 99),
            ("started-late", "success", 91, 89, 89),  # its start counts
            ("skipped-recently", "skipped_overlap", 10, None, 10),
            ("sent-recently", "sent", 1, None, None),
            ("undated-but-ended-long-ago", "lost", None, None, 95)]
    with factory.begin() as session:
        session.add_all(JobRun(name=name, outcome=outcome, due_at=days_ago(due), started_at=days_ago(started),
                               finished_at=days_ago(finished)) for name, outcome, due, started, finished in runs)

    assert remove_old_job_runs(factory, NOW - timedelta(days=90)) == 3
    with factory() as session:
        assert sorted(session.scalars(select(JobRun.name))) == ["sent-recently", "skipped-recently", "started-late"]
