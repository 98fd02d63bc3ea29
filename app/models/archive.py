from datetime import datetime

from sqlalchemy import Integer
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow
from app.models.deliveries import DeliveryFields, TrackingEventFields


class ArchivedDelivery(DeliveryFields, Base):
    """A delivered delivery moved out of the live table by archive-old-data; same id as it had."""

    __tablename__ = "deliveries_archive"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ArchivedTrackingEvent(TrackingEventFields, Base):
    __tablename__ = "tracking_events_archive"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    delivery_id: Mapped[int] = mapped_column(Integer, index=True)
