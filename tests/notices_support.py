"""Helpers shared by the notices tests: chat through the simulator, outbox and table counts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from storage.models import AuditEntry, OutboxMessage, Person, Region, SimMessage
from storage.notices_models import Notice, NoticeAck

outbox = OutboxMessage.__table__
notices = Notice.__table__
acks = NoticeAck.__table__
audit = AuditEntry.__table__
people = Person.__table__
regions = Region.__table__
sim_messages = SimMessage.__table__

NO_QUIET = {"quiet_hours": False}


def notice_config(make_config: Any, **notices_section: Any) -> Any:
    """A test config with quiet hours off (tests must not depend on the wall clock)."""
    return make_config(notices={**NO_QUIET, **notices_section})


async def say(client: Any, person_id: int, text: str, *, chat: str | None = None) -> str:
    """Send ``text`` as a demo person through the simulator; the replies, joined."""
    body: dict[str, Any] = {"address": f"sim-{person_id}", "text": text}
    if chat is not None:
        body["chat"] = chat
    r = await client.post("/sim/api/send", json=body)
    assert r.status == 200, await r.text()
    return "\n".join((await r.json())["replies"])


async def scalar(db: Any, query: Any) -> Any:
    async with db.read() as conn:
        return (await conn.execute(query)).scalar()


async def count(db: Any, table: Any, *where: Any) -> int:
    return int(await scalar(db, select(func.count()).select_from(table).where(*where)) or 0)


async def notice_rows(db: Any) -> list[Any]:
    async with db.read() as conn:
        return list(await conn.execute(select(notices).order_by(notices.c.id)))


async def outbox_of(db: Any, notice_id: int, ref_type: str = "notice") -> list[Any]:
    async with db.read() as conn:
        return list(
            await conn.execute(
                select(outbox)
                .where(outbox.c.ref_id == notice_id, outbox.c.ref_type == ref_type)
                .order_by(outbox.c.id)
            )
        )


async def people_in(db: Any, region_code: str, *, exclude: int | None = None) -> set[int]:
    """Ids of the people living anywhere under a region (what a notice reaches)."""
    async with db.read() as conn:
        path = (
            await conn.execute(select(regions.c.path).where(regions.c.code == region_code))
        ).scalar_one()
        rows = await conn.execute(
            select(people.c.id)
            .join(regions, regions.c.id == people.c.region_id)
            .where(regions.c.path.startswith(path), people.c.opted_out.is_(False))
        )
        return {r.id for r in rows} - ({exclude} if exclude else set())


async def deliver_all(rt: Any) -> int:
    """Run delivery until nothing due is left; returns how many rows were claimed."""
    total = 0
    while claimed := await rt.delivery.run_once():
        total += claimed
    return total


async def compose(
    client: Any,
    sender: int,
    *,
    text: str = "明天上午9点到11点停水，请提前储水。",
    audience: str,
    ack: str = "需要",
    when: str = "现在",
) -> str:
    """Walk the "发通知" flow up to the preview; returns the preview."""
    reply = await say(client, sender, "发通知")
    assert "通知内容" in reply, reply
    reply = await say(client, sender, text)
    assert "发给谁" in reply, reply
    reply = await say(client, sender, audience)
    assert "确认吗" in reply, reply
    reply = await say(client, sender, ack)
    assert "什么时候发" in reply, reply
    return await say(client, sender, when)
