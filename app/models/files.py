"""Files kept for deliveries: tracking screenshots, PDF receipts and attached documents."""

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class FileKind(StrEnum):
    SCREENSHOT = "screenshot"
    RECEIPT = "receipt"
    DOCUMENT = "document"


class DeliveryFile(Base):
    """One file of one delivery, stored under the files root by content (sha256).

    `delivery_id` has no foreign key on purpose: archiving moves a delivery to another table,
    and its screenshot and receipt must stay.
    """

    __tablename__ = "delivery_files"
    __table_args__ = (
        UniqueConstraint("delivery_id", "kind", "sha256"),
        Index("ix_delivery_files_delivery_kind", "delivery_id", "kind"),
        Index("ix_delivery_files_kind_created_at", "kind", "created_at"),  # receipts issued in a period
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    path: Mapped[str] = mapped_column(String(200))  # relative to the files root
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(50))
    page_count: Mapped[int | None] = mapped_column(Integer)
    original_name: Mapped[str | None] = mapped_column(String(255))
    receipt_number: Mapped[str | None] = mapped_column(String(40), unique=True)
    source_sha256: Mapped[str | None] = mapped_column(String(64))  # a receipt: the screenshot it embeds
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
