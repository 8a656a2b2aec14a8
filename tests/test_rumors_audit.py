"""Audit of the rumor feature: each test shows a suspected bug (they fail on main)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from rumors_support import (
    LIQUOR,
    UNKNOWN_POST,
    admin_token,
    call,
    grant,
    ok,
    outbox,
    publish,
    residents_in,
    rows,
    say,
)
from sqlalchemy import text

from bot.api import create_token
from storage import rumors as store
from storage.models import Role, utcnow

CLAIM = {
    "claim": "本周六晚上将用直升机在全城上空喷洒消毒药水",
    "verdict": "false",
    "explanation": "本市没有安排任何空中喷洒消毒作业，请勿轻信。",
    "source_name": "市疫情防控指挥部",
    "region": "D01",
}


async def ask_unknown(client, people, post=UNKNOWN_POST):
    for pid in people:
        assert "核实后会告诉您" in await say(client, pid, "这是真的吗 " + post)


async def pending(client, token):
    return (await ok(await call(client, token, "GET", "/review")))["items"]


async def rumor_rows(db, person_id):
    return await rows(db, outbox, outbox.c.ref_type == "rumor", outbox.c.person_id == person_id)


# -- report counts ---------------------------------------------------------------------------


async def test_report_counts_one_person_once_per_claim(make_config, start_app, demo, db):
    """A resident who asked before the clarification existed (queued, then told) and asks
    again afterwards (answered inline) is one person, not two."""
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    [resident] = await residents_in(db, demo, "G0101", 1)
    await ask_unknown(client, [resident])
    [item] = await pending(client, token)
    created = await ok(
        await call(
            client,
            token,
            "POST",
            f"/review/{item['id']}/clarification",
            json={**CLAIM, "publish": True},
        ),
        201,
    )
    assert CLAIM["explanation"] in await say(client, resident, "这是真的吗 " + UNKNOWN_POST)

    report = await ok(await call(client, token, "GET", "/report"))

    [line] = report["answered"]
    assert line["id"] == created["id"]
    assert line["asks"] == 2
    assert line["people"] == 1


async def test_report_in_chat_does_not_call_a_draft_withdrawn(make_config, start_app, demo, db):
    """A review item attached to a clarification still in draft shows as "已撤回"."""
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    await ask_unknown(client, demo.resident_ids[:2])
    [item] = await pending(client, token)
    await ok(
        await call(client, token, "POST", f"/review/{item['id']}/clarification", json=CLAIM), 201
    )

    board = await say(client, demo.admin_id, "谣言榜")

    assert "——2次，2人" in board
    assert "已撤回" not in board


# -- scope -----------------------------------------------------------------------------------


async def test_askers_outside_a_scoped_clarification_are_not_lost(make_config, start_app, demo, db):
    """A street admin answers a shared review item with a clarification for their street: the
    asker in the other street is never told and the item leaves their admins' queue."""
    client, _ = await start_app(make_config())
    district = await admin_token(db, demo)
    [north] = await residents_in(db, demo, "G0101", 1)
    [south] = await residents_in(db, demo, "G0201", 1)
    await ask_unknown(client, [north, south])
    south_admin_id = demo.wardens["G0201"]
    await grant(db, south_admin_id, Role.ADMIN, "S02")
    south_admin = await create_token(db, south_admin_id)
    [item] = await pending(client, south_admin)

    await ok(
        await call(
            client,
            south_admin,
            "POST",
            f"/review/{item['id']}/clarification",
            json={**CLAIM, "region": "S02", "publish": True},
        ),
        201,
    )

    told_north = await rumor_rows(db, north)
    still_pending = await pending(client, district)
    assert told_north or still_pending, "the north asker is neither told nor left for review"


# -- expiry ----------------------------------------------------------------------------------


async def test_attaching_to_an_expired_clarification_does_not_send_it(
    make_config, start_app, demo, db
):
    """Publishing an expired clarification is refused (409 expired); attaching a review item
    to one that expired after publication still sends it to the askers as a verified answer."""
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    soon = (utcnow() + timedelta(days=1)).isoformat()
    cid = (await publish(client, token, {**LIQUOR, "region": "D01", "expires_at": soon}))["id"]
    async with db.write() as conn:
        await store.update_clarification(conn, db, cid, expires_at=utcnow() - timedelta(seconds=1))
    asker = demo.resident_ids[0]
    await ask_unknown(client, [asker])
    [item] = await pending(client, token)

    await call(
        client, token, "POST", f"/review/{item['id']}/attach", json={"clarification_id": cid}
    )

    assert await rumor_rows(db, asker) == []


# -- told never: asked between "attached to a draft" and "published" -------------------------


async def test_asker_after_attach_to_draft_is_told_on_publish(make_config, start_app, demo, db):
    """The item is attached to a draft; a second resident forwards the same post before it is
    published: their question starts a new pending item, and publishing tells only the first."""
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    first, second = demo.resident_ids[:2]
    await ask_unknown(client, [first])
    [item] = await pending(client, token)
    draft = await ok(
        await call(client, token, "POST", f"/review/{item['id']}/clarification", json=CLAIM), 201
    )
    await ask_unknown(client, [second])

    published = await ok(
        await call(client, token, "POST", f"/clarifications/{draft['id']}/publish")
    )

    assert published["delivered"]["notified"] == 2
    assert await rumor_rows(db, second)


# -- races (PostgreSQL: SQLite writers are serialized by BEGIN IMMEDIATE) --------------------


async def _lock_waiters(db) -> int:
    async with db.read() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                )
            ).scalar()
        )


async def _until_waiting(db, n: int) -> None:
    for _ in range(500):
        if await _lock_waiters(db) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{n} transactions never waited on the lock")


async def _item_lock(db, item_id: int):
    """A connection holding the review item's row lock (as a concurrent asker counting a
    question into it would)."""
    conn = await db.engine.connect()
    await conn.begin()
    await conn.execute(
        text("SELECT id FROM rumor_review_items WHERE id = :id FOR UPDATE"), {"id": item_id}
    )
    return conn


@pytest.mark.parametrize("meanwhile", ["edit", "withdraw"])
async def test_attach_racing_an_edit_or_withdrawal_sends_the_current_state(
    make_config, start_app, demo, db, meanwhile
):
    """attach_item reads the clarification without a lock; an edit (or withdrawal) committed
    before the attach commits leaves the askers with the old version (or with a withdrawn
    clarification and no withdrawal notice)."""
    if db.is_sqlite:
        pytest.skip("SQLite serializes writers")
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    cid = (await publish(client, token, {**LIQUOR, "region": "D01"}))["id"]
    asker = demo.resident_ids[0]
    await ask_unknown(client, [asker])
    [item] = await pending(client, token)

    holder = await _item_lock(db, item["id"])
    attach = asyncio.create_task(
        call(client, token, "POST", f"/review/{item['id']}/attach", json={"clarification_id": cid})
    )
    await _until_waiting(db, 1)
    fixed = "更正：酒精不能预防病毒感染。"
    if meanwhile == "edit":
        await ok(
            await call(
                client, token, "PATCH", f"/clarifications/{cid}", json={"explanation": fixed}
            )
        )
    else:
        await ok(await call(client, token, "POST", f"/clarifications/{cid}/withdraw"))
    await holder.rollback()
    await holder.close()
    await ok(await attach)

    sent = await rumor_rows(db, asker)
    if meanwhile == "edit":
        assert sent and all(fixed in r.payload["text"] for r in sent), [
            r.payload["text"] for r in sent
        ]
    else:
        assert sent == [], [r.payload["text"] for r in sent]


async def test_two_reviewers_attaching_one_item_at_once_one_is_refused(
    make_config, start_app, demo, db
):
    """resolve_item's False (the item was closed meanwhile) is ignored: both reviewers get 200
    although the item is attached to only one clarification."""
    if db.is_sqlite:
        pytest.skip("SQLite serializes writers")
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    one = (await publish(client, token, {**LIQUOR, "region": "D01"}))["id"]
    two = (await publish(client, token, CLAIM))["id"]
    await ask_unknown(client, demo.resident_ids[:1], post="这个说法：" + "周末全城停电检修，" * 4)
    [item] = await pending(client, token)

    holder = await _item_lock(db, item["id"])
    calls = [
        asyncio.create_task(
            call(
                client, token, "POST", f"/review/{item['id']}/attach", json={"clarification_id": c}
            )
        )
        for c in (one, two)
    ]
    await _until_waiting(db, 2)
    await holder.rollback()
    await holder.close()
    statuses = sorted([(await c).status for c in calls])

    assert statuses == [200, 409]


# -- corrections sent again ------------------------------------------------------------------


async def test_attaching_after_a_correction_does_not_notice_the_pushed_region_again(
    make_config, start_app, demo, db
):
    """Pushed (v1), corrected (v2: the grid gets a correction notice), then a review item is
    attached: deliver_current picks the v1 push again and the whole grid gets the same
    correction notice a second time."""
    client, _ = await start_app(make_config(notices={"quiet_hours": False}))
    token = await admin_token(db, demo)
    cid = (await publish(client, token, {**LIQUOR, "region": "D01"}))["id"]
    await ok(
        await call(
            client, token, "POST", f"/clarifications/{cid}/push", json={"regions": ["G0101"]}
        ),
        201,
    )
    edited = await ok(
        await call(
            client, token, "PATCH", f"/clarifications/{cid}", json={"explanation": "更正后的说明。"}
        )
    )
    assert len(edited["delivered"]["correction_notices"]) == 1
    await ask_unknown(client, demo.resident_ids[:1])
    [item] = await pending(client, token)

    attached = await ok(
        await call(
            client, token, "POST", f"/review/{item['id']}/attach", json={"clarification_id": cid}
        )
    )

    assert attached["delivered"]["notified"] == 1
    assert attached["delivered"]["correction_notices"] == []


async def test_changing_only_the_expiry_sends_no_update(make_config, start_app, demo, db):
    """Moving the expiry of a published clarification (not shown to residents) sends every
    recipient an "【更新】" message identical to what they already have."""
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    cid = (await publish(client, token, {**LIQUOR, "region": "D01"}))["id"]
    resident = demo.resident_ids[0]
    assert LIQUOR["explanation"] in await say(client, resident, "这是真的吗 " + LIQUOR["claim"])

    later = (utcnow() + timedelta(days=30)).isoformat()
    edited = await ok(
        await call(client, token, "PATCH", f"/clarifications/{cid}", json={"expires_at": later})
    )

    assert edited["delivered"]["updated"] == 0, [
        r.payload["text"] for r in await rumor_rows(db, resident)
    ]
