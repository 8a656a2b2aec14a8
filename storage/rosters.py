"""Queries of staged roster uploads: kept between the error report and the confirmed import."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import utcnow
from storage.people_models import RosterUpload

roster_uploads = RosterUpload.__table__

STAGED_FOR = timedelta(hours=24)
"""How long an upload waits for its confirmation before it is refused and purged."""


async def stage_upload(
    conn: AsyncConnection, *, person_id: int, filename: str, content: bytes
) -> int:
    """Keep an uploaded file for its uploader; returns its id."""
    result = await conn.execute(
        insert(roster_uploads).values(
            person_id=person_id,
            filename=filename[:255],
            size=len(content),
            content=content,
            created_at=utcnow(),
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


async def staged_upload(
    conn: AsyncConnection, upload_id: int, *, person_id: int, newer_than: datetime
) -> Any | None:
    """The upload if it is this person's and not stale, else None."""
    return (
        await conn.execute(
            select(roster_uploads).where(
                roster_uploads.c.id == upload_id,
                roster_uploads.c.person_id == person_id,
                roster_uploads.c.created_at > newer_than,
            )
        )
    ).first()


async def delete_upload(conn: AsyncConnection, upload_id: int) -> None:
    await conn.execute(delete(roster_uploads).where(roster_uploads.c.id == upload_id))


async def purge_uploads(conn: AsyncConnection, *, cutoff: datetime) -> dict[str, int]:
    """Delete uploads staged before ``cutoff`` (they hold names and phone numbers)."""
    result = await conn.execute(delete(roster_uploads).where(roster_uploads.c.created_at < cutoff))
    return {"roster_uploads": int(result.rowcount or 0)}
