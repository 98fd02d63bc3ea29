"""Where a delivery's evidence stands, as the delivery row shows it."""

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import Delivery, DeliveryFile, DeliveryStatus, EvidenceStatus, FileKind
from app.models.base import utcnow


def latest_file(session: Session, delivery_id: int, kind: FileKind) -> DeliveryFile | None:
    """The newest file of `kind` for the delivery."""
    return session.scalars(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                      DeliveryFile.kind == kind)
                           .order_by(DeliveryFile.id.desc()).limit(1)).first()


def mark_requested(session: Session, delivery_ids: list[int]) -> None:
    session.execute(update(Delivery).where(Delivery.id.in_(delivery_ids)).values(
        evidence_status=EvidenceStatus.REQUESTED, evidence_error=None, evidence_requested_at=utcnow()))


def mark_complete(session: Session, delivery_id: int) -> None:
    session.execute(update(Delivery).where(Delivery.id == delivery_id).values(
        evidence_status=EvidenceStatus.COMPLETE, evidence_error=None))


def mark_failed(session: Session, delivery_id: int, step: str, error: str) -> None:
    """A step gave up after its retries: the delivery says which and why."""
    session.execute(update(Delivery).where(Delivery.id == delivery_id).values(
        evidence_status=EvidenceStatus.FAILED, evidence_error=f"{step}: {error}"[:2000]))


def missing_evidence_ids(session: Session, requested_before, limit: int) -> list[int]:
    """Delivered deliveries whose evidence was never asked for, or asked for before `requested_before`
    and still not done (lost on the way, or failed: tried again, at that pace)."""
    retry = Delivery.evidence_status.in_([EvidenceStatus.REQUESTED, EvidenceStatus.FAILED])
    waiting = (Delivery.evidence_status == EvidenceStatus.NONE) | (retry & (Delivery.evidence_requested_at < requested_before))
    return list(session.scalars(select(Delivery.id).where(Delivery.status == DeliveryStatus.DELIVERED, waiting)
                                .order_by(Delivery.id).limit(limit)))
