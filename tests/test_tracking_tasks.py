"""The tracking jobs through a real worker, against the simulator over HTTP, on the embedded default."""

from datetime import date, timedelta

import pytest
from sqlalchemy import delete, select

from app.core.database import session_scope
from app.models import Delivery, TrackingEvent
from tests.support.waiting import wait_until

RESULT_TIMEOUT = 60


def _remove_deliveries() -> None:
    with session_scope() as session:
        session.execute(delete(TrackingEvent))
        session.execute(delete(Delivery))


@pytest.fixture
def deliveries(django_db, carrier_simulator):
    """Adds deliveries to a table that starts empty (another test in this process may have left some)."""
    _remove_deliveries()

    def add(*numbers, deadline=date(2099, 12, 31)):
        with session_scope() as session:
            rows = [Delivery(reference=f"CASE-{n}", recipient_name="张三", phone="13800138000", address="北京市",
                             carrier="ems", tracking_number=n, deadline=deadline) for n in numbers]
            session.add_all(rows)
        return [row.id for row in rows]

    yield add
    _remove_deliveries()


def statuses() -> dict[str, str]:
    with session_scope() as session:
        return {d.tracking_number: d.status for d in session.scalars(select(Delivery))}


def evidence_states() -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(Delivery.evidence_status)))


def run_update(celery_app):
    return celery_app.send_task("app.tasks.tracking_tasks.update_tracking_status").get(timeout=RESULT_TIMEOUT)


@pytest.mark.needs_cjk_font
@pytest.mark.needs_chromium
def test_deliveries_progress_to_delivered_run_by_run(worker, celery_app, deliveries):
    numbers = [f"EMT{i:05d}" for i in range(7)]
    deliveries(*numbers)
    expected = ["in_transit", "in_transit", "in_transit", "out_for_delivery", "delivered"]
    for step, status in enumerate(expected):
        summary = run_update(celery_app)
        assert summary["due"] == len(numbers)
        wait_until(lambda status=status: set(statuses().values()) == {status})
    assert run_update(celery_app) == {"due": 0, "chunks": 0}, "delivered parcels are not polled"
    with session_scope() as session:
        events = session.scalars(select(TrackingEvent)).all()
    assert len(events) == 5 * len(numbers), "every event stored exactly once"
    wait_until(lambda: evidence_states() == {"complete"}, timeout=120)  # screenshot and receipt, each delivery


def test_check_pending_tasks_polls_new_deliveries_once(worker, celery_app, deliveries):
    deliveries("EMNEW0001", "EMNEW0002")
    sent = celery_app.send_task("app.tasks.tracking_tasks.check_pending_tasks").get(timeout=RESULT_TIMEOUT)
    assert sent == {"pending": 2, "chunks": 1, "evidence": 0}
    wait_until(lambda: set(statuses().values()) == {"in_transit"})
    again = celery_app.send_task("app.tasks.tracking_tasks.check_pending_tasks").get(timeout=RESULT_TIMEOUT)
    assert again == {"pending": 0, "chunks": 0, "evidence": 0}, "polled deliveries are update-tracking-status's until overdue"


def test_check_timeout_tasks_marks_overdue_deliveries(worker, celery_app, deliveries, clean_history):
    deliveries("EMLATE001", deadline=date.today() - timedelta(days=2))
    deliveries("EMONTIME1")
    result = celery_app.send_task("app.tasks.tracking_tasks.check_timeout_tasks").get(timeout=RESULT_TIMEOUT)
    assert result == {"timed_out": 1, "lost_runs": 0}
    assert statuses() == {"EMLATE001": "timeout", "EMONTIME1": "pending"}


def test_archive_and_retention_jobs_run_on_the_worker(worker, celery_app, deliveries):
    from app.models import ArchivedDelivery
    from app.models.base import utcnow

    [old_id] = deliveries("EMOLD0001")
    [failed_id] = deliveries("EMFAIL001")
    long_ago = utcnow() - timedelta(days=400)
    with session_scope() as session:
        old = session.get(Delivery, old_id)
        old.status, old.delivered_at = "delivered", long_ago
        failed = session.get(Delivery, failed_id)
        failed.status, failed.updated_at = "failed", long_ago
    archived = celery_app.send_task("app.tasks.maintenance_tasks.archive_old_data").get(timeout=RESULT_TIMEOUT)
    removed = celery_app.send_task("app.tasks.maintenance_tasks.cleanup_expired_tasks").get(timeout=RESULT_TIMEOUT)
    assert archived == {"deliveries": 1, "events": 0, "batches": 1}
    assert removed["deliveries_removed"] == 1
    assert statuses() == {}
    with session_scope() as session:
        assert session.get(ArchivedDelivery, old_id).tracking_number == "EMOLD0001"
        session.execute(delete(ArchivedDelivery))


def test_periodic_runs_are_recorded_and_stuck_ones_marked_lost(worker, celery_app, django_db):
    from app.models import JobRun
    from app.models.base import utcnow

    periodic = celery_app.send_task("app.tasks.file_tasks.check_disk_space",
                                     headers={"periodic_task_name": "check-disk-space"})
    periodic.get(timeout=RESULT_TIMEOUT)
    by_hand = celery_app.send_task("app.tasks.file_tasks.check_disk_space")
    by_hand.get(timeout=RESULT_TIMEOUT)
    with session_scope() as session:
        runs = session.scalars(select(JobRun).where(JobRun.task_id.in_([periodic.id, by_hand.id]))).all()
        assert [(r.name, r.task_id, r.outcome) for r in runs] == [("check-disk-space", periodic.id, "success")]
        assert runs[0].finished_at >= runs[0].started_at and '"volumes"' in runs[0].summary
        session.add(JobRun(name="stuck-job", task_id="stuck", started_at=utcnow() - timedelta(hours=2)))
        # A backup may run 1900 s: 20 minutes in, it is slow, not lost.
        session.add(JobRun(name="backup-database", task_id="slow", started_at=utcnow() - timedelta(minutes=20)))
    result = celery_app.send_task("app.tasks.tracking_tasks.check_timeout_tasks").get(timeout=RESULT_TIMEOUT)
    assert result["lost_runs"] == 1
    with session_scope() as session:
        assert session.scalar(select(JobRun.outcome).where(JobRun.task_id == "stuck")) == "lost"
        assert session.scalar(select(JobRun.outcome).where(JobRun.task_id == "slow")) == "running"
        session.execute(delete(JobRun))


def test_a_chunk_run_again_with_its_claim_time_asks_the_carrier_only_for_what_it_left(
        worker, celery_app, deliveries, monkeypatch):
    from app.models.base import utcnow
    from app.services.carriers.kuaidi100 import Kuaidi100Client
    from app.tasks import tracking_tasks
    from tests.support.hostile_carrier import HostileCarrier

    server = HostileCarrier().start()
    client = Kuaidi100Client("C1", "K1", server.url, timeout=1.0)
    sent = []
    monkeypatch.setattr(tracking_tasks, "carrier_client", lambda: client)
    monkeypatch.setattr(tracking_tasks, "send_evidence", lambda ids: sent.extend(ids) or len(ids))
    try:
        ids = deliveries("GOOD1", "DRIP1", "LONGLOC1")
        chunk = {"args": [ids], "kwargs": {"claimed_at": utcnow().isoformat()}}
        first = celery_app.send_task("app.tasks.tracking_tasks.poll_tracking_chunk", **chunk).get(timeout=RESULT_TIMEOUT)
        assert (first["polled"], first["errors"]) == (2, 1), "the drip one fails alone, at the client's deadline"
        assert sorted(sent) == [ids[0], ids[2]], "each delivered one's evidence sent"
        again = celery_app.send_task("app.tasks.tracking_tasks.poll_tracking_chunk", **chunk).get(timeout=RESULT_TIMEOUT)
        assert (again["polled"], again["skipped"], again["already_polled"]) == (0, 2, 1)
        assert server.requests == {"GOOD1": 1, "DRIP1": 1, "LONGLOC1": 1}, "the carrier asked once per delivery"
        assert "within the 1 s deadline" in last_errors()["DRIP1"]
    finally:
        client.close()
        server.stop()


def last_errors() -> dict[str, str | None]:
    with session_scope() as session:
        return {d.tracking_number: d.last_error for d in session.scalars(select(Delivery))}
