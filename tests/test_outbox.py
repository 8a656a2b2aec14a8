"""Outbox delivery: idempotent keys, claims, crash recovery, backoff, dead letters, rate limits."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select, update

from bot.channels.bridge import BridgeChannel, sign
from bot.config import BridgeConfig, OutboxConfig
from bot.delivery import DeliveryWorker
from bot.errors import ErrorReporter
from storage.db import Database
from storage.models import OutboxMessage, utcnow
from storage.outbox import (
    ClaimedMessage,
    Target,
    claim_due,
    enqueue,
    mark_failed,
    mark_sent,
    outbox_row,
)

outbox = OutboxMessage.__table__
SECRET = "outbound-secret"


class Receiver:
    """A bridge gateway on 127.0.0.1: records what it gets, can fail on purpose."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.fail_next: list[int] = []
        self.bad_signatures = 0
        self.hold_first = 0
        """This many requests wait for ``gate`` (sends still in flight)."""
        self.held = 0
        self.gate = asyncio.Event()
        self.all_held = asyncio.Event()
        app = web.Application()
        app.router.add_post("/out", self.handle)
        self.server = TestServer(app)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ts = request.headers["X-Bridge-Timestamp"]
        if sign(SECRET, ts, body) != request.headers["X-Bridge-Signature"]:
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.held < self.hold_first:
            self.held += 1
            if self.held == self.hold_first:
                self.all_held.set()
            await self.gate.wait()
        if self.fail_next:
            return web.Response(status=self.fail_next.pop(0))
        self.received.append(json.loads(body))
        return web.json_response({"ok": True})

    @property
    def url(self) -> str:
        return str(self.server.make_url("/out"))

    @property
    def message_ids(self) -> list[str]:
        return [m["message_id"] for m in self.received]


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.server.start_server()
    yield r
    await r.server.close()


@pytest.fixture
async def session():
    import aiohttp

    async with aiohttp.ClientSession() as s:
        yield s


def make_worker(db: Database, session, receiver: Receiver, **outbox_settings) -> DeliveryWorker:
    bridge = BridgeChannel(
        BridgeConfig(enabled=True, secret=SECRET, outbound_url=receiver.url),
        dispatcher=None,  # type: ignore[arg-type]  # outbound only
        session=session,
        reply_budget_s=1,
    )
    config = OutboxConfig(**{"backoff_base_s": 1, "backoff_max_s": 60, **outbox_settings})
    return DeliveryWorker(db, {"bridge": bridge}, config, ErrorReporter(), rng=random.Random(1))


async def queue(db: Database, n: int, *, kind: str = "user", prefix: str = "m") -> None:
    rows = [
        outbox_row(
            key=f"{prefix}-{i}",
            target=Target("bridge", kind, f"u{i % 7}"),
            payload={"text": f"第{i}条"},
        )
        for i in range(n)
    ]
    async with db.write() as conn:
        await enqueue(conn, rows, db.insert_ignore(outbox))


async def statuses(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        rows = await conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))
        return {r[0]: r[1] for r in rows}


async def test_same_key_is_queued_once(db):
    await queue(db, 5)
    await queue(db, 5)
    assert await statuses(db) == {"pending": 5}


async def test_delivery_sends_each_row_once_signed(db, session, receiver):
    await queue(db, 30)
    worker = make_worker(db, session, receiver)
    assert await worker.run_once() == 30
    assert await worker.run_once() == 0
    assert sorted(receiver.message_ids) == sorted(f"m-{i}" for i in range(30))
    assert receiver.bad_signatures == 0
    assert receiver.received[0]["to"].keys() == {"user_id"}
    assert await statuses(db) == {"sent": 30}


async def test_crash_between_claim_and_send_loses_nothing_and_sends_once(db, session, receiver):
    await queue(db, 10)
    # A worker claims the batch, then its process dies before sending anything.
    async with db.write() as conn:
        claimed = await claim_due(
            conn, limit=10, claim_timeout=timedelta(seconds=300), skip_locked=not db.is_sqlite
        )
    assert len(claimed) == 10
    worker = make_worker(db, session, receiver, claim_timeout_s=60)
    # Another worker does not touch rows whose claim is still fresh...
    assert await worker.run_once() == 0
    assert receiver.received == []
    # ...and picks them up once the dead worker's claim has timed out.
    async with db.write() as conn:
        await conn.execute(update(outbox).values(claimed_at=utcnow() - timedelta(seconds=61)))
    assert await worker.run_once() == 10
    assert sorted(receiver.message_ids) == sorted(f"m-{i}" for i in range(10))
    assert await worker.run_once() == 0
    assert len(receiver.received) == 10
    assert await statuses(db) == {"sent": 10}


async def claim_twice(db: Database) -> tuple[ClaimedMessage, ClaimedMessage]:
    """Worker A claims the one row and its send hangs past the claim timeout; worker B claims
    it again (a stale claim).  A's claim and B's."""
    claim_timeout = timedelta(seconds=300)
    t0 = utcnow()
    claims = []
    for now in (t0, t0 + claim_timeout + timedelta(seconds=1)):
        async with db.write() as conn:
            (claimed,) = await claim_due(
                conn, limit=10, claim_timeout=claim_timeout, skip_locked=not db.is_sqlite, now=now
            )
        claims.append(claimed)
    assert claims[0].id == claims[1].id
    return claims[0], claims[1]


async def test_a_late_failure_does_not_move_a_sent_row_back_to_pending(db):
    """B sends the row and marks it sent; then A's attempt ends in a timeout and A records the
    failure.  Unguarded, that put the row back to pending and it was sent a second time."""
    await queue(db, 1)
    first, second = await claim_twice(db)
    async with db.write() as conn:
        await mark_sent(conn, [(second.id, None)])
    async with db.write() as conn:
        recorded = await mark_failed(
            conn, first, error="WxUnavailable: timeout", retry_at=utcnow() + timedelta(seconds=5)
        )
    assert recorded is False
    assert await statuses(db) == {"sent": 1}


async def test_a_late_failure_leaves_the_newer_claim_to_finish(db):
    """A's failure arrives while B is still sending: the row stays B's, and B's success counts."""
    await queue(db, 1)
    first, second = await claim_twice(db)
    async with db.write() as conn:
        assert not await mark_failed(conn, first, error="timeout", retry_at=None, dead=True)
    assert await statuses(db) == {"sending": 1}
    async with db.write() as conn:
        await mark_sent(conn, [(second.id, None)])
    assert await statuses(db) == {"sent": 1}


async def test_failures_back_off_then_dead_letter(db, session, receiver):
    await queue(db, 1)
    worker = make_worker(db, session, receiver, max_attempts=3)
    receiver.fail_next = [503, 500, 502]
    for attempt in range(1, 4):
        assert await worker.run_once() == 1
        async with db.read() as conn:
            row = (await conn.execute(select(outbox))).one()
        assert row.attempts == attempt
        assert "HTTP 5" in row.last_error
        if attempt < 3:
            assert row.status == "pending"
            assert row.next_attempt_at > utcnow()  # backed off, not due yet
            assert await worker.run_once() == 0
            async with db.write() as conn:
                await conn.execute(update(outbox).values(next_attempt_at=utcnow()))
    assert await statuses(db) == {"dead": 1}
    assert receiver.received == []


async def test_retry_succeeds_after_a_transient_failure(db, session, receiver):
    await queue(db, 2)
    worker = make_worker(db, session, receiver)
    receiver.fail_next = [503]
    await worker.run_once()
    async with db.write() as conn:
        await conn.execute(update(outbox).values(next_attempt_at=utcnow()))
    await worker.run_once()
    assert sorted(receiver.message_ids) == ["m-0", "m-1"]
    assert await statuses(db) == {"sent": 2}


async def test_unreachable_gateway_is_retried(db, session, receiver):
    await queue(db, 1)
    worker = make_worker(db, session, receiver)
    await receiver.server.close()
    await worker.run_once()
    async with db.read() as conn:
        row = (await conn.execute(select(outbox))).one()
    assert row.status == "pending"
    assert "unreachable" in row.last_error


async def test_rate_limit_counts_what_another_worker_is_still_sending(db, session, receiver):
    # Two processes: only rows already marked sent were counted, so while the first worker's
    # twenty sends to a robot were in flight, a second worker sent twenty more in the minute.
    rows = [
        outbox_row(
            key=f"robot-{i}",
            target=Target("bridge", "robot", "robot-key-1"),
            payload={"text": f"通知{i}"},
        )
        for i in range(40)
    ]
    async with db.write() as conn:
        await enqueue(conn, rows, db.insert_ignore(outbox))
    first = make_worker(db, session, receiver, robot_rate_per_minute=20, batch_size=20)
    second = make_worker(db, session, receiver, robot_rate_per_minute=20, batch_size=20)
    receiver.hold_first = 20
    in_flight = asyncio.create_task(first.run_once())
    await receiver.all_held.wait()

    await second.run_once()

    assert receiver.received == []
    assert await statuses(db) == {"sending": 20, "pending": 20}
    receiver.gate.set()
    assert await in_flight == 20
    assert len(receiver.received) == 20
    assert await statuses(db) == {"sent": 20, "pending": 20}


async def test_robot_rate_limit_holds_back_the_rest(db, session, receiver):
    rows = [
        outbox_row(
            key=f"robot-{i}",
            target=Target("bridge", "robot", "robot-key-1"),
            payload={"text": f"通知{i}"},
        )
        for i in range(25)
    ]
    async with db.write() as conn:
        await enqueue(conn, rows, db.insert_ignore(outbox))
    worker = make_worker(db, session, receiver, robot_rate_per_minute=20)
    await worker.run_once()
    assert len(receiver.received) == 20
    assert await statuses(db) == {"sent": 20, "pending": 5}
    async with db.read() as conn:
        held = list(await conn.execute(select(outbox).where(outbox.c.status == "pending")))
    assert all(r.attempts == 0 and r.next_attempt_at > utcnow() for r in held)
    # Still inside the minute: nothing more goes out even when the rows are due again.
    async with db.write() as conn:
        await conn.execute(
            update(outbox).where(outbox.c.status == "pending").values(next_attempt_at=utcnow())
        )
    await worker.run_once()
    assert len(receiver.received) == 20
    # A minute later the rest go.
    async with db.write() as conn:
        await conn.execute(
            update(outbox)
            .where(outbox.c.status == "sent")
            .values(sent_at=utcnow() - timedelta(seconds=61))
        )
        await conn.execute(
            update(outbox).where(outbox.c.status == "pending").values(next_attempt_at=utcnow())
        )
    await worker.run_once()
    assert len(receiver.received) == 25


async def test_two_workers_never_send_a_row_twice(database_url, session, receiver):
    first, second = Database(database_url), Database(database_url)
    try:
        await queue(first, 400)
        workers = [
            make_worker(first, session, receiver, batch_size=50),
            make_worker(second, session, receiver, batch_size=50),
        ]
        while True:
            counts = await asyncio.gather(*(w.run_once() for w in workers))
            if not any(counts):
                break
        assert len(receiver.message_ids) == 400
        assert len(set(receiver.message_ids)) == 400
        assert await statuses(first) == {"sent": 400}
    finally:
        await first.dispose()
        await second.dispose()
