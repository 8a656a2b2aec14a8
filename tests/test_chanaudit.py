"""Audit findings (chanaudit): each test fails on main and shows one bug."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakes.wechat_api import FakeWeChat, start_fake_wechat
from sqlalchemy import select
from wechat_client import ACCOUNT, AES_KEY, MP_TOKEN, event_message, signed_query

from storage.models import InboundMessage

MP_PATH = "/wechat/mp"
OPENID = "o_resident_1"


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    server = await start_fake_wechat()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def mp_config(make_config, fake):
    def build(*, aes_key: str = AES_KEY, **mp: Any):
        section = {
            "enabled": True,
            "app_id": fake.app_id,
            "app_secret": fake.app_secret,
            "token": MP_TOKEN,
            "encoding_aes_key": aes_key,
            "api_base": fake.base_url,
            **mp,
        }
        return make_config(channels={"wechat_mp": section})

    return build


async def test_retry_of_a_view_event_with_a_long_url_is_deduplicated(mp_config, start_app, db):
    """Tencent retries a callback it got no answer to; the retry carries the same document."""
    client, _ = await start_app(mp_config(aes_key=""))
    url = "https://grid.example.gov.cn/h5/" + "a" * 250
    document = event_message(OPENID, "VIEW", key=url, to=ACCOUNT)
    first = await client.post(MP_PATH, params=signed_query(), data=document.encode())
    retry = await client.post(MP_PATH, params=signed_query(), data=document.encode())
    assert (first.status, retry.status) == (200, 200), await retry.text()
    async with db.read() as conn:
        keys = list((await conn.execute(select(InboundMessage.__table__.c.dedupe_key))).scalars())
    assert len(keys) == 1


# --- the bridge -------------------------------------------------------------------------------

BRIDGE_PATH = "/bridge/inbound"


async def bridge_post(client, body, **kw):
    from bridge_client import signed
    from conftest import BRIDGE_SECRET

    raw, headers = signed(body, BRIDGE_SECRET, **kw)
    return await client.post(BRIDGE_PATH, data=raw, headers=headers)


async def test_bridge_retry_with_a_long_message_id_gets_the_same_replies(
    make_config, start_app, demo, db
):
    """The bridge takes any non-empty message_id.  Over 200 characters, PostgreSQL's batch
    log insert (unnest of VARCHAR(200)[] arrays: an explicit cast) truncates it silently, so
    the retry's lookup by the full id misses and the retry ends in a 500."""
    from bridge_client import message

    client, _ = await start_app(make_config())
    body = message("m" * 240, "wx-long-id", "你好")
    first = await bridge_post(client, body)
    assert first.status == 200
    retry = await bridge_post(client, body)
    assert retry.status == 200, await retry.text()
    assert await retry.json() == await first.json()


async def test_bridge_second_message_sharing_a_long_id_prefix_is_handled(
    make_config, start_app, demo, db
):
    """Two different gateway ids that share their first 200 characters (a long common
    prefix such as a chat id followed by a counter) collide after the truncation: the second
    message is never handled and the gateway gets a 500 for it on every retry."""
    from bridge_client import message

    client, _ = await start_app(make_config())
    prefix = "chat-0001/" + "x" * 195
    first = await bridge_post(client, message(prefix + "-000001", "wx-prefix", "你好"))
    assert first.status == 200
    second = await bridge_post(client, message(prefix + "-000002", "wx-prefix", "g0101"))
    assert second.status == 200, await second.text()
    assert "桃园社区第1网格" in (await second.json())["replies"][0]["text"]


async def test_bridge_timestamp_header_with_a_non_ascii_digit_is_401_not_500(
    make_config, start_app
):
    """str.isdigit() accepts '²' (and other digits int() refuses): the unauthenticated
    request crashes in int() before its signature is checked."""
    client, _ = await start_app(make_config())
    r = await client.post(
        BRIDGE_PATH,
        data=b"{}",
        headers={"X-Bridge-Timestamp": "1²", "X-Bridge-Signature": "0" * 64},
    )
    assert r.status == 401, await r.text()
    r = await client.post(
        BRIDGE_PATH,
        data=b"{}",
        headers={"X-Bridge-Timestamp": "9" * 5000, "X-Bridge-Signature": "0" * 64},
    )
    assert r.status == 401, await r.text()


async def test_bridge_non_finite_timestamp_in_the_body_is_400_not_500(make_config, start_app, demo):
    """json.loads reads 1e999 as inf (and accepts NaN); int() of either raises outside the
    BadMessage handling, so a signed message gets a 500."""

    client, _ = await start_app(make_config())
    raw = b'{"message_id": "t-inf", "sender": {"id": "wx-inf"}, "text": "hi", "timestamp": 1e999}'
    r = await bridge_post(client, raw)
    assert r.status in (200, 400), await r.text()
    assert r.status != 500


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("你好\u0000", id="nul"),
        # A gateway that cuts at UTF-16 code units leaves half an emoji: "\ud83d" in the JSON.
        pytest.param("好的\ud83d", id="lone-surrogate"),
    ],
)
async def test_bridge_text_the_database_cannot_hold_is_answered_not_500(
    make_config, start_app, demo, text
):
    """The message text goes to inbound_messages.text as it came.  PostgreSQL text cannot
    hold NUL, and no UTF-8 encoder takes a lone surrogate: the log insert fails, then the
    apology's log insert (same text) fails too, and the gateway gets a 500 on every retry."""
    import json

    client, _ = await start_app(make_config())
    body = {
        "message_id": f"odd-{len(text)}-{ord(text[-1])}",
        "sender": {"id": "wx-odd"},
        "text": text,
        "timestamp": 0,
    }
    r = await bridge_post(client, json.dumps(body).encode())
    assert r.status in (200, 400), await r.text()


# --- the outbox -------------------------------------------------------------------------------


async def test_a_late_failure_does_not_move_a_sent_row_back_to_pending(db):
    """Worker A claims a row and its send hangs past claim_timeout; worker B claims it again
    (stale claim), sends it and marks it sent; then A's attempt ends in a timeout and A
    records the failure.  mark_sent is guarded by status == sending, mark_failed is not: the
    row goes back to pending and is sent a second time at its retry."""
    from datetime import timedelta

    from storage.models import OutboxMessage, OutboxStatus, utcnow
    from storage.outbox import Target, claim_due, enqueue, mark_failed, mark_sent, outbox_row

    table = OutboxMessage.__table__
    async with db.write() as conn:
        await enqueue(
            conn,
            [outbox_row(key="k1", target=Target("bridge", "user", "u1"), payload={"text": "x"})],
            db.insert_ignore(table),
        )
    t0 = utcnow()
    timeout = timedelta(seconds=300)
    async with db.write() as conn:  # worker A
        (first,) = await claim_due(
            conn, limit=10, claim_timeout=timeout, skip_locked=not db.is_sqlite, now=t0
        )
    later = t0 + timeout + timedelta(seconds=1)
    async with db.write() as conn:  # worker B, after the claim timeout
        (second,) = await claim_due(
            conn, limit=10, claim_timeout=timeout, skip_locked=not db.is_sqlite, now=later
        )
        await mark_sent(conn, [(second.id, None)], now=later)
    assert first.id == second.id
    async with db.write() as conn:  # worker A's attempt finally times out
        await mark_failed(
            conn, first.id, error="WxUnavailable: timeout", retry_at=later + timedelta(seconds=5)
        )
    async with db.read() as conn:
        status = (await conn.execute(select(table.c.status))).scalar_one()
    assert status == OutboxStatus.SENT


# --- requests in chat -------------------------------------------------------------------------


async def test_verdict_and_rating_with_trailing_punctuation_are_understood(
    make_config, start_app, demo, db
):
    """Residents type "满意！" / "5分。" (and WeChat's speech recognition, which the voice path
    treats as typed text, ends sentences with "。").  The category and urgency questions
    accept a trailing mark (parse_choices), but the verdict is an exact keyword match and
    parse_rating's pattern ends at the unit: the verdict falls through to "not understood"
    and the rating is refused."""
    from test_requests import file_in_chat, request_row, resident_in, say

    client, _ = await start_app(make_config())
    resident = await resident_in(db, demo, "G0101")
    warden = demo.wardens["G0101"]
    number = await file_in_chat(client, resident, "2", "想配一些感冒药", "一般。")
    await say(client, warden, f"{number} 受理")
    await say(client, warden, f"{number} 办结：药已送到家门口")
    await say(client, resident, "满意！")
    row = await request_row(db, number)
    assert (row.status, row.satisfied) == ("closed", True)
    await say(client, resident, "5分。")
    row = await request_row(db, number)
    assert row.rating == 5


async def test_safe_mode_account_refuses_an_unencrypted_body_under_a_replayed_url(
    mp_config, start_app, fake, db, demo
):
    """In safe mode only msg_signature binds the body; the URL signature covers token,
    timestamp and nonce only.  The channel still takes a plaintext body with just the URL
    signature on an account that has an encoding_aes_key, so anyone who sees one callback URL
    (a proxy's access log; gridbot's own access log writes path_qs) can, within the clock
    skew, post any plaintext message as any openid (a warden's, say) with that URL."""
    from wechat_client import mp_crypto, mp_safe_request, text_message

    client, _ = await start_app(mp_config())
    query, body = mp_safe_request(mp_crypto(fake.app_id), text_message(OPENID, "你好"))
    r = await client.post(MP_PATH, params=query, data=body)
    assert r.status == 200
    # The same URL, as logged, with a forged plaintext body from someone else.
    replayed = {k: query[k] for k in ("signature", "timestamp", "nonce")}
    forged = text_message("o_forged_warden", "待办")
    r = await client.post(MP_PATH, params=replayed, data=forged.encode())
    async with db.read() as conn:
        senders = list((await conn.execute(select(InboundMessage.__table__.c.sender_id))).scalars())
    assert "o_forged_warden" not in senders
    assert r.status == 403
