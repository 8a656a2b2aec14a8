"""The bridge contract of DESIGN.md, through the real app and real databases."""

from __future__ import annotations

import asyncio
import json

import pytest
from bridge_client import message, signed
from conftest import BRIDGE_SECRET
from sqlalchemy import func, select

from storage.models import Conversation, Identity, InboundMessage, Person

PATH = "/bridge/inbound"


async def count(db, table) -> int:
    async with db.read() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar()


async def post(client, body, **kw):
    raw, headers = signed(body, BRIDGE_SECRET, **kw)
    return await client.post(PATH, data=raw, headers=headers)


async def test_registration_by_grid_code_over_the_bridge(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    r = await post(client, message("m1", "wx-alice", "你好"))
    assert r.status == 200
    replies = (await r.json())["replies"]
    assert replies[0]["to"] == {"user_id": "wx-alice"}
    assert "网格编码" in "".join(x["text"] for x in replies)

    r = await post(client, message("m2", "wx-alice", "g0101"))
    assert "桃园社区第1网格" in (await r.json())["replies"][0]["text"]
    r = await post(client, message("m3", "wx-alice", "王小丫"))
    text = "".join(x["text"] for x in (await r.json())["replies"])
    assert "登记好了，王小丫" in text
    assert "网格员" in text
    async with db.read() as conn:
        person = (
            await conn.execute(
                select(Person.__table__)
                .join(Identity.__table__)
                .where(Identity.__table__.c.external_id == "wx-alice")
            )
        ).first()
    assert person.name == "王小丫"
    assert person.region_id == demo.grids[0].id


async def test_roster_match_by_phone_needs_the_roster_name(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    async with db.read() as conn:
        resident = (
            await conn.execute(
                select(Person.__table__).where(Person.__table__.c.id == demo.resident_ids[0])
            )
        ).first()
    await post(client, message("a1", "wx-bob", "在吗"))
    r = await post(client, message("a2", "wx-bob", resident.phone[:3] + " " + resident.phone[3:]))
    assert "姓名" in (await r.json())["replies"][0]["text"]
    r = await post(client, message("a3", "wx-bob", "不是这个名字"))
    assert "对不上" in (await r.json())["replies"][0]["text"]
    r = await post(client, message("a4", "wx-bob", resident.name))
    assert f"登记好了，{resident.name}" in (await r.json())["replies"][0]["text"]
    r = await post(client, message("a5", "wx-bob", "我的信息"))
    assert resident.name in (await r.json())["replies"][0]["text"]


async def test_repeated_message_id_returns_same_replies_and_stores_nothing(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    first = await post(client, message("dup-1", "wx-carol", "你好"))
    before = (await count(db, InboundMessage.__table__), await count(db, Conversation.__table__))
    again = await asyncio.gather(
        *[post(client, message("dup-1", "wx-carol", "你好")) for _ in range(3)]
    )
    assert all(r.status == 200 for r in again)
    bodies = [await r.json() for r in again]
    first_body = await first.json()
    assert first_body["replies"]
    assert all(b == first_body for b in bodies)
    after = (await count(db, InboundMessage.__table__), await count(db, Conversation.__table__))
    assert after == before


async def test_bad_signature_is_401_and_nothing_stored(make_config, start_app, db):
    client, _ = await start_app(make_config())
    raw, headers = signed(message("x1", "wx-eve", "hi"), "wrong-secret")
    r = await client.post(PATH, data=raw, headers=headers)
    assert r.status == 401
    assert (await r.json())["error"]["code"] == "bad_signature"
    assert await count(db, InboundMessage.__table__) == 0


async def test_stale_timestamp_is_401(make_config, start_app, db):
    client, _ = await start_app(make_config())
    r = await post(client, message("x2", "wx-eve", "hi"), timestamp=1_000_000_000)
    assert r.status == 401
    assert (await r.json())["error"]["code"] == "stale_timestamp"
    assert await count(db, InboundMessage.__table__) == 0


async def test_malformed_json_is_400(make_config, start_app, db):
    client, _ = await start_app(make_config())
    r = await post(client, b'{"message_id": "x3", "sender": ')
    assert r.status == 400
    assert (await r.json())["error"]["code"] == "malformed_json"
    r = await post(client, {"message_id": "x4", "sender": {"id": ""}, "text": "hi"})
    assert r.status == 400
    assert "sender.id" in (await r.json())["error"]["message"]
    assert await count(db, InboundMessage.__table__) == 0


async def test_body_over_the_limit_is_413(make_config, start_app, db):
    client, _ = await start_app(make_config())
    r = await post(client, message("x5", "wx-eve", "谣" * 40_000))
    assert r.status == 413
    assert await count(db, InboundMessage.__table__) == 0


async def test_unknown_fields_are_tolerated(make_config, start_app, demo):
    client, _ = await start_app(make_config())
    body = message("x6", "wx-frank", "你好")
    body["sender"]["avatar"] = "https://example.invalid/a.png"
    body["extra"] = {"anything": [1, 2, 3]}
    r = await post(client, body)
    assert r.status == 200
    assert json.dumps((await r.json())["replies"], ensure_ascii=False).count("网格编码") == 1


async def test_retry_with_a_message_id_longer_than_the_log_column_gets_the_same_replies(
    make_config, start_app, demo, db
):
    """The bridge takes a message_id of any length; the inbound log keeps a digest of one that
    does not fit its column (PostgreSQL's batch insert once truncated it, so the retry missed
    the dedupe, ran the handler again and ended in a 500)."""
    client, _ = await start_app(make_config())
    body = message("m" * 240, "wx-long-id", "你好")
    first = await post(client, body)
    assert first.status == 200
    retry = await post(client, body)
    assert retry.status == 200, await retry.text()
    assert await retry.json() == await first.json()
    assert await count(db, InboundMessage.__table__) == 1


async def test_message_ids_sharing_the_first_200_characters_are_two_messages(
    make_config, start_app, demo
):
    """A long common prefix (a chat id, then a counter) once collided after the truncation:
    the second message was never handled and got a 500 on every retry."""
    client, _ = await start_app(make_config())
    prefix = "chat-0001/" + "x" * 195
    first = await post(client, message(prefix + "-000001", "wx-prefix", "你好"))
    assert first.status == 200
    second = await post(client, message(prefix + "-000002", "wx-prefix", "g0101"))
    assert second.status == 200, await second.text()
    assert "桃园社区第1网格" in (await second.json())["replies"][0]["text"]


async def test_sender_or_chat_id_longer_than_an_address_is_400(make_config, start_app, db):
    client, _ = await start_app(make_config())
    r = await post(client, message("x7", "w" * 129, "hi"))
    assert r.status == 400
    assert "sender.id" in (await r.json())["error"]["message"]
    r = await post(client, message("x8", "wx-gina", "hi", chat="c" * 129))
    assert r.status == 400
    assert "chat.id" in (await r.json())["error"]["message"]
    r = await post(client, message("x9\u0000", "wx-gina", "hi"))
    assert r.status == 400
    assert "message_id" in (await r.json())["error"]["message"]
    assert await count(db, InboundMessage.__table__) == 0


async def test_timestamp_header_that_is_not_ascii_unix_seconds_is_401_not_500(
    make_config, start_app, db
):
    """str.isdigit() took '²' and 5000 digits, which int() refuses or the clock comparison
    chokes on: the unauthenticated request ended in a 500 before its signature was checked."""
    client, _ = await start_app(make_config())
    for timestamp in ("1²", "٣", "9" * 5000, "-1", ""):
        r = await client.post(
            PATH,
            data=b"{}",
            headers={"X-Bridge-Timestamp": timestamp, "X-Bridge-Signature": "0" * 64},
        )
        assert r.status == 401, (timestamp[:10], await r.text())
        assert (await r.json())["error"]["code"] == "bad_timestamp"
    assert await count(db, InboundMessage.__table__) == 0


async def test_non_finite_timestamp_in_a_signed_body_is_400_not_500(make_config, start_app, db):
    """JSON's 1e999 reads as inf and Python's reader takes NaN; int() of either raised outside
    the bad-message handling."""
    client, _ = await start_app(make_config())
    for value in (b"1e999", b"-1e999", b"NaN"):
        raw = (
            b'{"message_id": "t-inf", "sender": {"id": "wx-inf"}, "text": "hi", "timestamp": '
            + value
            + b"}"
        )
        r = await post(client, raw)
        assert r.status == 400, (value, await r.text())
        error = (await r.json())["error"]
        assert error["code"] == "bad_message"
        assert "timestamp" in error["message"]
    assert await count(db, InboundMessage.__table__) == 0


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        pytest.param("你好\u0000", "你好", id="nul"),
        # A gateway that cuts at UTF-16 code units leaves half an emoji: "\ud83d" in the JSON.
        pytest.param("你好\ud83d", "你好\ufffd", id="lone-surrogate"),
    ],
)
async def test_text_the_database_cannot_hold_is_cleaned_and_answered(
    make_config, start_app, demo, db, text, stored
):
    """PostgreSQL text cannot hold NUL and no UTF-8 encoder takes a lone surrogate: the log
    insert failed, then the apology's (same text) too, and every retry got a 500."""
    client, _ = await start_app(make_config())
    body = {"message_id": "odd-1", "sender": {"id": "wx-odd"}, "text": text, "timestamp": 0}
    r = await post(client, json.dumps(body).encode())
    assert r.status == 200, await r.text()
    assert "网格编码" in "".join(x["text"] for x in (await r.json())["replies"])
    async with db.read() as conn:
        logged = (await conn.execute(select(InboundMessage.__table__.c.text))).scalar_one()
    assert logged == stored
