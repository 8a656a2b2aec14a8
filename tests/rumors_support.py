"""Helpers shared by the rumor tests: chat through the simulator, the API, table reads.

Every claim and post in these tests is invented; none comes from the evaluation set.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select, text

from bot.api import PREFIX, create_token
from storage import repo
from storage.models import AuditEntry, OutboxMessage, SimMessage
from storage.rumor_models import (
    Clarification,
    ClarificationHistory,
    Delivery,
    Question,
    ReviewItem,
)

outbox = OutboxMessage.__table__
audit = AuditEntry.__table__
sim_messages = SimMessage.__table__
clarifications = Clarification.__table__
history = ClarificationHistory.__table__
questions = Question.__table__
items = ReviewItem.__table__
deliveries = Delivery.__table__

BASE = f"{PREFIX}/rumors"

LIQUOR = {
    "claim": "喝高度白酒可以预防新冠病毒感染",
    "verdict": "false",
    "explanation": "酒精不能预防病毒感染，过量饮酒反而伤身。",
    "source_name": "市卫生健康委员会",
    "source_url": "https://example.org/liquor",
}
LOCKER = {
    "claim": "小区门口的快递柜会传播病毒，取件必须戴两层手套",
    "verdict": "misleading",
    "explanation": "快递柜表面定期消毒，取件后洗手即可，不必戴两层手套。",
    "source_name": "区疾控中心",
}
SUPERMARKET = {
    "claim": "明天起全市所有超市停业，市民要提前囤菜",
    "verdict": "false",
    "explanation": "全市超市正常营业，供应充足，请勿抢购囤积。",
    "source_name": "市商务局",
}
GARGLE = {
    "claim": "用淡盐水漱口可以杀死喉咙里的病毒",
    "verdict": "false",
    "explanation": "盐水漱口不能杀灭呼吸道里的病毒。",
    "source_name": "市卫生健康委员会",
}
GARLIC = {
    "claim": "每天吃生大蒜能够预防感染",
    "verdict": "false",
    "explanation": "大蒜没有预防新冠病毒感染的作用。",
    "source_name": "市卫生健康委员会",
}

SUPERMARKET_POST = (
    "【紧急扩散】群里都在传：明天起全市所有超市停业，市民要提前囤菜！我妈已经去排队了，"
    "大家赶紧去买米买油，别等到最后什么都买不到。转给家里人看看，宁可信其有。"
)
UNKNOWN_POST = (
    "紧急通知：本周六晚上将用直升机在全城上空喷洒消毒药水，请大家关好门窗，"
    "晾在外面的衣服赶紧收回家，转告亲朋好友！"
)
OTHER_UNKNOWN_POST = (
    "听说隔壁小区的自来水检测出病毒了，这几天千万别喝自来水，只能喝桶装水，大家互相转告一下。"
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def say(client: Any, person_id: int, text: str) -> str:
    """Send ``text`` as a demo person in their direct chat; the replies, joined."""
    r = await client.post("/sim/api/send", json={"address": f"sim-{person_id}", "text": text})
    assert r.status == 200, await r.text()
    return "\n".join((await r.json())["replies"])


async def call(client: Any, token: str, method: str, path: str, **kwargs: Any) -> Any:
    return await client.request(method, BASE + path, headers=bearer(token), **kwargs)


async def ok(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == code
    assert error["message"]
    return error


async def publish(client: Any, token: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create and publish a clarification through the API."""
    created = await ok(await call(client, token, "POST", "/clarifications", json=body), 201)
    return await ok(await call(client, token, "POST", f"/clarifications/{created['id']}/publish"))


async def clarify_item(
    client: Any, token: str, item_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Answer review item ``item_id`` with a new clarification through the API (201)."""
    return await ok(
        await call(client, token, "POST", f"/review/{item_id}/clarification", json=body), 201
    )


async def admin_token(db: Any, demo: Any) -> str:
    return await create_token(db, demo.admin_id)


async def grant(db: Any, person_id: int, role: str, region_code: str) -> None:
    async with db.write() as conn:
        region = await repo.get_region_by_code(conn, region_code)
        assert region is not None
        await repo.grant_role(conn, person_id, role, region.id)


async def rows(db: Any, table: Any, *where: Any, order: Any = None) -> list[Any]:
    query = select(table).where(*where).order_by(order if order is not None else table.c.id)
    async with db.read() as conn:
        return list(await conn.execute(query))


async def count(db: Any, table: Any, *where: Any) -> int:
    async with db.read() as conn:
        query = select(func.count()).select_from(table).where(*where)
        return int((await conn.execute(query)).scalar() or 0)


async def residents_in(db: Any, demo: Any, grid_code: str, n: int) -> list[int]:
    """The first ``n`` demo residents living in ``grid_code``."""
    found = []
    async with db.read() as conn:
        for pid in demo.resident_ids:
            person = await repo.load_person(conn, pid)
            if person and person.region and person.region.code == grid_code:
                found.append(pid)
            if len(found) == n:
                break
    assert len(found) == n
    return found


async def lock_waiters(conn: Any) -> int:
    """Backends of this database waiting for a lock (a row, table or advisory lock)."""
    found = await conn.execute(
        text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )
    return int(found.scalar_one())


async def until_waiting(engine: Any, n: int) -> None:
    """Until ``n`` transactions of this database wait for a lock (PostgreSQL)."""
    async with engine.connect() as watcher:
        async with asyncio.timeout(60):  # a guard against hanging, not a measurement
            while await lock_waiters(watcher) < n:
                await watcher.commit()  # a fresh snapshot of pg_stat_activity
                await asyncio.sleep(0.05)
