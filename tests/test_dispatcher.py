"""The dispatcher's middlewares and the flow engine, through the real app and databases."""

from __future__ import annotations

import asyncio
import enum
from datetime import timedelta

from bridge_client import message, signed
from conftest import BRIDGE_SECRET
from sqlalchemy import func, select, update

from flows.context import Context
from flows.engine import Flow, Reask
from handlers.router import Route
from storage import repo
from storage.models import AuditEntry, Conversation, OutboxMessage, utcnow

audit = AuditEntry.__table__
outbox = OutboxMessage.__table__


class Counter(Flow):
    """A test flow: counts messages in its data; "数字" asks for a number with re-ask."""

    name = "test-counter"

    class State(enum.StrEnum):
        COUNTING = "counting"

    async def begin(self, ctx: Context, **params) -> State:
        ctx.conversation.data["n"] = 0
        return self.State.COUNTING

    async def ask(self, ctx: Context, state) -> None:
        ctx.outbound.append(_text(f"n={ctx.conversation.data['n']}"))

    async def step(self, ctx: Context, state, text: str) -> State:
        if not text.isdigit():
            raise Reask("common/expired")  # any template: the hint shown before re-asking
        ctx.conversation.data["n"] += int(text)
        await repo.record_audit(ctx.conn, actor_id=None, action="test.count")
        return self.State.COUNTING


def _text(text: str):
    from flows.messages import Outbound

    return Outbound(text)


def add_route(rt, keyword: str, handler) -> None:
    rt.dispatcher.router.routes.insert(
        0, Route(handler, keywords=frozenset({keyword}), registered=None)
    )


async def send(client, msg_id: str, sender: str, text: str) -> list[str]:
    raw, headers = signed(message(msg_id, sender, text), BRIDGE_SECRET)
    response = await client.post("/bridge/inbound", data=raw, headers=headers)
    assert response.status == 200
    return [r["text"] for r in (await response.json())["replies"]]


async def audit_count(db, action: str) -> int:
    async with db.read() as conn:
        return (
            await conn.execute(
                select(func.count()).select_from(audit).where(audit.c.action == action)
            )
        ).scalar()


async def test_handler_error_rolls_back_and_answers_an_apology_once(make_config, start_app, db):
    client, rt = await start_app(make_config())
    calls = []

    async def explode(ctx: Context) -> None:
        calls.append(1)
        await repo.record_audit(ctx.conn, actor_id=None, action="test.half-written")
        raise RuntimeError("boom")

    add_route(rt, "爆炸", explode)
    replies = await send(client, "e1", "wx-x", "爆炸")
    assert replies == [rt.dispatcher.texts.render("common/error")]
    assert await audit_count(db, "test.half-written") == 0
    assert rt.errors.counts["dispatcher"] == 1
    # The platform retries: same apology, the handler does not run again.
    assert await send(client, "e1", "wx-x", "爆炸") == replies
    assert len(calls) == 1


async def test_reask_then_give_up_after_the_limit(make_config, start_app, db, demo):
    client, rt = await start_app(make_config())
    rt.dispatcher.flows.register(Counter())

    async def start_counter(ctx: Context) -> None:
        await ctx.flows.start(ctx, "test-counter")

    add_route(rt, "计数", start_counter)
    assert await send(client, "r1", "wx-y", "计数") == ["n=0"]
    assert await send(client, "r2", "wx-y", "2") == ["n=2"]
    expired_text = rt.dispatcher.texts.render("common/expired")
    assert await send(client, "r3", "wx-y", "abc") == [expired_text, "n=2"]
    assert await send(client, "r4", "wx-y", "def") == [expired_text, "n=2"]
    assert await send(client, "r5", "wx-y", "ghi") == [rt.dispatcher.texts.render("common/give_up")]
    async with db.read() as conn:
        row = (await conn.execute(select(Conversation.__table__))).first()
    assert row.flow is None


async def test_cancel_word_ends_the_flow(make_config, start_app, db):
    client, rt = await start_app(make_config())
    rt.dispatcher.flows.register(Counter())

    async def start_counter(ctx: Context) -> None:
        await ctx.flows.start(ctx, "test-counter")

    add_route(rt, "计数", start_counter)
    await send(client, "c1", "wx-z", "计数")
    assert await send(client, "c2", "wx-z", "取消") == [
        rt.dispatcher.texts.render("common/cancelled")
    ]
    # "3" no longer goes to the counter: an unknown sender is asked to register.
    assert "网格编码" in "".join(await send(client, "c3", "wx-z", "3"))


async def test_expired_conversation_is_not_resumed(make_config, start_app, db):
    client, rt = await start_app(make_config())
    rt.dispatcher.flows.register(Counter())

    async def start_counter(ctx: Context) -> None:
        await ctx.flows.start(ctx, "test-counter")

    add_route(rt, "计数", start_counter)
    await send(client, "x1", "wx-w", "计数")
    async with db.write() as conn:
        await conn.execute(
            update(Conversation.__table__).values(expires_at=utcnow() - timedelta(minutes=1))
        )
    replies = await send(client, "x2", "wx-w", "5")
    assert "n=" not in "".join(replies)
    assert await audit_count(db, "test.count") == 0


async def test_reply_over_budget_goes_through_the_outbox_once(make_config, start_app, db):
    client, rt = await start_app(make_config(conversation={"reply_budget_s": 0.2}))

    async def slow(ctx: Context) -> None:
        await asyncio.sleep(0.6)
        ctx.outbound.append(_text("慢慢来的回复"))

    add_route(rt, "慢", slow)
    assert await send(client, "s1", "wx-slow", "慢") == []
    await rt.dispatcher.drain()
    async with db.read() as conn:
        rows = list(await conn.execute(select(outbox)))
    assert [(r.key, r.target, r.payload["text"]) for r in rows] == [
        ("reply:bridge:s1:0", "wx-slow", "慢慢来的回复")
    ]
    # The platform's retry must not produce a second copy inline.
    assert await send(client, "s1", "wx-slow", "慢") == []
    async with db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(outbox))).scalar() == 1


async def test_late_reply_to_a_message_with_a_long_id_goes_through_the_outbox_once(
    make_config, start_app, db
):
    """A message id longer than the columns: the inbound log keeps a digest of it and the
    reply's outbox key a digest of its stem (``reply:bridge:<id>``) with the reply's number."""
    from storage.outbox import answer_key

    client, rt = await start_app(make_config(conversation={"reply_budget_s": 0.2}))

    async def slow(ctx: Context) -> None:
        await asyncio.sleep(0.6)
        ctx.outbound.append(_text("慢慢来的回复"))

    add_route(rt, "慢", slow)
    long_id = "s" * 240
    assert await send(client, long_id, "wx-slow", "慢") == []
    await rt.dispatcher.drain()
    async with db.read() as conn:
        rows = list(await conn.execute(select(outbox)))
    key = answer_key("reply", "bridge", long_id, 0)
    assert len(key) <= 200 and key.endswith(":0")
    assert [(r.key, r.target, r.payload["text"]) for r in rows] == [
        (key, "wx-slow", "慢慢来的回复")
    ]
    assert await send(client, long_id, "wx-slow", "慢") == []
    async with db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(outbox))).scalar() == 1


async def test_concurrent_messages_share_commits(make_config, start_app, db, demo):
    client, rt = await start_app(make_config())
    jobs_before, batches_before = rt.committer.jobs, rt.committer.batches
    await asyncio.gather(*[send(client, f"g{i}", f"wx-g{i}", "你好") for i in range(60)])
    jobs = rt.committer.jobs - jobs_before
    batches = rt.committer.batches - batches_before
    assert jobs == 60
    assert batches < jobs  # group commit: fewer commits than messages


async def test_one_persons_messages_are_serialized_across_two_instances(make_config, start_app, db):
    config = make_config()
    (client_a, rt_a), (client_b, rt_b) = await start_app(config), await start_app(config)
    for rt in (rt_a, rt_b):
        rt.dispatcher.flows.register(Counter())

        async def start_counter(ctx: Context) -> None:
            await ctx.flows.start(ctx, "test-counter")

        add_route(rt, "计数", start_counter)
    await send(client_a, "p0", "wx-same", "计数")
    await asyncio.gather(
        *[send(client_a if i % 2 else client_b, f"p{i}", "wx-same", "1") for i in range(1, 21)]
    )
    async with db.read() as conn:
        row = (await conn.execute(select(Conversation.__table__))).one()
    assert row.data["n"] == 20  # no lost update between the two instances
    assert await audit_count(db, "test.count") == 20


async def test_same_message_to_two_instances_runs_once(make_config, start_app, db):
    config = make_config()
    (client_a, rt_a), (client_b, rt_b) = await start_app(config), await start_app(config)
    for rt in (rt_a, rt_b):

        async def hit(ctx: Context) -> None:
            await repo.record_audit(ctx.conn, actor_id=None, action="test.hit")
            ctx.outbound.append(_text("只处理一次"))

        add_route(rt, "打点", hit)
    results = await asyncio.gather(
        *[send(client_a if i % 2 else client_b, "same-id", "wx-dup", "打点") for i in range(6)]
    )
    assert all(r == ["只处理一次"] for r in results)
    assert await audit_count(db, "test.hit") == 1


async def test_retry_during_a_late_reply_gets_it_inline_and_nothing_is_sent_twice(
    make_config, start_app, db
):
    client, rt = await start_app(make_config(conversation={"reply_budget_s": 1.5}))
    release = asyncio.Event()
    runs = []

    async def slow(ctx: Context) -> None:
        runs.append(1)
        await asyncio.wait_for(release.wait(), 30)
        ctx.outbound.append(_text("稍等后的回复"))

    add_route(rt, "慢", slow)
    # The first attempt runs out of its budget while the handler is still at work...
    assert await send(client, "late-1", "wx-late", "慢") == []
    # ...the platform retries, and the reply is ready while the retry waits: inline, once.
    retry = asyncio.ensure_future(send(client, "late-1", "wx-late", "慢"))
    await asyncio.sleep(0.5)  # the retry is now waiting (it may wait up to its 1.5 s budget)
    release.set()
    assert await retry == ["稍等后的回复"]
    await rt.dispatcher.drain()
    assert len(runs) == 1
    async with db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(outbox))).scalar() == 0
    # A later retry gets the stored reply, still without running the handler or the outbox.
    assert await send(client, "late-1", "wx-late", "慢") == ["稍等后的回复"]
    assert len(runs) == 1


async def test_repeats_of_a_message_in_flight_share_its_run(make_config, start_app, db):
    client, rt = await start_app(make_config())
    release = asyncio.Event()
    runs = []

    async def hold(ctx: Context) -> None:
        runs.append(1)
        await asyncio.wait_for(release.wait(), 30)
        await repo.record_audit(ctx.conn, actor_id=None, action="test.held")
        ctx.outbound.append(_text("同一条消息"))

    add_route(rt, "等等", hold)
    attempts = [asyncio.ensure_future(send(client, "f1", "wx-f", "等等")) for _ in range(3)]
    await asyncio.sleep(0.2)
    release.set()
    assert await asyncio.gather(*attempts) == [["同一条消息"]] * 3
    assert len(runs) == 1
    assert await audit_count(db, "test.held") == 1


async def test_an_event_is_not_taken_as_an_answer_to_a_flow(make_config, start_app, db):
    from flows.messages import Inbound

    _client, rt = await start_app(make_config())
    rt.dispatcher.flows.register(Counter())

    async def start_counter(ctx: Context) -> None:
        await ctx.flows.start(ctx, "test-counter")

    add_route(rt, "计数", start_counter)
    await rt.dispatcher.handle(
        Inbound(channel="bridge", sender_id="wx-ev", text="计数", dedupe_key="ev-1")
    )
    click = Inbound(
        channel="bridge",
        sender_id="wx-ev",
        text="",
        dedupe_key="ev-2",
        kind="event",
        event="view",
        event_key="https://example.invalid/",
    )
    replies = await rt.dispatcher.handle(click)
    assert all("n=" not in r.text for r in replies)
    assert (
        await rt.dispatcher.handle(
            Inbound(channel="bridge", sender_id="wx-ev", text="4", dedupe_key="ev-3")
        )
        is not None
    )
    async with db.read() as conn:
        row = (await conn.execute(select(Conversation.__table__))).one()
    assert row.data["n"] == 4 and "_retries" not in row.data
