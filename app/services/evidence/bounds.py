"""How much of a delivery's stored data its evidence shows, whatever the database holds.

Events in the database can be anything (100,000 of them, a 5 MB text): the screenshot and the
receipt show the newest events that fit, each text cut at a limit and marked, and say how many
earlier events they leave out. Only the shown part is read from the database. What still exceeds
the limits (a page taller than a screenshot may be, more pages than a receipt may have) is refused
with EvidenceTooLargeError: rendering it again cannot succeed.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import TrackingEvent
from app.services.errors import PermanentError

FIELD_CHARS = 200  # a reference, name or address shown is cut here (the widest column is 500)
LOCATION_CHARS = 40  # the receipt's location column is narrow: 200 characters there take a third of a page


class EvidenceTooLargeError(PermanentError):
    """Even bounded, the evidence exceeds its limits (pixels, pages): no retry can render it."""


@dataclass(frozen=True)
class EvidenceBounds:
    """The limits of one screenshot and one receipt."""

    max_events: int = 100  # the newest events shown; the earlier ones are counted in a note
    max_event_chars: int = 500  # an event text longer than this is cut, and the cut marked
    max_total_chars: int = 12_000  # all shown texts and locations together: fewer events when they are long
    max_page_height: int = 16_384  # pixels of a screenshot (Chromium's largest texture side)
    max_page_width: int = 1_800
    max_receipt_pages: int = 40
    max_embedded_pixels: int = 1_800 * 16_384  # the screenshot a receipt embeds


DEFAULT_BOUNDS = EvidenceBounds()


@dataclass(frozen=True)
class ShownEvent:
    occurred_at: datetime
    location: str | None
    description: str
    cut: bool


@dataclass(frozen=True)
class Timeline:
    """The events evidence shows, newest first, out of `total` stored."""

    events: list[ShownEvent]
    total: int

    @property
    def omitted(self) -> int:
        return self.total - len(self.events)

    @property
    def omitted_note(self) -> str:
        return f"另有 {self.omitted} 条较早记录未显示 / {self.omitted} earlier events not shown" if self.omitted else ""

    def summary(self) -> dict:
        return {"events_total": self.total, "events_shown": len(self.events),
                "texts_cut": sum(event.cut for event in self.events)}


def clip(text: str | None, limit: int, length: int | None = None) -> str | None:
    """`text` cut to `limit` characters, the cut marked with the original `length` (default: its own)."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}…(已截断，原文 {length or len(text)} 字 / truncated, {length or len(text)} characters)"


def _selected(rows, total: int, bounds: EvidenceBounds) -> Timeline:
    """The newest of `rows` (time, location, head of the text, text length; newest first) that fit."""
    shown, used = [], 0
    for occurred_at, location, head, length in rows[:bounds.max_events]:
        head = head or ""
        description, location = clip(head, bounds.max_event_chars, length), clip(location, LOCATION_CHARS)
        chars = len(description) + len(location or "")
        if shown and used + chars > bounds.max_total_chars:
            break
        shown.append(ShownEvent(occurred_at, location, description, len(head) > bounds.max_event_chars))
        used += chars
    return Timeline(shown, total)


def load_timeline(session: Session, delivery_id: int, bounds: EvidenceBounds = DEFAULT_BOUNDS) -> Timeline:
    """The delivery's shown events, reading no more than `bounds.max_events` rows and their cut texts."""
    where = TrackingEvent.delivery_id == delivery_id
    newest_first = (TrackingEvent.occurred_at.desc(), TrackingEvent.id.desc())
    total = session.scalar(select(func.count()).select_from(TrackingEvent).where(where))
    # The newest ids first, then the texts of those only: sorting rows with their texts reads every text.
    newest = select(TrackingEvent.id).where(where).order_by(*newest_first).limit(bounds.max_events).subquery()
    rows = session.execute(
        select(TrackingEvent.occurred_at, func.substr(TrackingEvent.location, 1, LOCATION_CHARS + 1),
               func.substr(TrackingEvent.description, 1, bounds.max_event_chars + 1),
               func.length(TrackingEvent.description))
        .join(newest, TrackingEvent.id == newest.c.id).order_by(*newest_first)).all()
    return _selected(rows, total, bounds)


def timeline_of(events: list[TrackingEvent], bounds: EvidenceBounds = DEFAULT_BOUNDS) -> Timeline:
    """The shown events of events already in memory (same rules as `load_timeline`)."""
    newest = sorted(events, key=lambda event: event.occurred_at, reverse=True)[:bounds.max_events]
    rows = [(event.occurred_at, event.location, (event.description or "")[:bounds.max_event_chars + 1],
             len(event.description or "")) for event in newest]
    return _selected(rows, len(events), bounds)


def refuse_oversized_page(width: int, height: int, bounds: EvidenceBounds) -> None:
    """EvidenceTooLargeError when a page of `width` x `height` px is larger than a screenshot may be."""
    if width > bounds.max_page_width or height > bounds.max_page_height:
        raise EvidenceTooLargeError(f"the evidence page is {width}x{height} px, over the limit of "
                                    f"{bounds.max_page_width}x{bounds.max_page_height} px")
