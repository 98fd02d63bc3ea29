"""SQLAlchemy models of the domain: deliveries, their tracking events and files, and periodic job runs."""

from app.models.archive import ArchivedDelivery, ArchivedTrackingEvent
from app.models.base import Base
from app.models.deliveries import Delivery, DeliveryStatus, EvidenceStatus, TrackingEvent
from app.models.files import DeliveryFile, FileKind
from app.models.jobs import JobRun
from app.models.reports import AlertIncident, Report

__all__ = ["AlertIncident", "ArchivedDelivery", "ArchivedTrackingEvent", "Base", "Delivery", "DeliveryFile",
           "DeliveryStatus", "EvidenceStatus", "FileKind", "JobRun", "Report", "TrackingEvent"]
