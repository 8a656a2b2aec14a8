"""Tables of the notices feature: the notice itself and the acknowledgements it received.

Delivery state lives in the outbox: one row per recipient and per group chat, keyed
``notice:<id>:p<person id>`` / ``notice:<id>:g<group id>``, with ``ref_type = "notice"`` and
``ref_id`` the notice.  Further rows of the same notice (later parts of a split text,
reminders) have ``ref_type = "notice+"``, so that the ``notice`` rows are exactly the audience.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.naming import conv

from storage.models import Base, BigId, OutboxMessage, utcnow

REF_TARGET = "notice"
"""``outbox.ref_type`` of a notice's first row to each target (the audience)."""
REF_EXTRA = "notice+"
"""``outbox.ref_type`` of a notice's other rows: later parts of a split text, reminders."""


class NoticeStatus(enum.StrEnum):
    SCHEDULED = "scheduled"  # waiting for send_at; may be edited or cancelled
    QUEUING = "queuing"  # outbox rows being written (a crash resumes from queue_cursor)
    SENT = "sent"  # every outbox row written; delivery is the outbox's business
    CANCELLED = "cancelled"


class Notice(Base):
    __tablename__ = "notices"
    __table_args__ = (Index("ix_notices_due", "status", "send_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(8), unique=True)
    """Short code residents may reply with to acknowledge (e.g. ``K7M2``)."""
    sender_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    audience: Mapped[dict[str, Any]] = mapped_column()
    """``{"region_ids": [...], "groups": bool, "individuals": bool, "roles": [...]}``"""
    scope_path: Mapped[str] = mapped_column(String(255), index=True)
    """Path of the smallest region holding the whole audience (who may see the notice)."""
    ack_required: Mapped[bool] = mapped_column(Boolean, default=False)
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=NoticeStatus.SCHEDULED)
    send_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    rendered: Mapped[str | None] = mapped_column(Text)
    """The text as recipients got it (rendered when queuing started)."""
    queue_cursor: Mapped[int] = mapped_column(BigId, default=0)
    """Recipients with a person id up to this one are queued (resume point after a crash)."""
    groups_queued: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_until: Mapped[datetime | None]
    """A process queuing the notice holds it until then."""
    resend_count: Mapped[int] = mapped_column(Integer, default=0)
    last_resent_at: Mapped[datetime | None]


class NoticeAck(Base):
    """One acknowledgement: a recipient's own, or a group's (given by one of its members)."""

    __tablename__ = "notice_acks"
    __table_args__ = (
        UniqueConstraint("notice_id", "person_id", name=conv("uq_notice_acks_person")),
        UniqueConstraint("notice_id", "group_id", name=conv("uq_notice_acks_group")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    notice_id: Mapped[int] = mapped_column(ForeignKey("notices.id", ondelete="CASCADE"))
    person_id: Mapped[int | None] = mapped_column(BigId)
    """The recipient who acknowledged (``None`` for a group's acknowledgement)."""
    group_id: Mapped[int | None] = mapped_column(BigId)
    """The group acknowledged for (``None`` for a person's own acknowledgement)."""
    member_person_id: Mapped[int | None] = mapped_column(BigId)
    member: Mapped[str] = mapped_column(String(128), default="")
    """Who in the group replied (their chat name or account), for the sender's view."""
    via: Mapped[str] = mapped_column(String(16), default="reply")
    acked_at: Mapped[datetime] = mapped_column(default=utcnow)


_outbox = OutboxMessage.__table__

# Receipts count a notice's first rows (one per target); acknowledgements in a group look up
# the notices sent to that group.  Both on the shared outbox, partial (only the rows they
# serve), and on integer columns, so that they cost the outbox's other writers nothing and a
# large notice little.
Index(
    "ix_outbox_notice_ref",
    _outbox.c.ref_id,
    sqlite_where=text(f"ref_type = '{REF_TARGET}'"),
    postgresql_where=text(f"ref_type = '{REF_TARGET}'"),
)
Index(
    "ix_outbox_notice_group",
    _outbox.c.group_id,
    _outbox.c.ref_type,
    sqlite_where=_outbox.c.group_id.isnot(None),
    postgresql_where=_outbox.c.group_id.isnot(None),
)
