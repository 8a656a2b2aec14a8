"""The outbox: every message the system initiates is a row, delivered at least once, sent once.

Status moves forward only: ``pending -> sending -> sent | failed | dead``.  The one step back,
``sending -> pending``, is a worker releasing a claim it did not use (a rate limit was full); the
attempt is not counted.  A row left in ``sending`` by a worker that died is claimed again once
its claim is older than the claim timeout, carrying the same idempotency key.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, and_, bindparam, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import (
    ChatGroup,
    Identity,
    OutboxMessage,
    OutboxStatus,
    Person,
    UTCDateTime,
    utcnow,
)
from storage.storable import fit_key

outbox = OutboxMessage.__table__
identities = Identity.__table__
groups = ChatGroup.__table__
people = Person.__table__
KEY_LENGTH = 200  # outbox.key
OUTBOX_COLUMNS = (
    "key",
    "channel",
    "target_kind",
    "target",
    "rate_key",
    "person_id",
    "group_id",
    "payload",
    "status",
    "attempts",
    "next_attempt_at",
    "ref_type",
    "ref_id",
    "created_at",
)
"""The columns an ``INSERT INTO outbox ... SELECT`` fills, in order (the rest have defaults)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a message goes on one channel: a user, a group chat or a group robot."""

    channel: str
    kind: str  # "user" | "chat" | "robot"
    address: str

    @property
    def rate_key(self) -> str:
        return f"{self.channel}:{self.kind}:{self.address}"


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    id: int
    key: str
    channel: str
    target: Target
    payload: dict[str, Any]
    attempts: int
    person_id: int | None
    group_id: int | None


def outbox_row(
    *,
    key: str,
    target: Target,
    payload: dict[str, Any],
    person_id: int | None = None,
    group_id: int | None = None,
    not_before: datetime | None = None,
    ref_type: str | None = None,
    ref_id: int | None = None,
) -> dict[str, Any]:
    now = utcnow()
    return {
        "key": key,
        "channel": target.channel,
        "target_kind": target.kind,
        "target": target.address,
        "rate_key": target.rate_key,
        "person_id": person_id,
        "group_id": group_id,
        "payload": payload,
        "status": OutboxStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": not_before or now,
        "ref_type": ref_type,
        "ref_id": ref_id,
        "created_at": now,
    }


async def enqueue(
    conn: AsyncConnection, rows: Sequence[dict[str, Any]], insert_ignore: Any
) -> None:
    """Insert outbox rows; a row whose key exists already is skipped (idempotent)."""
    if rows:
        await conn.execute(insert_ignore, list(rows))


async def person_target(conn: AsyncConnection, person_id: int) -> Target | None:
    """The channel account a person was last seen on; ``None`` if unreachable or opted out."""
    row = (
        await conn.execute(
            select(identities.c.channel, identities.c.external_id)
            .join(people, people.c.id == identities.c.person_id)
            .where(identities.c.person_id == person_id, people.c.opted_out.is_(False))
            .order_by(identities.c.last_seen_at.desc().nulls_last(), identities.c.id.desc())
            .limit(1)
        )
    ).first()
    return Target(row.channel, "user", row.external_id) if row else None


async def group_target(conn: AsyncConnection, group_id: int) -> Target | None:
    row = (await conn.execute(select(groups).where(groups.c.id == group_id))).first()
    if row is None:
        return None
    if row.robot_key:
        return Target(row.channel, "robot", row.robot_key)
    return Target(row.channel, "chat", row.external_id)


async def recipient_row(
    conn: AsyncConnection,
    *,
    key: str,
    text: str,
    person_id: int | None = None,
    group_id: int | None = None,
    not_before: datetime | None = None,
    ref_type: str | None = None,
    ref_id: int | None = None,
) -> dict[str, Any] | None:
    """The outbox row for a message to a person (on the channel they last used) or to a group
    chat; ``None`` when there is no way to reach them (no account, or opted out)."""
    if person_id is not None:
        target = await person_target(conn, person_id)
    elif group_id is not None:
        target = await group_target(conn, group_id)
    else:
        raise ValueError("a recipient needs a person_id or a group_id")
    if target is None:
        return None
    return outbox_row(
        key=key,
        target=target,
        payload={"text": text},
        person_id=person_id,
        group_id=group_id,
        not_before=not_before,
        ref_type=ref_type,
        ref_id=ref_id,
    )


async def claim_due(
    conn: AsyncConnection,
    *,
    limit: int,
    claim_timeout: timedelta,
    skip_locked: bool,
    now: datetime | None = None,
) -> list[ClaimedMessage]:
    """Move up to ``limit`` due rows to ``sending`` and return them.

    Due: ``sending`` with a claim older than the timeout (its worker died between claim and
    result), then pending rows whose ``next_attempt_at`` has come, oldest first.  Each kind is
    one UPDATE over an index range (``status, next_attempt_at``), never a scan of the backlog.
    """
    now = now or utcnow()
    stale = await _claim(
        conn,
        select(outbox.c.id)
        .where(outbox.c.status == OutboxStatus.SENDING, outbox.c.claimed_at < now - claim_timeout)
        .limit(limit),
        now,
        skip_locked,
    )
    if len(stale) >= limit:
        return stale
    pending = await _claim(
        conn,
        select(outbox.c.id)
        .where(outbox.c.status == OutboxStatus.PENDING, outbox.c.next_attempt_at <= now)
        .order_by(outbox.c.next_attempt_at)
        .limit(limit - len(stale)),
        now,
        skip_locked,
    )
    return stale + pending


async def _claim(
    conn: AsyncConnection, candidates: Any, now: datetime, skip_locked: bool
) -> list[ClaimedMessage]:
    if skip_locked:
        candidates = candidates.with_for_update(skip_locked=True)
    result = await conn.execute(
        update(outbox)
        .where(outbox.c.id.in_(candidates.scalar_subquery()))
        .values(status=OutboxStatus.SENDING, claimed_at=now, attempts=outbox.c.attempts + 1)
        .returning(
            outbox.c.id,
            outbox.c.key,
            outbox.c.channel,
            outbox.c.target_kind,
            outbox.c.target,
            outbox.c.payload,
            outbox.c.attempts,
            outbox.c.person_id,
            outbox.c.group_id,
        )
    )
    return [
        ClaimedMessage(
            r.id,
            r.key,
            r.channel,
            Target(r.channel, r.target_kind, r.target),
            r.payload,
            r.attempts,
            r.person_id,
            r.group_id,
        )
        for r in result
    ]


async def recent_sends(
    conn: AsyncConnection,
    rate_keys: Iterable[str],
    *,
    since: datetime,
    own_claims: Sequence[int] = (),
) -> dict[str, int]:
    """How many messages went to each target since ``since`` (for per-target rate limits):
    those sent, and those another worker claimed since then and is sending now (rows in
    ``own_claims``, the caller's own batch, are not counted)."""
    keys = list(set(rate_keys))
    if not keys:
        return {}
    in_flight = and_(outbox.c.status == OutboxStatus.SENDING, outbox.c.claimed_at >= since)
    if own_claims:
        in_flight = and_(in_flight, outbox.c.id.notin_(list(own_claims)))
    rows = await conn.execute(
        select(outbox.c.rate_key, func.count())
        .where(outbox.c.rate_key.in_(keys), or_(outbox.c.sent_at >= since, in_flight))
        .group_by(outbox.c.rate_key)
    )
    return {row[0]: int(row[1]) for row in rows}


async def mark_sent(
    conn: AsyncConnection, results: Sequence[tuple[int, str | None]], now: datetime | None = None
) -> None:
    """Record successful sends: ``(row id, platform message id)`` pairs, in one statement."""
    if not results:
        return
    now = now or utcnow()
    stmt = (
        update(outbox)
        .where(outbox.c.id == bindparam("row_id"), outbox.c.status == OutboxStatus.SENDING)
        .values(
            status=OutboxStatus.SENT,
            sent_at=now,
            last_error=None,
            platform_msg_id=bindparam("msg_id"),
        )
    )
    await conn.execute(stmt, [{"row_id": rid, "msg_id": mid} for rid, mid in results])


async def mark_failed(
    conn: AsyncConnection,
    message: ClaimedMessage,
    *,
    error: str,
    retry_at: datetime | None,
    dead: bool = False,
) -> bool:
    """A failed attempt: back to pending at ``retry_at``, or ``failed``/``dead`` for good.

    Only while the row is still in this claim (``sending``, with the attempt count the claim
    gave it): an attempt that outlived the claim timeout was claimed again by another worker,
    which may have sent it meanwhile or be sending it now.  ``False`` if the row had moved on.
    """
    if retry_at is not None:
        values: dict[str, Any] = {"status": OutboxStatus.PENDING, "next_attempt_at": retry_at}
    else:
        values = {"status": OutboxStatus.DEAD if dead else OutboxStatus.FAILED}
    result = await conn.execute(
        update(outbox)
        .where(
            outbox.c.id == message.id,
            outbox.c.status == OutboxStatus.SENDING,
            outbox.c.attempts == message.attempts,
        )
        .values(last_error=error[:500], claimed_at=None, **values)
    )
    return bool(result.rowcount)


async def release(conn: AsyncConnection, row_ids: Sequence[int], *, not_before: datetime) -> None:
    """Give back claimed rows that were not attempted (their target's rate limit was full)."""
    if row_ids:
        await conn.execute(
            update(outbox)
            .where(outbox.c.id.in_(list(row_ids)), outbox.c.status == OutboxStatus.SENDING)
            .values(
                status=OutboxStatus.PENDING,
                next_attempt_at=not_before,
                claimed_at=None,
                attempts=outbox.c.attempts - 1,
            )
        )


def part_key(key: str, number: int) -> str:
    """The key of part ``number`` (2, 3, ...) of the row keyed ``key``: ``key#number``, or a
    digest of ``key`` with the suffix when that would not fit the column."""
    return fit_key(key, KEY_LENGTH, f"#{number}")


def answer_key(kind: str, channel: str, dedupe_key: str, number: int) -> str:
    """The key of the ``number``-th message of ``kind`` (``reply`` to the sender, or ``msg`` to
    someone else) sent in answer to the inbound message ``dedupe_key`` on ``channel``; a digest
    stands in for the message part when the key would not fit the column."""
    return fit_key(f"{kind}:{channel}:{dedupe_key}", KEY_LENGTH, f":{number}")


async def split_row(
    conn: AsyncConnection,
    message: ClaimedMessage,
    parts: Sequence[str],
    *,
    now: datetime,
    gap: timedelta,
) -> None:
    """A claimed row whose text is too long for its channel keeps the first part; every
    further part becomes a pending row of its own, with the same target and references, keyed
    :func:`part_key` and due ``gap`` after the part before.

    Run in the claim's transaction: a crash before it commits leaves the row whole, and after
    it the row carries its first part only, so it is never split twice; the part keys make the
    inserts idempotent all the same."""
    await conn.execute(
        update(outbox)
        .where(outbox.c.id == message.id)
        .values(payload={**message.payload, "text": parts[0]})
    )
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    for number, text in enumerate(parts[1:], start=2):
        copy = select(
            literal(part_key(message.key, number)),
            outbox.c.channel,
            outbox.c.target_kind,
            outbox.c.target,
            outbox.c.rate_key,
            outbox.c.person_id,
            outbox.c.group_id,
            literal({**message.payload, "text": text}, JSON()),
            literal(OutboxStatus.PENDING.value),
            literal(0),
            literal(now + gap * (number - 1), UTCDateTime()),
            outbox.c.ref_type,
            outbox.c.ref_id,
            literal(now, UTCDateTime()),
        ).where(outbox.c.id == message.id)
        await conn.execute(
            dialect.insert(outbox).from_select(list(OUTBOX_COLUMNS), copy).on_conflict_do_nothing()
        )


def backoff_delay(attempts: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempts)]."""
    return rng.uniform(base / 2, min(cap, base * (2 ** max(0, attempts - 1))))
