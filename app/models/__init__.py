"""SQLAlchemy models of the domain: deliveries, their tracking events, and periodic job runs."""

from app.models.archive import ArchivedDelivery, ArchivedTrackingEvent
from app.models.base import Base
from app.models.deliveries import Delivery, DeliveryStatus, TrackingEvent
from app.models.jobs import JobRun

__all__ = ["ArchivedDelivery", "ArchivedTrackingEvent", "Base", "Delivery", "DeliveryStatus", "JobRun", "TrackingEvent"]
