"""Tables of residents' requests (诉求): the requests, their escalation clocks, their timeline,
and the daily numbering.

A request keeps copies of its region's ancestors (community, street, district, city) so that
"everything under this street" is one indexed equality, and ``sla_due_at``: the deadline the
request is measured against now (accept while pending, resolve while accepted; ``NULL`` once
resolved).  Past it, the request is overdue and shows in supervision lists.

Who holds a request now and when it next moves up live in a narrow table of their own,
:class:`RequestClock`, one row per request.  The deadline sweep rewrites only that row, so an
escalation costs a short tuple and three index entries instead of a wide request row and every
index on it (all of them, as the update is not HOT).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from storage.models import Base, BigId, utcnow


class RequestStatus(enum.StrEnum):
    PENDING = "pending"  # 待受理
    ACCEPTED = "accepted"  # 办理中
    RESOLVED = "resolved"  # 已办结，待居民确认
    CLOSED = "closed"  # 已关闭


OPEN_STATUSES = (RequestStatus.PENDING, RequestStatus.ACCEPTED)


class ClockStage(enum.StrEnum):
    """Which deadline an open request's clock is running against."""

    ACCEPT = "accept"  # pending: somebody must accept it
    RESOLVE = "resolve"  # accepted: somebody must resolve it


# The clock's stage follows the request's status: none once resolved or closed.
STAGE_OF_STATUS: dict[str, ClockStage] = {
    RequestStatus.PENDING: ClockStage.ACCEPT,
    RequestStatus.ACCEPTED: ClockStage.RESOLVE,
}


class VolunteerStatus(enum.StrEnum):
    HANDED = "handed"  # 已派给志愿者，待接单
    ACCEPTED = "accepted"  # 志愿者已接单
    DELIVERED = "delivered"  # 志愿者已送达
    RECEIVED = "received"  # 居民已确认收到


class ResidentRequest(Base):
    __tablename__ = "requests"
    # The supervision lists, the resident's and the volunteer's lists.  A grid's list goes
    # through its community's index; a city's is a scan of the city's open requests.  The
    # handler's list and the sweep go through the clock's indexes.
    __table_args__ = (
        Index("ix_requests_community_sla", "community_id", "sla_due_at"),
        Index("ix_requests_street_sla", "street_id", "sla_due_at"),
        Index("ix_requests_district_sla", "district_id", "sla_due_at"),
        Index(
            "ix_requests_volunteer",
            "volunteer_id",
            "volunteer_status",
            postgresql_where=text("volunteer_id IS NOT NULL"),
            sqlite_where=text("volunteer_id IS NOT NULL"),
        ),
        Index("ix_requests_resident", "resident_id", "id"),
        Index(
            "ix_requests_resolved",
            "resolved_at",
            postgresql_where=text("status = 'resolved'"),
            sqlite_where=text("status = 'resolved'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    resident_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id"))
    community_id: Mapped[int | None] = mapped_column(BigId)
    street_id: Mapped[int | None] = mapped_column(BigId)
    district_id: Mapped[int | None] = mapped_column(BigId)
    city_id: Mapped[int | None] = mapped_column(BigId)
    category: Mapped[str] = mapped_column(String(16))
    urgency: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text)
    items: Mapped[str | None] = mapped_column(String(200))
    quantity: Mapped[str | None] = mapped_column(String(100))
    attachments: Mapped[list[Any]] = mapped_column(JSON, default=list)
    channel: Mapped[str] = mapped_column(String(32), default="")
    status: Mapped[str] = mapped_column(String(16), default=RequestStatus.PENDING)
    volunteer_id: Mapped[int | None] = mapped_column(BigId)
    volunteer_status: Mapped[str | None] = mapped_column(String(16))
    accept_due_at: Mapped[datetime]
    resolve_due_at: Mapped[datetime]
    sla_due_at: Mapped[datetime | None]
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    reply: Mapped[str | None] = mapped_column(Text)
    satisfied: Mapped[bool | None] = mapped_column(Boolean)
    rating: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    accepted_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]


class RequestClock(Base):
    """Who holds a request now, at which level, and when the deadline sweep next moves it.

    * ``stage``: the deadline running (accept while pending, resolve while accepted), ``NULL``
      once the request is resolved or closed; set from the request's status by
      :func:`storage.requests_repo.update_request`, never on its own.
    * ``escalate_at``: when the sweep next moves the request one level up; ``NULL`` when the
      request is not open or there is nothing left to escalate.  The sweep's conditional UPDATE
      on this column and ``level`` is what makes escalating twice impossible.
    * ``category``, ``urgency`` and ``place_id``: copies of what the sweep needs from the
      request (the escalation window, and the region whose chain of ancestors it escalates
      along: the lowest of the request's community, street, district and city), so that a page
      reads only clock rows and not one request row per escalation; written with the request
      by :func:`storage.requests_repo.insert_request` and ``update_request``.
    """

    __tablename__ = "request_clocks"
    __table_args__ = (
        Index(
            "ix_request_clocks_due",
            "escalate_at",
            postgresql_where=text("escalate_at IS NOT NULL"),
            sqlite_where=text("escalate_at IS NOT NULL"),
        ),
        Index(
            "ix_request_clocks_handler",
            "handler_id",
            postgresql_where=text("stage IS NOT NULL"),
            sqlite_where=text("stage IS NOT NULL"),
        ),
    )

    request_id: Mapped[int] = mapped_column(
        BigId,
        ForeignKey("requests.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    )
    level: Mapped[str] = mapped_column(String(16))
    handler_id: Mapped[int | None] = mapped_column(BigId)
    stage: Mapped[str | None] = mapped_column(String(8))
    escalate_at: Mapped[datetime | None]
    escalations: Mapped[int] = mapped_column(Integer, default=0)
    category: Mapped[str] = mapped_column(String(16))
    urgency: Mapped[str] = mapped_column(String(16))
    place_id: Mapped[int | None] = mapped_column(BigId)


class RequestEvent(Base):
    """One step of a request's timeline: who did what, when, and to whom it went.

    ``request_id`` has no foreign key: a per-row check would cost as much as the rest of an
    escalation together (the sweep writes one event per escalated request).  Events are only
    written for a request that exists (a desk action holds its row; the sweep writes from the
    clock rows it holds, which do have a key); whoever deletes requests deletes their events.
    """

    __tablename__ = "request_events"
    __table_args__ = (Index("ix_request_events_request", "request_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int] = mapped_column(BigId)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    actor_id: Mapped[int | None] = mapped_column(BigId)
    person_id: Mapped[int | None] = mapped_column(BigId)
    level: Mapped[str | None] = mapped_column(String(16))
    text: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RequestSweepState(Base):
    """One row: the timeline event up to which the deadline sweep has alerted handlers.

    Escalation alerts are made from the timeline after the pages that wrote it (one alert per
    handler and run, not per page).  Each page holds this row in share mode while it writes
    its events and the alert step holds it exclusively (PostgreSQL), so when the alert step
    reads the newest event id, every escalation event up to it has been committed."""

    __tablename__ = "request_sweep_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    alerted_event_id: Mapped[int] = mapped_column(BigId, default=0)


class RequestCounter(Base):
    """The last request number given out on a local day (numbers restart every day)."""

    __tablename__ = "request_counters"

    day: Mapped[str] = mapped_column(String(8), primary_key=True)
    last: Mapped[int] = mapped_column(Integer, default=0)
