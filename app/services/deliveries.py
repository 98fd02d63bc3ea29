"""Registering deliveries: one by one or from a CSV file, validated, never duplicated."""

import codecs
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
# What the receipt form states beyond the shipment; a CSV may have these columns, each may be empty.
OPTIONAL_COLUMNS = ["case_cause", "case_number", "documents", "remarks"]
CARRIER_CODE = re.compile(r"^[a-z0-9]{2,32}$")
TRACKING_NUMBER = re.compile(r"^[A-Za-z0-9-]{5,64}$")
PHONE = re.compile(r"^\+?[0-9][0-9 -]{5,30}$")
LIMITS = {"reference": 64, "recipient_name": 100, "address": 500, "case_cause": 200, "case_number": 100,
          "documents": 500, "remarks": 500}
# One served document: a name, then optionally ×, x, X or * and a count ("起诉状副本×1", "传票 x 2").
DOCUMENT_ITEM = re.compile(r"^(?P<name>.+?)\s*(?:[×xX*＊]\s*(?P<count>[0-9]{1,3}))?$")
DOCUMENT_SEPARATORS = re.compile(r"[;；]")
BATCH = 500
UTF8_BOM = codecs.BOM_UTF8
# Tried in this order: strict UTF-8 rejects nearly every GBK text, so a file that decodes as UTF-8 is UTF-8.
# GB18030 is the superset of GBK that Excel on Chinese Windows writes as "CSV (comma delimited)".
CSV_ENCODINGS = ("utf-8", "gb18030")
DECODE_CHUNK = 1 << 16


class DeliveryInputError(PermanentError, ValueError):
    """A delivery's fields are missing or malformed; the message says which and why."""


@dataclass
class ImportReport:
    inserted: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    warnings: list[str] = field(default_factory=list)  # e.g. a column the import ignores

    def as_dict(self) -> dict:
        return asdict(self)


def mask_phone(phone: str) -> str:
    digits = re.sub(r"\D", "", phone)
    return f"{digits[:3]}****{digits[-4:]}" if len(digits) >= 7 else "****"


def mask_address(address: str) -> str:
    return address[:6] + "…" if len(address) > 6 else address


def parse_documents(documents: str | None) -> list[tuple[str, int | None]]:
    """The served documents as (name, count or None when not stated), from "起诉状副本×1;传票×1"."""
    items = [item.strip() for item in DOCUMENT_SEPARATORS.split(documents or "")]
    parsed = []
    for item in filter(None, items):
        match = DOCUMENT_ITEM.match(item)
        parsed.append((match["name"], int(match["count"]) if match["count"] else None))
    return parsed


def validate(fields: dict[str, str | None]) -> dict:
    """Clean, typed delivery fields; DeliveryInputError naming the first bad one."""
    clean = {name: (fields.get(name) or "").strip() for name in (*CSV_HEADER, *OPTIONAL_COLUMNS)}
    for name in ("reference", "recipient_name", "phone", "address", "carrier", "tracking_number"):
        if not clean[name]:
            raise DeliveryInputError(f"{name} is empty")
    for name, limit in LIMITS.items():
        if len(clean[name]) > limit:
            raise DeliveryInputError(f"{name} is longer than {limit} characters")
    if any(count == 0 for _, count in parse_documents(clean["documents"])):
        raise DeliveryInputError(f"documents {clean['documents']!r}: a document count must be 1 or more")
    for name in OPTIONAL_COLUMNS:
        clean[name] = clean[name] or None
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
    """Insert every valid row not already registered; report each bad row by its line number.

    The file is UTF-8 (with or without BOM) or GB18030/GBK, LF or CRLF. A header without one of
    CSV_HEADER, or a file in neither encoding, is one DeliveryInputError; OPTIONAL_COLUMNS may be there
    or not; any other column is a warning.
    """
    encoding = csv_encoding(path)
    report = ImportReport()
    try:
        with path.open(newline="", encoding=encoding) as handle:
            reader = csv.DictReader(handle)
            _check_header(path, reader, report)
            _import_rows(session, reader, report)
    except UnicodeDecodeError:  # it decoded a moment ago
        raise DeliveryInputError(f"{path}: the file changed while it was imported") from None
    except csv.Error as error:  # in the header: each row catches its own
        raise DeliveryInputError(f"{path.name}: the header is not readable as CSV: {error}") from None
    except OSError as error:
        raise DeliveryInputError(f"cannot read {path}: {error.strerror or error}") from None
    return report


def csv_encoding(path: Path) -> str:
    """The text encoding of a CSV file: UTF-8 if it has a BOM or decodes as UTF-8, else GB18030 if it decodes."""
    try:
        with path.open("rb") as handle:
            if handle.read(len(UTF8_BOM)) == UTF8_BOM:
                bad = _first_undecodable_byte(handle, "utf-8", len(UTF8_BOM))
                if bad is None:
                    return "utf-8-sig"
                raise DeliveryInputError(f"{path}: starts with a UTF-8 BOM but byte offset {bad} is not UTF-8; "
                                         "save it again as CSV UTF-8")
            offsets = {}
            for encoding in CSV_ENCODINGS:
                handle.seek(0)
                offsets[encoding] = _first_undecodable_byte(handle, encoding)
                if offsets[encoding] is None:
                    return encoding
    except OSError as error:
        raise DeliveryInputError(f"cannot read {path}: {error.strerror or error}") from None
    raise DeliveryInputError(f"{path}: neither UTF-8 (byte offset {offsets['utf-8']} is not) nor GB18030/GBK "
                             f"(byte offset {offsets['gb18030']} is not); save it as CSV UTF-8")


def _first_undecodable_byte(handle, encoding: str, position: int = 0) -> int | None:
    """The file offset of the first byte `encoding` cannot decode from `position` on, or None; reads in chunks."""
    decoder = codecs.getincrementaldecoder(encoding)()
    while True:
        chunk = handle.read(DECODE_CHUNK)
        pending = decoder.getstate()[0]  # the start of a character cut by the previous chunk
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError:
            try:
                (pending + chunk).decode(encoding)
            except UnicodeDecodeError as error:  # decoded on its own, `start` counts from `pending`
                return position - len(pending) + error.start
        if not chunk:
            return None
        position += len(chunk)


def _check_header(path: Path, reader: csv.DictReader, report: ImportReport) -> None:
    """DeliveryInputError for a missing or repeated column; a warning naming each unknown one."""
    names = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = names
    missing = [name for name in CSV_HEADER if name not in names]
    if missing:
        raise DeliveryInputError(f"{path.name}: header lacks {', '.join(missing)}; expected {','.join(CSV_HEADER)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DeliveryInputError(f"{path.name}: header repeats {', '.join(repeated)}")
    known = {*CSV_HEADER, *OPTIONAL_COLUMNS}
    report.warnings += [f"unknown column {name!r} ignored" for name in names if name not in known]


def _import_rows(session: Session, reader: csv.DictReader, report: ImportReport) -> None:
    width = len(reader.fieldnames)
    batch: list[dict] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # e.g. a field over csv.field_size_limit(); the DictReader's line_num is stale
            report.errors.append((reader.reader.line_num, f"not readable as CSV: {error}"))
            continue
        try:
            batch.append(validate(_complete(row, width)))
        except DeliveryInputError as error:
            report.errors.append((reader.line_num, str(error)))
        if len(batch) >= BATCH:
            _insert_new(session, batch, report)
            batch = []
    _insert_new(session, batch, report)


def _complete(row: dict, width: int) -> dict:
    """The row if it has as many fields as the header: more or fewer mean a shifted or cut row."""
    count = width - sum(value is None for value in row.values()) + len(row.get(None, ()))
    if count != width:
        raise DeliveryInputError(f"has {count} fields, the header has {width} (an unquoted comma in a field?)")
    return row


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
    """A delivery as shown to operators and scripts: phone and address masked; times as aware datetimes."""
    return {
        "id": delivery.id, "reference": delivery.reference, "recipient_name": delivery.recipient_name,
        "phone": mask_phone(delivery.phone), "address": mask_address(delivery.address),
        "carrier": delivery.carrier, "tracking_number": delivery.tracking_number, "status": delivery.status,
        "deadline": delivery.deadline, "created_at": delivery.created_at, "delivered_at": delivery.delivered_at,
        "last_polled_at": delivery.last_polled_at, "next_poll_at": delivery.next_poll_at,
        "last_error": delivery.last_error, "evidence_status": delivery.evidence_status,
        "evidence_error": delivery.evidence_error,
        **{name: getattr(delivery, name) for name in OPTIONAL_COLUMNS},
    }


def event_summaries(events: Iterable[TrackingEvent]) -> list[dict]:
    return [{"time": e.occurred_at, "location": e.location, "description": e.description,
             "status": e.carrier_status} for e in events]
