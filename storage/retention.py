"""Keep personal data only as long as configured (PIPL): purge old logs and payloads."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.checkin import purge_checkin
from storage.models import (
    Conversation,
    InboundMessage,
    OutboxMessage,
    OutboxStatus,
    RawPayload,
    SimMessage,
    utcnow,
)
from storage.rosters import STAGED_FOR, purge_uploads
from storage.rumors import purge_rumors


async def purge_expired(conn: AsyncConnection, *, older_than: timedelta) -> dict[str, int]:
    """Delete what is older than ``older_than``; returns the number of rows per table.

    Finished outbox rows go too (their payload is personal text); pending ones never do.  A
    conversation abandoned that long ago loses what it held (a half-answered health check-in):
    it had expired anyway, so the next message starts afresh as it would have.
    """
    cutoff = utcnow() - older_than
    inbound = InboundMessage.__table__
    raw = RawPayload.__table__
    outbox = OutboxMessage.__table__
    sim = SimMessage.__table__
    conversations = Conversation.__table__
    finished = [OutboxStatus.SENT, OutboxStatus.FAILED, OutboxStatus.DEAD]
    counts = {
        "inbound_messages": (
            await conn.execute(delete(inbound).where(inbound.c.received_at < cutoff))
        ).rowcount,
        "raw_payloads": (
            await conn.execute(delete(raw).where(raw.c.received_at < cutoff))
        ).rowcount,
        "outbox": (
            await conn.execute(
                delete(outbox).where(outbox.c.created_at < cutoff, outbox.c.status.in_(finished))
            )
        ).rowcount,
        "sim_messages": (await conn.execute(delete(sim).where(sim.c.at < cutoff))).rowcount,
        "conversations": (
            await conn.execute(
                update(conversations)
                .where(conversations.c.expires_at < cutoff)
                .values(flow=None, state=None, data={}, expires_at=None)
            )
        ).rowcount,
    }
    counts.update(await purge_checkin(conn, cutoff=cutoff))
    counts.update(await purge_rumors(conn, cutoff=cutoff))
    # Staged roster files wait a day at most for their confirmation, whatever the retention.
    counts.update(await purge_uploads(conn, cutoff=max(cutoff, utcnow() - STAGED_FOR)))
    return {k: int(v or 0) for k, v in counts.items()}
