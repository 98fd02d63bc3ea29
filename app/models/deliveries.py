from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, UTCDateTime, utcnow


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # registered, never polled
    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERED = "delivered"
    PROBLEM = "problem"
    RETURNING = "returning"  # on its way back to the sender
    RETURNED = "returned"
    REJECTED = "rejected"
    TIMEOUT = "timeout"  # past its deadline without delivery
    FAILED = "failed"  # the carrier cannot track it (bad number, wrong carrier)


class EvidenceStatus(StrEnum):
    NONE = "none"  # not delivered yet, or evidence never asked for
    REQUESTED = "requested"  # screenshot then receipt sent to the workers
    COMPLETE = "complete"  # screenshot and receipt stored
    FAILED = "failed"  # a step failed after its retries; evidence_error says why


TERMINAL_STATUSES = frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.RETURNED, DeliveryStatus.REJECTED,
                               DeliveryStatus.TIMEOUT, DeliveryStatus.FAILED})


class DeliveryFields:
    """The columns a delivery has, live or archived (one definition for both tables)."""

    reference: Mapped[str] = mapped_column(String(64))
    recipient_name: Mapped[str] = mapped_column(String(100))
    phone: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(500))
    carrier: Mapped[str] = mapped_column(String(32))
    tracking_number: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING)
    carrier_state: Mapped[int | None] = mapped_column(Integer)
    deadline: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    poll_count: Mapped[int] = mapped_column(Integer, default=0)
    poll_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    evidence_status: Mapped[str] = mapped_column(String(20), default="none")  # see EvidenceStatus
    evidence_error: Mapped[str | None] = mapped_column(Text)
    evidence_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What the receipt (送达回证) states beyond the shipment, as given at registration.
    case_cause: Mapped[str | None] = mapped_column(String(200))  # 案由
    case_number: Mapped[str | None] = mapped_column(String(100))  # 案号
    documents: Mapped[str | None] = mapped_column(String(500))  # 送达文书名称及件数, e.g. "起诉状副本×1;传票×1"
    remarks: Mapped[str | None] = mapped_column(String(500))  # 备注


class Delivery(DeliveryFields, Base):
    """A document sent by post, followed until the carrier confirms it."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("carrier", "tracking_number"),
        Index("ix_deliveries_status_next_poll", "status", "next_poll_at"),
        # The reports' period scans; the included columns let PostgreSQL answer from the index alone.
        Index("ix_deliveries_created_at", "created_at", postgresql_include=["carrier"]),
        Index("ix_deliveries_delivered_at", "delivered_at", postgresql_include=["created_at", "carrier"]),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    events: Mapped[list["TrackingEvent"]] = relationship(
        back_populates="delivery", cascade="all, delete-orphan", order_by="TrackingEvent.occurred_at")


class TrackingEventFields:
    """The columns of a tracking event, live or archived, but for its link to the delivery."""

    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    location: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    carrier_status: Mapped[str | None] = mapped_column(String(40))
    fingerprint: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TrackingEvent(TrackingEventFields, Base):
    """One line of a carrier's tracking record; stored once, whatever the number of polls."""

    __tablename__ = "tracking_events"
    __table_args__ = (UniqueConstraint("delivery_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)

    delivery: Mapped[Delivery] = relationship(back_populates="events")
