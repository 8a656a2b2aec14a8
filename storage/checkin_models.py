"""Tables of the daily health check-in: records (with history), alerts, quarantines, runs.

A record is one person's answers for one day and slot.  Answering again the same day marks the
old row ``replaced_at`` and adds a new one, so history is kept and exactly one row per
(person, day, slot) is current (a partial unique index holds that across processes).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from storage.models import Base, BigId, utcnow

ACTIVE_QUARANTINE = "status = 'active'"


class CheckinStatus:
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"


class CheckinRecord(Base):
    __tablename__ = "checkin_records"
    __table_args__ = (
        Index("ix_checkin_records_person_day", "person_id", "day"),
        Index("ix_checkin_records_region_day", "region_id", "day"),
        Index(
            "uq_checkin_records_current",
            "person_id",
            "day",
            "slot",
            unique=True,
            sqlite_where=text("replaced_at IS NULL"),
            postgresql_where=text("replaced_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    reporter_id: Mapped[int | None] = mapped_column(ForeignKey("people.id", ondelete="SET NULL"))
    """Who answered: the person, or a household member reporting for them."""
    region_id: Mapped[int | None] = mapped_column(BigId)
    """The person's grid when the record was made."""
    household_id: Mapped[int | None] = mapped_column(BigId)
    day: Mapped[date] = mapped_column(Date)
    """Local calendar day (config timezone)."""
    slot: Mapped[int] = mapped_column(Integer, default=0)
    """0 for the daily check-in; the slot index of a quarantine schedule otherwise."""
    status: Mapped[str] = mapped_column(String(16))
    risk: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    answers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    replaced_at: Mapped[datetime | None]


class CheckinAlert(Base):
    """A moderate or high record, told to the grid's staff; escalates until acknowledged."""

    __tablename__ = "checkin_alerts"
    __table_args__ = (Index("ix_checkin_alerts_due", "status", "next_escalation_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    record_id: Mapped[int] = mapped_column(
        ForeignKey("checkin_records.id", ondelete="CASCADE"), index=True
    )
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    region_id: Mapped[int | None] = mapped_column(BigId, index=True)
    level: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="open")
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    """How many region levels above the grid the alert has gone."""
    next_escalation_at: Mapped[datetime | None]
    acknowledged_by: Mapped[int | None] = mapped_column(BigId)
    acknowledged_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Quarantine(Base):
    """Home quarantine or health observation of one person, from ``start_day`` to ``end_day``
    (exclusive: the release day)."""

    __tablename__ = "checkin_quarantines"
    __table_args__ = (
        Index("ix_checkin_quarantines_status", "status", "end_day"),
        # One open period per person, even when two staff members (or the chat and the API)
        # start one at the same moment.
        Index(
            "uq_checkin_quarantines_open",
            "person_id",
            unique=True,
            sqlite_where=text(ACTIVE_QUARANTINE),
            postgresql_where=text(ACTIVE_QUARANTINE),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    start_day: Mapped[date] = mapped_column(Date)
    end_day: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_by: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(String(200))


class CheckinRun(Base):
    """A scheduled batch that has been done (``prompt:g12:2024-03-03``), so later ticks and a
    second scheduler skip it.  The outbox keys, not this mark, are what prevent a double send."""

    __tablename__ = "checkin_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
