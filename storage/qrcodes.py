"""Queries of the grids' permanent QR codes: read, claim the creation, store the ticket.

Creating a permanent code calls the platform, which must not happen inside a transaction
(SQLite has one writer) nor twice for one grid (the account's permanent codes are limited).  So
a creator first claims the row for a short lease in one transaction, calls the platform with no
transaction open, and stores the answer only while its lease is still the row's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.people_models import GridQrCode

grid_qr_codes = GridQrCode.__table__


@dataclass(frozen=True, slots=True)
class StoredQr:
    region_id: int
    scene: str
    ticket: str
    url: str
    created_at: datetime | None


def _stored(row: Any) -> StoredQr | None:
    if row is None or not row.ticket or not row.url:
        return None
    return StoredQr(row.region_id, row.scene, row.ticket, row.url, row.created_at)


async def stored_qr(conn: AsyncConnection, region_id: int) -> StoredQr | None:
    """The grid's created QR code, or None."""
    row = (
        await conn.execute(select(grid_qr_codes).where(grid_qr_codes.c.region_id == region_id))
    ).first()
    return _stored(row)


async def stored_qrs(conn: AsyncConnection, region_ids: list[int]) -> dict[int, StoredQr]:
    """The created QR codes of several grids, by region id."""
    if not region_ids:
        return {}
    rows = await conn.execute(
        select(grid_qr_codes).where(grid_qr_codes.c.region_id.in_(region_ids))
    )
    found = {}
    for row in rows:
        qr = _stored(row)
        if qr is not None:
            found[qr.region_id] = qr
    return found


async def claim_qr(
    conn: AsyncConnection,
    insert_ignore: Any,
    *,
    region_id: int,
    scene: str,
    now: datetime,
    lease: timedelta,
    row_lock: bool,
) -> StoredQr | datetime | None:
    """In the caller's (short) transaction: the stored code, or our lease to create it, or
    None while another creator's lease runs."""
    await conn.execute(insert_ignore.values(region_id=region_id, scene=scene))
    query = select(grid_qr_codes).where(grid_qr_codes.c.region_id == region_id)
    if row_lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).one()
    stored = _stored(row)
    if stored is not None:
        return stored
    if row.claimed_until is not None and row.claimed_until > now:
        return None
    until = now + lease
    await conn.execute(
        update(grid_qr_codes)
        .where(grid_qr_codes.c.region_id == region_id)
        .values(claimed_until=until, scene=scene)
    )
    return until


async def store_qr(
    conn: AsyncConnection,
    *,
    region_id: int,
    lease: datetime,
    ticket: str,
    url: str,
    now: datetime,
    actor_id: int | None,
) -> bool:
    """Store the platform's answer if our lease is still the row's; True when stored."""
    result = await conn.execute(
        update(grid_qr_codes)
        .where(grid_qr_codes.c.region_id == region_id, grid_qr_codes.c.claimed_until == lease)
        .values(ticket=ticket, url=url, created_at=now, created_by=actor_id, claimed_until=None)
    )
    return bool(result.rowcount)


async def release_qr_claim(conn: AsyncConnection, *, region_id: int, lease: datetime) -> None:
    """Give the lease back after a failed call, so the next request may try at once."""
    await conn.execute(
        update(grid_qr_codes)
        .where(grid_qr_codes.c.region_id == region_id, grid_qr_codes.c.claimed_until == lease)
        .values(claimed_until=None)
    )
