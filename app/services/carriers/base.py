"""What every carrier client returns, and the errors it raises."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from app.services.errors import PermanentError


@dataclass(frozen=True)
class CarrierEvent:
    occurred_at: datetime  # aware
    description: str
    location: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class TrackingResult:
    state: int  # Kuaidi100's overall state code (0 in transit ... 14 refused)
    signed: bool
    events: list[CarrierEvent] = field(default_factory=list)  # oldest first


class CarrierError(Exception):
    """The carrier could not answer now (timeout, 5xx, busy, malformed reply): try again later."""


class CarrierRequestError(CarrierError, PermanentError):
    """The carrier rejected this request (bad number or company, failed phone check): no retry helps."""


class CarrierConfigError(CarrierError, PermanentError):
    """The account is misconfigured (bad signature, key expired, balance used up): an operator must act."""


class CarrierClient(Protocol):
    def query(self, carrier: str, tracking_number: str, phone: str | None = None) -> TrackingResult: ...
