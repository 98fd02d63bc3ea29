"""Registering deliveries: one by one or from a CSV file, validated, never duplicated."""

import csv
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from app.models import Delivery, TrackingEvent
from app.services.errors import PermanentError

CSV_HEADER = ["reference", "recipient_name", "phone", "address", "carrier", "tracking_number", "deadline"]
CARRIER_CODE = re.compile(r"^[a-z0-9]{2,32}$")
TRACKING_NUMBER = re.compile(r"^[A-Za-z0-9-]{5,64}$")
PHONE = re.compile(r"^\+?[0-9][0-9 -]{5,30}$")
LIMITS = {"reference": 64, "recipient_name": 100, "address": 500}
BATCH = 500


class DeliveryInputError(PermanentError, ValueError):
    """A delivery's fields are missing or malformed; the message says which and why."""


@dataclass
class ImportReport:
    inserted: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)

    def as_dict(self) -> dict:
        return asdict(self)


def mask_phone(phone: str) -> str:
    digits = re.sub(r"\D", "", phone)
    return f"{digits[:3]}****{digits[-4:]}" if len(digits) >= 7 else "****"


def mask_address(address: str) -> str:
    return address[:6] + "…" if len(address) > 6 else address


def validate(fields: dict[str, str | None]) -> dict:
    """Clean, typed delivery fields; DeliveryInputError naming the first bad one."""
    clean = {name: (fields.get(name) or "").strip() for name in CSV_HEADER}
    for name in ("reference", "recipient_name", "phone", "address", "carrier", "tracking_number"):
        if not clean[name]:
            raise DeliveryInputError(f"{name} is empty")
    for name, limit in LIMITS.items():
        if len(clean[name]) > limit:
            raise DeliveryInputError(f"{name} is longer than {limit} characters")
    clean["carrier"] = clean["carrier"].lower()
    if not CARRIER_CODE.match(clean["carrier"]):
        raise DeliveryInputError(f"carrier {clean['carrier']!r} is not a Kuaidi100 company code (ems, shunfeng, …)")
    if not TRACKING_NUMBER.match(clean["tracking_number"]):
        raise DeliveryInputError("tracking_number must be 5-64 letters, digits or dashes")
    if not PHONE.match(clean["phone"]):
        raise DeliveryInputError("phone is not a phone number")
    try:
        clean["deadline"] = date.fromisoformat(clean["deadline"]) if clean["deadline"] else None
    except ValueError:
        raise DeliveryInputError(f"deadline {clean['deadline']!r} is not an ISO date (YYYY-MM-DD)") from None
    return clean


def add_delivery(session: Session, fields: dict[str, str | None]) -> Delivery:
    """Register one delivery; DeliveryInputError if invalid or already registered."""
    clean = validate(fields)
    existing = session.scalar(select(Delivery.id).where(Delivery.carrier == clean["carrier"],
                                                         Delivery.tracking_number == clean["tracking_number"]))
    if existing:
        raise DeliveryInputError(f"{clean['carrier']} {clean['tracking_number']} is already delivery {existing}")
    delivery = Delivery(**clean)
    session.add(delivery)
    session.flush()
    return delivery


def import_csv(session: Session, path: Path) -> ImportReport:
    """Insert every valid row not already registered; report each bad row by its line number."""
    report = ImportReport()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in CSV_HEADER if name != "deadline" and name not in (reader.fieldnames or [])]
        if missing:
            raise DeliveryInputError(f"{path.name}: header lacks {', '.join(missing)}; expected {','.join(CSV_HEADER)}")
        batch: list[dict] = []
        for row in reader:
            try:
                batch.append(validate(row))
            except DeliveryInputError as error:
                report.errors.append((reader.line_num, str(error)))
            if len(batch) >= BATCH:
                _insert_new(session, batch, report)
                batch = []
        _insert_new(session, batch, report)
    return report


def _insert_new(session: Session, rows: list[dict], report: ImportReport) -> None:
    keys = {(row["carrier"], row["tracking_number"]) for row in rows}
    known = set(session.execute(select(Delivery.carrier, Delivery.tracking_number)
                                .where(tuple_(Delivery.carrier, Delivery.tracking_number).in_(keys))).all()) if keys else set()
    for row in rows:
        key = (row["carrier"], row["tracking_number"])
        if key in known:
            report.duplicates += 1
            continue
        known.add(key)
        session.add(Delivery(**row))
        report.inserted += 1
    session.flush()


def delivery_summary(delivery: Delivery) -> dict:
    """A delivery as shown to operators and scripts: phone and address masked."""
    return {
        "id": delivery.id, "reference": delivery.reference, "recipient_name": delivery.recipient_name,
        "phone": mask_phone(delivery.phone), "address": mask_address(delivery.address),
        "carrier": delivery.carrier, "tracking_number": delivery.tracking_number, "status": delivery.status,
        "deadline": delivery.deadline.isoformat() if delivery.deadline else None,
        "created_at": delivery.created_at.isoformat(), "delivered_at": _iso(delivery.delivered_at),
        "last_polled_at": _iso(delivery.last_polled_at), "next_poll_at": _iso(delivery.next_poll_at),
        "last_error": delivery.last_error, "evidence_status": delivery.evidence_status,
        "evidence_error": delivery.evidence_error,
    }


def event_summaries(events: Iterable[TrackingEvent]) -> list[dict]:
    return [{"time": _iso(e.occurred_at), "location": e.location, "description": e.description,
             "status": e.carrier_status} for e in events]


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None
