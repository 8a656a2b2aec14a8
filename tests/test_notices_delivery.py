"""Notices meet the outbox: per-robot rate limits, the scheduled job, and a restart in the
middle of a large send (bridge channel, local receiver), on SQLite and PostgreSQL."""

from __future__ import annotations

import hmac
import json
from collections import Counter
from datetime import timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import BRIDGE_SECRET
from notices_support import (
    count,
    deliver_all,
    notice_config,
    notices,
    outbox,
    outbox_of,
    people,
    people_in,
)
from sqlalchemy import func, insert, select, update

from bot.api import PREFIX, create_token
from bot.channels.bridge import sign
from bot.notices_jobs import notices_queue_job
from bot.scheduler import register_runtime
from flows import notices as flow
from flows.texts import Texts
from storage import repo
from storage.models import ChatGroup, Identity, OutboxStatus, utcnow
from storage.outbox import claim_due

groups = ChatGroup.__table__
identities = Identity.__table__


class Receiver:
    """A bridge gateway on 127.0.0.1 that checks signatures and counts each message_id."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.server = TestServer(self._app(), host="127.0.0.1")

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/outbound", self._outbound)
        return app

    async def _outbound(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = sign(BRIDGE_SECRET, request.headers["X-Bridge-Timestamp"], body)
        if not hmac.compare_digest(expected, request.headers["X-Bridge-Signature"]):
            return web.json_response({"error": "bad signature"}, status=401)
        self.received[json.loads(body)["message_id"]] += 1
        return web.json_response({"ok": True})

    @property
    def url(self) -> str:
        return str(self.server.make_url("/outbound"))


@pytest.fixture
async def receiver():
    gateway = Receiver()
    await gateway.server.start_server()
    yield gateway
    await gateway.server.close()


async def test_robot_group_gets_at_most_20_messages_a_minute(make_config, start_app, demo, db):
    client, rt = await start_app(notice_config(make_config))
    async with db.write() as conn:
        await conn.execute(
            update(groups).where(groups.c.external_id == "grid-G0102").values(robot_key="rk-0102")
        )
    headers = {"Authorization": f"Bearer {await create_token(db, demo.wardens['G0102'])}"}
    other = {"Authorization": f"Bearer {await create_token(db, demo.wardens['G0101'])}"}
    for number in range(1, 26):
        for auth, grid in ((headers, "G0102"), (other, "G0101")):
            r = await client.post(
                f"{PREFIX}/notices",
                headers=auth,
                json={"text": f"第{number}条", "regions": [grid], "individuals": False},
            )
            assert r.status == 201, await r.text()
    robot = outbox.c.rate_key == "sim:robot:rk-0102"
    chat = outbox.c.rate_key == "sim:chat:grid-G0101"
    assert await count(db, outbox, robot) == 25 and await count(db, outbox, chat) == 25

    await deliver_all(rt)  # everything due now, in as many batches as it takes
    assert await count(db, outbox, robot, outbox.c.status == OutboxStatus.SENT) == 20
    assert await count(db, outbox, robot, outbox.c.status == OutboxStatus.PENDING) == 5
    assert await count(db, outbox, chat, outbox.c.status == OutboxStatus.SENT) == 25
    async with db.read() as conn:
        waiting = await conn.execute(
            select(func.min(outbox.c.next_attempt_at), func.max(outbox.c.attempts)).where(
                robot, outbox.c.status == OutboxStatus.PENDING
            )
        )
        soonest, attempts = waiting.one()
    assert soonest > utcnow() and attempts == 0  # deferred, not failed


async def test_scheduled_notice_is_queued_by_the_job(make_config, start_app, demo, db):
    client, rt = await start_app(notice_config(make_config))
    headers = {"Authorization": f"Bearer {await create_token(db, demo.wardens['G0101'])}"}
    later = (utcnow() + timedelta(minutes=30)).isoformat()
    r = await client.post(
        f"{PREFIX}/notices",
        headers=headers,
        json={"text": "半小时后", "regions": ["G0101"], "send_at": later},
    )
    notice_id = (await r.json())["id"]
    register_runtime(rt.scheduler.rt)
    assert await notices_queue_job(rt.scheduler.rt.id) == 0
    async with db.write() as conn:  # half an hour passes
        await conn.execute(
            update(notices).where(notices.c.id == notice_id).values(send_at=utcnow())
        )
    assert await notices_queue_job(rt.scheduler.rt.id) == 1
    expected = await people_in(db, "G0101", exclude=demo.wardens["G0101"])
    assert await deliver_all(rt) == len(expected) + 1


async def _add_bridge_residents(db, grid_code: str, how_many: int) -> tuple[set[int], int]:
    """Residents reachable only over the bridge, and two bridge group chats, in one grid."""
    async with db.write() as conn:
        grid = await repo.get_region_by_code(conn, grid_code)
        first = int((await conn.execute(select(func.max(people.c.id)))).scalar_one()) + 1
        await conn.execute(
            insert(people),
            [
                {
                    "id": first + i,
                    "name": f"桥{i}",
                    "region_id": grid.id,
                    "opted_out": False,
                    "created_at": utcnow(),
                }
                for i in range(how_many)
            ],
        )
        await conn.execute(
            insert(identities),
            [
                {
                    "person_id": first + i,
                    "channel": "bridge",
                    "external_id": f"wx-{first + i}",
                    "display_name": "",
                    "created_at": utcnow(),
                }
                for i in range(how_many)
            ],
        )
        for room in ("room-a", "room-b"):
            await repo.create_group(
                conn, region_id=grid.id, channel="bridge", external_id=room, name=room
            )
    return set(range(first, first + how_many)), 2


async def test_restart_in_the_middle_of_a_large_send_loses_and_doubles_nothing(
    make_config, start_app, demo, db, receiver
):
    config = make_config(
        notices={"quiet_hours": False, "queue_page_size": 100},
        outbox={"batch_size": 50},
        channels={"bridge": {"outbound_url": receiver.url}},
    )
    warden = demo.wardens["G0202"]
    bridge_people, bridge_groups = await _add_bridge_residents(db, "G0202", 450)
    everyone = await people_in(db, "G0202", exclude=warden)
    texts, now = Texts(), utcnow()

    # -- the first process: creates the notice, queues one page, delivers a little, dies.
    client_a, rt_a = await start_app(config)
    async with db.write() as conn:
        sender = await repo.load_person(conn, warden)
        draft = await flow.validate(
            conn, sender, text="明天全员核酸", region_words=["G0202"], now=now, max_chars=1500
        )
        created = await flow.create_notice(conn, sender, draft, settings=config, now=now, via="api")
    async with db.write() as conn:
        work = await flow.start_queuing(
            conn, created.notice_id, texts=texts, settings=config, now=now
        )
    async with db.write() as conn:
        cursor = await work.people_page(conn, work.notice.queue_cursor, now=now)
    with pytest.raises(RuntimeError):
        async with db.write() as conn:  # killed in the middle of the second page
            await work.people_page(conn, cursor, now=now)
            raise RuntimeError("process killed")
    assert await count(db, outbox) == 100

    assert await rt_a.delivery.run_once() == 50  # delivered and recorded
    async with db.write() as conn:  # claimed, then the process dies before sending
        claimed = await claim_due(
            conn, limit=30, claim_timeout=timedelta(seconds=300), skip_locked=not db.is_sqlite
        )
    assert len(claimed) == 30
    async with db.write() as conn:  # claimed and sent, dies before recording the result
        in_flight = await claim_due(
            conn, limit=10, claim_timeout=timedelta(seconds=300), skip_locked=not db.is_sqlite
        )
    for message in in_flight:
        assert (await rt_a.channels[message.channel].send(message)).ok
    await client_a.close()

    # -- a new process on the same database, after the lease and claim timeouts.
    client_b, rt_b = await start_app(config)
    async with db.write() as conn:
        past = utcnow() - timedelta(hours=1)
        await conn.execute(update(notices).values(lease_until=past))
        await conn.execute(
            update(outbox).where(outbox.c.status == OutboxStatus.SENDING).values(claimed_at=past)
        )
    done = await flow.queue_due_notices(db, texts=texts, settings=config, now=utcnow())
    assert done == 1
    await deliver_all(rt_b)

    rows = await outbox_of(db, created.notice_id)
    assert {r.person_id for r in rows if r.person_id} == everyone  # nothing lost
    assert len(rows) == len(everyone) + bridge_groups + 1  # + the demo sim group
    assert {r.status for r in rows} == {OutboxStatus.SENT}
    bridge_keys = {r.key for r in rows if r.channel == "bridge"}
    assert len(bridge_keys) == len(bridge_people) + bridge_groups
    assert set(receiver.received) == bridge_keys  # every message reached the gateway
    resent = {m.key for m in in_flight if m.channel == "bridge"}
    assert {k for k, n in receiver.received.items() if n > 1} == resent
    # ... and the only repeats are the in-flight ones, with the same message_id, which the
    # gateway deduplicates (the bridge contract); nothing was queued or sent twice otherwise.
    assert all(n == 2 for k, n in receiver.received.items() if k in resent)
    [notice] = await conn_rows(db)
    assert notice.status == "sent" and notice.queue_cursor == max(everyone)
    await client_b.close()


async def test_a_page_queued_twice_adds_nothing(make_config, start_app, demo, db):
    """Two processes on the same page (one took over from a slow one): no error, no twin."""
    config = notice_config(make_config)
    await start_app(config)
    warden, now = demo.wardens["G0101"], utcnow()
    async with db.write() as conn:
        sender = await repo.load_person(conn, warden)
        draft = await flow.validate(
            conn, sender, text="两次", region_words=["G0101"], now=now, max_chars=1500
        )
        created = await flow.create_notice(conn, sender, draft, settings=config, now=now, via="api")
        work = await flow.start_queuing(
            conn, created.notice_id, texts=Texts(), settings=config, now=now
        )
    for _ in range(2):
        async with db.write() as conn:
            assert await work.people_page(conn, 0, now=now) is not None
            await work.group_rows(conn, now=now)
    rows = await outbox_of(db, created.notice_id)
    assert len(rows) == len(await people_in(db, "G0101", exclude=warden)) + 1
    assert len({r.key for r in rows}) == len(rows)


async def conn_rows(db):
    async with db.read() as conn:
        return list(await conn.execute(select(notices)))
