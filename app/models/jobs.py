from datetime import datetime

from sqlalchemy import Float, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime


class JobRun(Base):
    """One run of a periodic job: when it fell due, was sent, started and ended, and how.

    Beat writes the row when it sends (or skips) a due run, in the transaction that advances the
    job's last run with a compare-and-set, so two beats can never both record one due run. The
    worker fills in start, end and outcome. Runs sent by hand (`celery_beat_manager.py run`) have
    no due time. A due time recurs only after the host's clock went back.
    """

    __tablename__ = "job_runs"
    __table_args__ = (Index("ix_job_runs_name_due_at", "name", "due_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lateness_seconds: Mapped[float | None] = mapped_column(Float)  # sent_at - due_at
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # sending, sent, running, success, failure, lost, skipped_overlap, skipped_missed
    outcome: Mapped[str] = mapped_column(String(20), default="running")
    summary: Mapped[str | None] = mapped_column(Text)
