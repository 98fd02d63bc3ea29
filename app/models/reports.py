"""Periodic reports and alert incidents."""

from datetime import date, datetime

from sqlalchemy import JSON, Date, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class Report(Base):
    """The numbers of one period (daily, weekly, monthly); re-running a period replaces its row."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("kind", "period_start"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # daily | weekly | monthly
    period_start: Mapped[date] = mapped_column(Date)  # first day, Asia/Shanghai
    period_end: Mapped[date] = mapped_column(Date)  # day after the last day
    generated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    data: Mapped[dict] = mapped_column(JSON)
    html_path: Mapped[str | None] = mapped_column(String(300))  # relative to the reports root
    csv_path: Mapped[str | None] = mapped_column(String(300))


class AlertIncident(Base):
    """One incident: opened once (one alert), seen again without a new alert, closed on recovery."""

    __tablename__ = "alert_incidents"
    __table_args__ = (Index("ix_alert_incidents_key_open", "key", "closed_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200))  # e.g. "health:database", "job:backup-database"
    severity: Mapped[str] = mapped_column(String(20))  # warning | critical
    summary: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the opening alert reached the webhook
    recovery_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
