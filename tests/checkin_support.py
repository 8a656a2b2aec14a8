"""Helpers shared by the check-in tests: chat through the simulator, read what was stored."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from storage.checkin import alerts, outbox, people, quarantines, records
from storage.models import utcnow

TZ = ZoneInfo("Asia/Shanghai")
# A full, normal set of answers to the default questionnaire (after "打卡").
NORMAL = ["36.5", "没有", "否", "否", "1"]


async def send(client: Any, person_id: int, text: str, *, chat: str | None = None) -> str:
    """Send ``text`` as person ``person_id`` through the simulator; the replies, joined."""
    body: dict[str, Any] = {"address": f"sim-{person_id}", "text": text}
    if chat:
        body["chat"] = chat
    r = await client.post("/sim/api/send", json=body)
    assert r.status == 200, await r.text()
    return "\n".join((await r.json())["replies"])


async def converse(client: Any, person_id: int, *texts: str) -> list[str]:
    return [await send(client, person_id, t) for t in texts]


def today() -> date:
    return utcnow().astimezone(TZ).date()


def local(day: date, hour: int, minute: int = 0) -> datetime:
    """An aware datetime at ``hour:minute`` Shanghai time on ``day``."""
    return datetime.combine(day, time(hour, minute), tzinfo=TZ)


async def current_records(db: Any, person_id: int) -> list[Any]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(records)
            .where(records.c.person_id == person_id, records.c.replaced_at.is_(None))
            .order_by(records.c.id)
        )
        return list(rows)


async def all_records(db: Any, person_id: int | None = None) -> list[Any]:
    async with db.read() as conn:
        query = select(records).order_by(records.c.id)
        if person_id is not None:
            query = query.where(records.c.person_id == person_id)
        return list(await conn.execute(query))


async def outbox_rows(db: Any, prefix: str = "checkin:") -> list[Any]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(outbox).where(outbox.c.key.startswith(prefix)).order_by(outbox.c.id)
        )
        return list(rows)


async def count(db: Any, table: Any) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)


async def grid_people(db: Any, grid_id: int) -> list[Any]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(people).where(people.c.region_id == grid_id).order_by(people.c.id)
        )
        return list(rows)


async def alert_rows(db: Any) -> list[Any]:
    async with db.read() as conn:
        return list(await conn.execute(select(alerts).order_by(alerts.c.id)))


async def quarantine_rows(db: Any) -> list[Any]:
    async with db.read() as conn:
        return list(await conn.execute(select(quarantines).order_by(quarantines.c.id)))
