"""The official account channel through the real app, the fake WeChat API and real databases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from fakes.wechat_api import FakeWeChat, start_fake_wechat
from sqlalchemy import func, select, update
from wechat_client import (
    ACCOUNT,
    AES_KEY,
    MP_TOKEN,
    event_message,
    load_vectors,
    mp_crypto,
    mp_safe_request,
    next_msg_id,
    open_reply,
    signed_query,
    text_message,
    xml,
)

from bot.channels.wxprotocol import MessageCrypto, safe_parse_xml, url_signature
from bot.messages import Outbound
from handlers.router import Route
from storage import repo
from storage.models import InboundMessage, OutboxMessage, Person, RawPayload, utcnow
from storage.outbox import Target, enqueue, outbox_row, person_target

PATH = "/wechat/mp"
OPENID = "o_resident_1"
CUSTOM_SEND = "/cgi-bin/message/custom/send"
TEMPLATE_SEND = "/cgi-bin/message/template/send"
STABLE_TOKEN = "/cgi-bin/stable_token"

VECTORS = load_vectors()
[MP_VECTOR] = [v for v in VECTORS if v["kind"] == "wechat_mp"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    server = await start_fake_wechat()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def mp_config(make_config, fake):
    """A config with the official account on, with an AES key (compatible ``message_mode``,
    the default) unless ``aes_key=""``."""

    def build(
        *,
        aes_key: str = AES_KEY,
        conversation: dict[str, Any] | None = None,
        notices: dict[str, Any] | None = None,
        **mp: Any,
    ):
        section = {
            "enabled": True,
            "app_id": fake.app_id,
            "app_secret": fake.app_secret,
            "token": MP_TOKEN,
            "encoding_aes_key": aes_key,
            "api_base": fake.base_url,
            **mp,
        }
        extra = {"conversation": conversation} if conversation else {}
        if notices:
            extra["notices"] = notices
        return make_config(channels={"wechat_mp": section}, **extra)

    return build


async def count_rows(db, table) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar())


async def raw_payloads(db) -> list[Any]:
    async with db.read() as conn:
        return list(await conn.execute(select(RawPayload.__table__)))


async def outbox_rows(db) -> list[Any]:
    async with db.read() as conn:
        return list(await conn.execute(select(OutboxMessage.__table__).order_by(OutboxMessage.id)))


async def bind(db, person_id: int, openid: str = OPENID, channel: str = "wechat_mp") -> None:
    async with db.write() as conn:
        await repo.bind_identity(conn, person_id, channel, openid, "")


async def queue(db, rt, *rows: dict[str, Any]) -> None:
    async with db.write() as conn:
        await enqueue(conn, list(rows), rt.db.insert_ignore(OutboxMessage.__table__))


def push(key: str, text: str = "请完成今日健康打卡", openid: str = OPENID, **payload: Any):
    return outbox_row(
        key=key, target=Target("wechat_mp", "user", openid), payload={"text": text, **payload}
    )


async def post_plain(client, document: str | bytes, **query: str):
    params = {**signed_query(), **query}
    body = document.encode() if isinstance(document, str) else document
    return await client.post(PATH, params=params, data=body)


async def post_safe(client, crypto, document: str, **kw: Any):
    query, body = mp_safe_request(crypto, document, **kw)
    return await client.post(PATH, params=query, data=body)


# --- URL verification -------------------------------------------------------------------------


async def test_get_verification_echoes_echostr_when_signed(mp_config, start_app):
    client, _ = await start_app(mp_config())
    r = await client.get(PATH, params={**signed_query(), "echostr": "8937461"})
    assert r.status == 200
    assert await r.text() == "8937461"
    bad = {**signed_query(), "echostr": "8937461", "signature": "0" * 40}
    r = await client.get(PATH, params=bad)
    assert r.status == 403
    r = await client.get(PATH, params={"echostr": "8937461"})
    assert r.status == 403


# --- the three modes --------------------------------------------------------------------------


async def test_plaintext_mode_gets_a_plain_passive_reply(mp_config, start_app, demo):
    client, _ = await start_app(mp_config(aes_key=""))
    r = await post_plain(client, text_message(OPENID, "你好"))
    assert r.status == 200
    reply = safe_parse_xml(await r.text())
    assert reply["ToUserName"] == OPENID
    assert reply["FromUserName"] == ACCOUNT
    assert reply["MsgType"] == "text"
    assert "网格编码" in reply["Content"]


async def test_safe_mode_reply_is_encrypted_with_a_valid_msg_signature(
    mp_config, start_app, fake, demo
):
    client, _ = await start_app(mp_config())
    crypto = mp_crypto(fake.app_id)
    r = await post_safe(client, crypto, text_message(OPENID, "你好"))
    assert r.status == 200
    body = await r.text()
    assert set(safe_parse_xml(body)) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    reply = open_reply(crypto, body)
    assert reply["ToUserName"] == OPENID
    assert "网格编码" in reply["Content"]


async def test_compatible_mode_reads_the_encrypted_part_and_answers_encrypted(
    mp_config, start_app, fake, demo
):
    client, _ = await start_app(mp_config())
    crypto = mp_crypto(fake.app_id)
    # Compatible mode: the plaintext fields travel beside Encrypt; the encrypted part counts.
    plain = xml(FromUserName="o_plain_part", MsgType="text", Content="你好")
    plain = plain.removeprefix("<xml>").removesuffix("</xml>")
    r = await post_safe(client, crypto, text_message(OPENID, "你好"), plain_fields=plain)
    assert r.status == 200
    reply = open_reply(crypto, await r.text())
    assert reply["ToUserName"] == OPENID
    assert "网格编码" in reply["Content"]


async def test_plaintext_request_to_a_compatible_mode_account_is_answered_plain(
    mp_config, start_app, demo
):
    client, _ = await start_app(mp_config(message_mode="compatible"))
    r = await post_plain(client, text_message(OPENID, "你好"))
    assert "网格编码" in safe_parse_xml(await r.text())["Content"]


async def test_safe_mode_account_refuses_a_plaintext_body_under_a_replayed_url(
    mp_config, start_app, fake, db, demo, caplog
):
    """In safe mode only msg_signature binds the body; the URL signature covers token,
    timestamp and nonce only.  Anyone who saw one callback URL (a proxy's access log) could
    otherwise post, within the clock skew, any plaintext message as any openid with it."""
    client, _ = await start_app(mp_config(message_mode="safe"))
    query, body = mp_safe_request(mp_crypto(fake.app_id), text_message(OPENID, "你好"))
    r = await client.post(PATH, params=query, data=body)
    assert r.status == 200
    # The same URL, as logged, with a forged plaintext body from someone else.
    replayed = {k: query[k] for k in ("signature", "timestamp", "nonce")}
    r = await client.post(PATH, params=replayed, data=text_message("o_forged", "待办").encode())
    assert r.status == 403
    async with db.read() as conn:
        senders = list((await conn.execute(select(InboundMessage.__table__.c.sender_id))).scalars())
    assert senders == [OPENID]
    assert "message_mode is safe" in caplog.text


async def test_plain_mode_reads_the_body_as_plaintext_even_with_a_key(mp_config, start_app, demo):
    client, _ = await start_app(mp_config(message_mode="plain"))
    r = await post_plain(client, text_message(OPENID, "你好"), encrypt_type="aes")
    assert r.status == 200
    assert "网格编码" in safe_parse_xml(await r.text())["Content"]


async def test_official_sample_is_accepted_and_answered(make_config, start_app, fake, demo):
    v = MP_VECTOR
    config = make_config(
        channels={
            "wechat_mp": {
                "enabled": True,
                "app_id": v["app_id"],
                "app_secret": "unused",
                "token": v["token"],
                "encoding_aes_key": v["encoding_aes_key"],
                "api_base": fake.base_url,
                "max_clock_skew_s": 0,  # the sample is from 2014
            }
        }
    )
    client, _ = await start_app(config)
    query = {
        "signature": v["url_signature"],
        "timestamp": v["timestamp"],
        "nonce": v["nonce"],
        "encrypt_type": "aes",
        "msg_signature": v["msg_signature"],
        "openid": "oyORnuP8q7ou2gfYjqLzSIWZf0rs",
    }
    body = (
        "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>"
        f"<Encrypt><![CDATA[{v['encrypt']}]]></Encrypt></xml>"
    )
    r = await client.post(PATH, params=query, data=body.encode())
    assert r.status == 200
    crypto = MessageCrypto(
        "wechat_mp", token=v["token"], encoding_aes_key=v["encoding_aes_key"], app_id=v["app_id"]
    )
    reply = open_reply(crypto, await r.text())
    assert reply["ToUserName"] == "oyORnuP8q7ou2gfYjqLzSIWZf0rs"
    assert reply["FromUserName"] == "gh_10f6c3c3ac5a"
    assert "网格编码" in reply["Content"]
    # The same sample again is a retry: same reply, nothing run twice.
    again = await client.post(PATH, params=query, data=body.encode())
    assert open_reply(crypto, await again.text()) == reply


# --- refusals ---------------------------------------------------------------------------------


async def test_bad_signatures_are_403_and_nothing_is_stored(mp_config, start_app, fake, db, demo):
    client, _ = await start_app(mp_config())
    document = text_message(OPENID, "你好")
    r = await client.post(
        PATH, params={**signed_query(), "signature": "f" * 40}, data=document.encode()
    )
    assert r.status == 403
    r = await client.post(PATH, params={"timestamp": "1", "nonce": "2"}, data=document.encode())
    assert r.status == 403
    query, body = mp_safe_request(mp_crypto(fake.app_id), document)
    r = await client.post(PATH, params={**query, "msg_signature": "0" * 40}, data=body)
    assert r.status == 403
    r = await client.post(PATH, params={**query, "signature": "ünïcode"}, data=body)
    assert r.status == 403
    assert await count_rows(db, InboundMessage.__table__) == 0
    assert await raw_payloads(db) == []


async def test_stale_timestamp_is_refused(mp_config, start_app, fake, db):
    client, _ = await start_app(mp_config(max_clock_skew_s=60))
    stale = int(utcnow().timestamp()) - 3600
    r = await post_plain(client, text_message(OPENID, "你好"), **signed_query(timestamp=stale))
    assert r.status == 403
    r = await post_safe(
        client, mp_crypto(fake.app_id), text_message(OPENID, "你好"), timestamp=stale
    )
    assert r.status == 403
    assert await count_rows(db, InboundMessage.__table__) == 0


async def test_skew_check_can_be_switched_off(mp_config, start_app, demo):
    client, _ = await start_app(mp_config(aes_key="", max_clock_skew_s=0))
    r = await post_plain(client, text_message(OPENID, "你好"), **signed_query(timestamp=1))
    assert r.status == 200


async def test_body_over_64_kib_is_413(mp_config, start_app, db):
    client, _ = await start_app(mp_config(aes_key=""))
    r = await post_plain(client, text_message(OPENID, "谣" * 30_000))
    assert r.status == 413

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length to go by
        for _ in range(70):
            yield b"x" * 1024

    r = await client.post(PATH, params=signed_query(), data=chunked())
    assert r.status == 413
    assert await count_rows(db, InboundMessage.__table__) == 0


async def test_billion_laughs_is_refused_kept_and_answered_success(mp_config, start_app, db):
    client, _ = await start_app(mp_config(aes_key=""))
    lol = (
        '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY lol "lol">'
        + "".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
            for i in range(1, 10)
        )
        + "]><xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>"
        "<MsgType>text</MsgType><Content>&lol9;</Content></xml>"
    )
    r = await post_plain(client, lol)
    assert r.status == 200
    assert await r.text() == "success"
    kept = await raw_payloads(db)
    assert len(kept) == 1
    assert "forbidden" in kept[0].reason
    assert kept[0].body.startswith('<?xml version="1.0"?><!DOCTYPE')
    assert await count_rows(db, InboundMessage.__table__) == 0
    # Unsigned, it is refused before anything is parsed or kept.
    r = await client.post(PATH, params={"timestamp": "1", "nonce": "1"}, data=lol.encode())
    assert r.status == 403
    assert len(await raw_payloads(db)) == 1


async def test_unusable_bodies_answer_success_and_are_kept(mp_config, start_app, fake, db):
    client, _ = await start_app(mp_config())
    bodies: list[bytes] = [
        b"<xml><ToUserName>a</ToUserName",  # malformed
        "<xml><Content>你好</Content></xml>".encode("gbk"),  # not UTF-8
        xml(ToUserName=ACCOUNT, FromUserName=OPENID, CreateTime=1, MsgType="hologram").encode(),
        b"\x00\x01binary",
    ]
    for body in bodies:
        r = await post_plain(client, body)
        assert r.status == 200
        assert await r.text() == "success"
    # Encrypted, correctly signed, but not decryptable: kept too.
    garbage = "QUJDRA=="
    query = signed_query()
    query.update(
        encrypt_type="aes",
        msg_signature=url_signature(MP_TOKEN, query["timestamp"], query["nonce"], garbage),
    )
    r = await client.post(PATH, params=query, data=f"<xml><Encrypt>{garbage}</Encrypt></xml>")
    assert (r.status, await r.text()) == (200, "success")
    # A broken envelope behind a valid URL signature: kept.
    query["msg_signature"] = "0" * 40
    r = await client.post(PATH, params=query, data=b"<xml><Encrypt>")
    assert (r.status, await r.text()) == (200, "success")
    kept = await raw_payloads(db)
    assert len(kept) == 6
    reasons = " | ".join(row.reason for row in kept)
    assert "malformed XML" in reasons
    assert "not UTF-8" in reasons
    assert "unknown message type 'hologram'" in reasons
    assert "bad length" in reasons
    assert all("\x00" not in row.body for row in kept)
    assert await count_rows(db, InboundMessage.__table__) == 0


async def test_deeply_nested_safe_mode_message_is_kept_not_a_500(mp_config, start_app, fake, db):
    client, _ = await start_app(mp_config())
    crypto = mp_crypto(fake.app_id)
    document = xml(ToUserName=ACCOUNT, FromUserName=OPENID, CreateTime=1, MsgType="text").replace(
        "</xml>", "<Deep>" + "<a>" * 4000 + "</a>" * 4000 + "</Deep></xml>"
    )
    r = await post_safe(client, crypto, document)
    assert (r.status, await r.text()) == (200, "success")
    (kept,) = await raw_payloads(db)
    assert kept.reason == "elements nested too deeply"
    assert await count_rows(db, InboundMessage.__table__) == 0


async def test_kept_bodies_are_size_capped(mp_config, start_app, db):
    client, _ = await start_app(mp_config(aes_key=""))
    r = await post_plain(client, b"<xml>" + b"x" * 60_000)
    assert r.status == 200
    (kept,) = await raw_payloads(db)
    assert len(kept.body) <= 16 * 1024


# --- dedupe and the 5-second rule -------------------------------------------------------------


async def test_retry_of_a_view_event_with_a_long_url_is_deduplicated(
    mp_config, start_app, db, demo
):
    """Tencent retries a callback it got no answer to, with the same document.  A VIEW event's
    dedupe key carries the menu's URL; over the log column, PostgreSQL's batch insert once
    truncated it, so the retry missed the dedupe and ended in a 500."""
    client, _ = await start_app(mp_config(aes_key=""))
    url = "https://grid.example.gov.cn/h5/" + "a" * 250
    document = event_message(OPENID, "VIEW", key=url, to=ACCOUNT)
    first = await post_plain(client, document)
    retry = await post_plain(client, document)
    assert (first.status, retry.status) == (200, 200), await retry.text()
    assert await retry.text() == await first.text()
    assert await count_rows(db, InboundMessage.__table__) == 1


async def test_same_msgid_three_times_concurrently_runs_the_flow_once(
    mp_config, start_app, fake, db, demo
):
    client, rt = await start_app(mp_config())
    runs: list[str] = []

    async def counting(ctx) -> None:
        runs.append(ctx.inbound.dedupe_key)
        await asyncio.sleep(0.05)
        ctx.say("help/not_understood")

    rt.dispatcher.router.routes.insert(
        0, Route(counting, keywords=frozenset({"数一数"}), registered=None)
    )
    crypto = mp_crypto(fake.app_id)
    document = text_message(OPENID, "数一数", msg_id=next_msg_id())
    responses = await asyncio.gather(*[post_safe(client, crypto, document) for _ in range(3)])
    replies = [open_reply(crypto, await r.text()) for r in responses]
    assert len(runs) == 1
    assert replies[0]["Content"]
    assert replies[0] == replies[1] == replies[2]
    assert await count_rows(db, InboundMessage.__table__) == 1


async def test_slow_flow_answers_success_and_replies_through_customer_service(
    mp_config, start_app, fake, db, demo
):
    client, rt = await start_app(mp_config(conversation={"reply_budget_s": 0.3}))

    async def slow(ctx) -> None:
        await asyncio.sleep(1.0)
        ctx.say("help/not_understood")

    rt.dispatcher.router.routes.insert(
        0, Route(slow, keywords=frozenset({"慢慢来"}), registered=None)
    )
    crypto = mp_crypto(fake.app_id)
    document = text_message(OPENID, "慢慢来")
    r = await post_safe(client, crypto, document)
    assert (r.status, await r.text()) == (200, "success")
    await rt.dispatcher.drain()
    # WeChat's retry of the same message after the reply went to the outbox: success, no rerun.
    r = await post_safe(client, crypto, document)
    assert (r.status, await r.text()) == (200, "success")
    assert await rt.delivery.run_once() == 1
    (call,) = fake.calls_to(CUSTOM_SEND)
    assert call.json["touser"] == OPENID
    assert call.json["msgtype"] == "text"
    assert call.json["text"]["content"] == rt.dispatcher.texts.render("help/not_understood")
    (row,) = await outbox_rows(db)
    assert row.status == "sent"
    assert row.key.startswith("reply:wechat_mp:")


# --- events -----------------------------------------------------------------------------------


async def test_subscribe_with_grid_scene_binds_to_that_grid(mp_config, start_app, fake, db, demo):
    client, _ = await start_app(mp_config())
    crypto = mp_crypto(fake.app_id)
    r = await post_safe(
        client,
        crypto,
        event_message("o_newcomer", "subscribe", key="qrscene_G0101", Ticket="TICKET"),
    )
    assert "桃园社区第1网格" in open_reply(crypto, await r.text())["Content"]
    r = await post_safe(client, crypto, text_message("o_newcomer", "王小丫"))
    assert "登记好了，王小丫" in open_reply(crypto, await r.text())["Content"]
    async with db.read() as conn:
        person_id = await repo.find_person_by_identity(conn, "wechat_mp", "o_newcomer")
        assert person_id is not None
        person = await repo.load_person(conn, person_id)
    assert person is not None
    assert person.region is not None and person.region.id == demo.grids[0].id


async def test_menu_click_does_what_the_keyword_does(mp_config, start_app, fake, db, demo):
    client, _ = await start_app(mp_config())
    resident = demo.resident_ids[0]
    await bind(db, resident)
    crypto = mp_crypto(fake.app_id)
    r = await post_safe(client, crypto, event_message(OPENID, "CLICK", key="MY_INFO"))
    by_click = open_reply(crypto, await r.text())["Content"]
    r = await post_safe(client, crypto, text_message(OPENID, "我的信息"))
    by_text = open_reply(crypto, await r.text())["Content"]
    assert by_click == by_text
    async with db.read() as conn:
        person = await repo.load_person(conn, resident)
    assert person is not None and person.name in by_click
    r = await post_safe(client, crypto, event_message(OPENID, "CLICK", key="HELP"))
    assert "我的信息" in open_reply(crypto, await r.text())["Content"]
    r = await post_safe(client, crypto, event_message(OPENID, "CLICK", key="NO_SUCH_KEY"))
    assert "帮助" in open_reply(crypto, await r.text())["Content"]


async def test_unsubscribe_opts_out_and_stops_pushes(mp_config, start_app, fake, db, demo):
    client, _ = await start_app(mp_config())
    resident = demo.resident_ids[1]
    await bind(db, resident)
    async with db.read() as conn:
        assert await person_target(conn, resident) == Target("wechat_mp", "user", OPENID)
    r = await post_safe(client, mp_crypto(fake.app_id), event_message(OPENID, "unsubscribe"))
    assert r.status == 200
    async with db.read() as conn:
        person = (await conn.execute(select(Person.__table__).where(Person.id == resident))).first()
        assert person.opted_out is True
        assert await person_target(conn, resident) is None


async def test_template_finish_event_is_recorded_on_the_outbox_row(mp_config, start_app, fake, db):
    client, rt = await start_app(mp_config())
    await queue(
        db,
        rt,
        outbox_row(
            key="tpl-1",
            target=Target("wechat_mp", "user", OPENID),
            payload={"template": {"template_id": "TPL", "data": {"first": {"value": "通知"}}}},
        ),
    )
    assert await rt.delivery.run_once() == 1
    (row,) = await outbox_rows(db)
    assert row.status == "sent" and row.platform_msg_id
    event = event_message(
        OPENID, "TEMPLATESENDJOBFINISH", MsgID=int(row.platform_msg_id), Status="failed:user block"
    )
    r = await post_safe(client, mp_crypto(fake.app_id), event)
    assert (r.status, await r.text()) == (200, "success")
    (row,) = await outbox_rows(db)
    assert row.status == "sent"
    assert row.payload["platform_status"] == "failed:user block"
    assert row.last_error == "template delivery: failed:user block"
    assert await count_rows(db, InboundMessage.__table__) == 0


# --- outbound ---------------------------------------------------------------------------------


async def test_customer_service_text_goes_out_with_one_token(mp_config, start_app, fake, db):
    _, rt = await start_app(mp_config())
    await queue(db, rt, push("p1"), push("p2", "第二条"))
    assert await rt.delivery.run_once() == 2
    assert len(fake.calls_to(STABLE_TOKEN)) == 1
    sent = sorted(c.json["text"]["content"] for c in fake.calls_to(CUSTOM_SEND))
    assert sent == sorted(["请完成今日健康打卡", "第二条"])
    assert {row.status for row in await outbox_rows(db)} == {"sent"}


async def test_token_expired_once_causes_one_refresh_and_one_retry(mp_config, start_app, fake, db):
    _, rt = await start_app(mp_config())
    await queue(db, rt, push("warm-up"))
    await rt.delivery.run_once()
    fake.expire_tokens()
    await queue(db, rt, push("after-expiry"))
    assert await rt.delivery.run_once() == 1
    assert len(fake.calls_to(STABLE_TOKEN)) == 2
    assert len(fake.calls_to(CUSTOM_SEND)) == 3
    assert {row.status for row in await outbox_rows(db)} == {"sent"}


async def test_token_refused_twice_is_not_a_loop(mp_config, start_app, fake, db):
    _, rt = await start_app(mp_config())
    fake.script(CUSTOM_SEND, [{"errcode": 40001}, {"errcode": 40001}, {"errcode": 40001}])
    await queue(db, rt, push("p1"))
    await rt.delivery.run_once()
    assert len(fake.calls_to(CUSTOM_SEND)) == 2
    assert len(fake.calls_to(STABLE_TOKEN)) == 2
    (row,) = await outbox_rows(db)
    assert row.status == "pending"
    assert "40001" in row.last_error


async def test_rate_limit_45009_backs_off(mp_config, start_app, fake, db):
    _, rt = await start_app(mp_config())
    fake.script(CUSTOM_SEND, [{"errcode": 45009}])
    await queue(db, rt, push("p1"))
    before = utcnow()
    await rt.delivery.run_once()
    (row,) = await outbox_rows(db)
    assert row.status == "pending"
    assert "45009" in row.last_error
    assert row.next_attempt_at >= before + timedelta(seconds=59)
    assert await rt.delivery.run_once() == 0  # not due yet


async def test_out_of_window_falls_back_to_the_template(mp_config, start_app, fake, db):
    _, rt = await start_app(
        mp_config(fallback_template_id="TPL-NOTICE", fallback_page="https://example.invalid/n")
    )
    fake.script(CUSTOM_SEND, [{"errcode": 45015}])
    await queue(db, rt, push("p1", "今晚8点起全员核酸检测，请带好身份证"))
    await rt.delivery.run_once()
    (call,) = fake.calls_to(TEMPLATE_SEND)
    assert call.json["template_id"] == "TPL-NOTICE"
    assert call.json["touser"] == OPENID
    assert call.json["url"] == "https://example.invalid/n"
    assert call.json["data"]["content"]["value"] == "今晚8点起全员核酸检测，请带好身份证"
    (row,) = await outbox_rows(db)
    assert row.status == "sent"
    assert row.platform_msg_id


async def test_out_of_window_falls_back_to_a_subscribe_message(mp_config, start_app, fake, db):
    _, rt = await start_app(mp_config(fallback_subscribe_template_id="SUB-1"))
    fake.script(CUSTOM_SEND, [{"errcode": 45047}])
    await queue(db, rt, push("p1", "今晚8点起全员核酸检测，请带好身份证和手机"))
    await rt.delivery.run_once()
    (call,) = fake.calls_to("/cgi-bin/message/subscribe/bizsend")
    assert call.json["template_id"] == "SUB-1"
    assert len(call.json["data"]["thing1"]["value"]) <= 20
    (row,) = await outbox_rows(db)
    assert row.status == "sent"


async def test_out_of_window_without_a_fallback_fails_with_the_reason(
    mp_config, start_app, fake, db
):
    _, rt = await start_app(mp_config())
    fake.script(CUSTOM_SEND, [{"errcode": 45015}])
    await queue(db, rt, push("p1"))
    await rt.delivery.run_once()
    (row,) = await outbox_rows(db)
    assert row.status == "failed"
    assert "45015" in row.last_error and "fallback" in row.last_error
    assert fake.calls_to(TEMPLATE_SEND) == []


async def test_server_errors_and_network_failures_are_retried(mp_config, start_app, fake, db):
    _, rt = await start_app(mp_config())
    fake.script(CUSTOM_SEND, [{"status": 502}, {"disconnect": True}])
    await queue(db, rt, push("p1"), push("p2"))
    await rt.delivery.run_once()
    rows = await outbox_rows(db)
    assert [row.status for row in rows] == ["pending", "pending"]
    assert all(row.last_error for row in rows)


async def test_invalid_openid_is_dead(mp_config, start_app, fake, db):
    _, rt = await start_app(mp_config())
    fake.script(CUSTOM_SEND, [{"errcode": 40003}])
    await queue(db, rt, push("p1"))
    await rt.delivery.run_once()
    (row,) = await outbox_rows(db)
    assert row.status == "dead"
    assert "40003" in row.last_error


# --- long texts -------------------------------------------------------------------------------


def _numbered(contents: list[str]) -> list[str]:
    """The parts in their label order, labels checked and taken off."""
    total = len(contents)
    found = {}
    for content in contents:
        label, _, body = content.partition("\n")
        number = int(label.strip("（）").split("/")[0])
        assert label == f"（{number}/{total}）"
        found[number] = body
    return [found[n] for n in sorted(found)]


async def test_long_customer_service_text_is_split_into_numbered_messages_sent_once(
    mp_config, start_app, fake, db
):
    _, rt = await start_app(mp_config(notices={"part_gap_s": 0}))
    sentence = "请各位居民按时到指定地点做核酸检测，带好身份证。"
    paragraphs = [f"第{i}段：" + sentence * 20 for i in range(5)]
    text = "\n".join(paragraphs)
    assert len(text.encode()) > 2 * 2048
    await queue(db, rt, push("long", text))
    while await rt.delivery.run_once():
        pass
    contents = [c.json["text"]["content"] for c in fake.calls_to(CUSTOM_SEND)]
    assert len(contents) == 4
    assert all(len(c.encode()) <= 2048 for c in contents)
    assert "\n".join(_numbered(contents)).replace("\n", "") == text.replace("\n", "")
    assert not any(c.endswith("…") for c in contents)
    rows = await outbox_rows(db)
    assert sorted(r.key for r in rows) == ["long", "long#2", "long#3", "long#4"]
    assert {r.status for r in rows} == {"sent"}
    # nothing is sent again, and the row that was split stays split
    assert await rt.delivery.run_once() == 0
    assert len(fake.calls_to(CUSTOM_SEND)) == 4


async def test_a_failed_part_is_retried_alone(mp_config, start_app, fake, db):
    _, rt = await start_app(mp_config(notices={"part_gap_s": 0}))
    await queue(db, rt, push("long", "核酸" * 1200))
    fake.script(CUSTOM_SEND, [{"errcode": 0}, {"errcode": -1, "errmsg": "system busy"}])
    await rt.delivery.run_once()  # part 1 goes, the other three are queued
    await rt.delivery.run_once()  # of those, the first send fails: busy
    rows = {r.key: r for r in await outbox_rows(db)}
    assert sorted(rows) == ["long", "long#2", "long#3", "long#4"]
    (failed,) = [r for r in rows.values() if r.status != "sent"]
    assert (failed.status, failed.attempts, failed.key != "long") == ("pending", 1, True)
    assert len(fake.calls_to(CUSTOM_SEND)) == 4
    # its backoff over, only the failed part goes again
    async with db.write() as conn:
        await conn.execute(
            update(OutboxMessage.__table__)
            .where(OutboxMessage.__table__.c.id == failed.id)
            .values(next_attempt_at=utcnow())
        )
    assert await rt.delivery.run_once() == 1
    assert {r.status for r in await outbox_rows(db)} == {"sent"}
    contents = [c.json["text"]["content"] for c in fake.calls_to(CUSTOM_SEND)]
    assert len(contents) == 5 and len(set(contents)) == 4


async def test_a_reply_too_long_for_a_passive_reply_is_sent_in_parts(
    mp_config, start_app, fake, db, demo
):
    client, rt = await start_app(mp_config(aes_key="", notices={"part_gap_s": 0}))
    long_answer = "。".join(f"第{i}条防疫须知：出门戴口罩，勤洗手，保持一米距离" for i in range(80))

    async def lecture(ctx) -> None:
        ctx.outbound.append(Outbound(long_answer))

    rt.dispatcher.router.routes.insert(
        0, Route(lecture, keywords=frozenset({"须知"}), registered=None)
    )
    r = await post_plain(client, text_message(OPENID, "须知"))
    assert (r.status, await r.text()) == (200, "success")
    while await rt.delivery.run_once():
        pass
    contents = [c.json["text"]["content"] for c in fake.calls_to(CUSTOM_SEND)]
    assert len(contents) >= 2
    assert all(len(c.encode()) <= 2048 for c in contents)
    assert "".join(_numbered(contents)) == long_answer
