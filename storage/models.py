"""SQLAlchemy 2 models: one schema for SQLite and PostgreSQL.

Times are stored as UTC (naive in the database, aware in Python).  Regions carry a materialized
``path`` ("/1/4/9/") so that "everything under this node" is one indexed prefix match.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Integer primary keys: BIGINT on PostgreSQL, INTEGER (rowid alias) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")
MAX_ID = 2**63 - 1
"""The largest id a ``BigId`` column holds: the bound of every id taken from a request."""
ID_DIGITS = len(str(MAX_ID))


def is_number(raw: str) -> bool:
    """ASCII digits, no more than an id can have: ``int()`` refuses "²" and raises on thousands
    of digits, which would make a bad request parameter a 500."""
    return raw.isascii() and raw.isdigit() and len(raw) <= ID_DIGITS


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database (same on both engines)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }
    if TYPE_CHECKING:
        # Every model here is mapped to a plain Table; say so for the type checker.
        __table__: ClassVar[Table]


class RegionLevel(enum.StrEnum):
    CITY = "city"
    DISTRICT = "district"
    STREET = "street"
    COMMUNITY = "community"
    GRID = "grid"


LEVEL_ORDER = [
    RegionLevel.CITY,
    RegionLevel.DISTRICT,
    RegionLevel.STREET,
    RegionLevel.COMMUNITY,
    RegionLevel.GRID,
]


class Role(enum.StrEnum):
    RESIDENT = "resident"
    WARDEN = "warden"
    DOCTOR = "doctor"
    VOLUNTEER = "volunteer"
    ADMIN = "admin"


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    DEAD = "dead"


class Region(Base):
    __tablename__ = "regions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    level: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id"), index=True)
    path: Mapped[str] = mapped_column(String(255), index=True)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Household(Base):
    __tablename__ = "households"
    __table_args__ = (UniqueConstraint("region_id", "building", "door"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id"), index=True)
    building: Mapped[str] = mapped_column(String(64), default="")
    door: Mapped[str] = mapped_column(String(64), default="")


class Person(Base):
    __tablename__ = "people"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    phone: Mapped[str | None] = mapped_column(String(32), index=True)
    region_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id"), index=True)
    household_id: Mapped[int | None] = mapped_column(ForeignKey("households.id"), index=True)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PersonRole(Base):
    """A role a person holds, over a scope: a warden over a grid, an admin over a street."""

    __tablename__ = "person_roles"
    __table_args__ = (UniqueConstraint("person_id", "role", "scope_region_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    scope_region_id: Mapped[int] = mapped_column(ForeignKey("regions.id"), index=True)


class Identity(Base):
    """A person's account on one channel (an openid, a WeCom userid, a bridge user id)."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None]


class ChatGroup(Base):
    """A group chat bound to a grid: a WeCom app chat, a robot group or a bridge group."""

    __tablename__ = "chat_groups"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128), default="")
    purpose: Mapped[str] = mapped_column(String(16), default="residents")
    robot_key: Mapped[str | None] = mapped_column(String(128))


class Conversation(Base):
    """Where a person (or an unknown sender) stands in a flow; the row is also their lock."""

    __tablename__ = "conversations"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    flow: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    expires_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class InboundMessage(Base):
    """Every inbound message, unique by channel and dedupe key; keeps the replies it got."""

    __tablename__ = "inbound_messages"
    __table_args__ = (UniqueConstraint("channel", "dedupe_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(200))
    sender_id: Mapped[str] = mapped_column(String(128))
    chat_id: Mapped[str | None] = mapped_column(String(128))
    person_id: Mapped[int | None] = mapped_column(BigId, index=True)
    kind: Mapped[str] = mapped_column(String(16), default="text")
    text: Mapped[str] = mapped_column(Text, default="")
    replies: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class RawPayload(Base):
    """A body that verified but could not be parsed, kept (size-capped) for inspection."""

    __tablename__ = "raw_payloads"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_rate", "rate_key", "sent_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    channel: Mapped[str] = mapped_column(String(32))
    target_kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(200))
    rate_key: Mapped[str] = mapped_column(String(240))
    person_id: Mapped[int | None] = mapped_column(BigId, index=True)
    group_id: Mapped[int | None] = mapped_column(BigId)
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    platform_msg_id: Mapped[str | None] = mapped_column(String(128), index=True)
    ref_type: Mapped[str | None] = mapped_column(String(32))
    ref_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(BigId, index=True)
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32), default="")
    target_id: Mapped[str] = mapped_column(String(64), default="")
    region_id: Mapped[int | None] = mapped_column(BigId)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class PlatformToken(Base):
    """A platform access token (official account, WeCom corp), shared by every process."""

    __tablename__ = "platform_tokens"

    app_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    token: Mapped[str] = mapped_column(String(512), default="")
    expires_at: Mapped[datetime | None]
    refreshing_until: Mapped[datetime | None]


class SimMessage(Base):
    """A message the web simulator's channel delivered (to a person or a demo group chat)."""

    __tablename__ = "sim_messages"
    __table_args__ = (Index("ix_sim_messages_target", "target_kind", "target", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    target_kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(200))
    sender: Mapped[str] = mapped_column(String(128), default="")
    text: Mapped[str] = mapped_column(Text)
    outbox_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
