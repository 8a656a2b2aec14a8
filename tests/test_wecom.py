"""The WeCom app channel (callbacks, app messages, app chats, group robots) through the real app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakes.wechat_api import FakeWeChat, start_fake_wechat
from sqlalchemy import func, select
from wechat_client import (
    AES_KEY,
    WECOM_TOKEN,
    encrypt,
    event_message,
    load_vectors,
    next_msg_id,
    open_reply,
    text_message,
    wecom_crypto,
)

from bot.channels.wxprotocol import MessageCrypto, url_signature
from storage import repo
from storage.models import InboundMessage, OutboxMessage, RawPayload, utcnow
from storage.outbox import Target, enqueue, group_target, outbox_row

PATH = "/wechat/wecom"
USER = "zhangsan"
AGENT_ID = 1000002
ROBOT_KEY = "grid-g0101-robot"

VECTORS = [v for v in load_vectors() if v["kind"] == "wecom"]
ECHO_VECTORS = [v for v in VECTORS if not v["plaintext"].startswith("<xml>")]
MESSAGE_VECTORS = [v for v in VECTORS if v["plaintext"].startswith("<xml>")]


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    server = await start_fake_wechat(robot_keys=[ROBOT_KEY])
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def wecom_config(make_config, fake):
    def build(*, notices: dict[str, Any] | None = None, **section: Any):
        return make_config(
            **({"notices": notices} if notices else {}),
            channels={
                "wecom": {
                    "enabled": True,
                    "corp_id": fake.corp_id,
                    "agent_id": AGENT_ID,
                    "secret": fake.corp_secret,
                    "token": WECOM_TOKEN,
                    "encoding_aes_key": AES_KEY,
                    "api_base": fake.base_url,
                    "robot_base": fake.base_url,
                    **section,
                }
            },
        )

    return build


def vector_config(make_config, fake, vector: dict[str, str]):
    return make_config(
        channels={
            "wecom": {
                "enabled": True,
                "corp_id": vector["corp_id"],
                "agent_id": 218,
                "secret": "unused",
                "token": vector["token"],
                "encoding_aes_key": vector["encoding_aes_key"],
                "api_base": fake.base_url,
                "max_clock_skew_s": 0,  # the samples are from 2014 and 2016
            }
        }
    )


def vector_crypto(vector: dict[str, str]) -> MessageCrypto:
    return MessageCrypto(
        "wecom",
        token=vector["token"],
        encoding_aes_key=vector["encoding_aes_key"],
        corp_id=vector["corp_id"],
    )


async def post(client, crypto: MessageCrypto, document: str, **kw: Any):
    query, body = encrypt(crypto, document, to=crypto.receive_id, **kw)
    return await client.post(PATH, params=query, data=body)


def message(sender: str, text: str, **kw: Any) -> str:
    return text_message(sender, text, to="ww_fake_corp", agent_id=AGENT_ID, **kw)


async def count_rows(db, table) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar())


async def outbox_rows(db) -> list[Any]:
    async with db.read() as conn:
        return list(await conn.execute(select(OutboxMessage.__table__).order_by(OutboxMessage.id)))


async def queue(rt, *rows: dict[str, Any]) -> None:
    async with rt.db.write() as conn:
        await enqueue(conn, list(rows), rt.db.insert_ignore(OutboxMessage.__table__))


# --- callbacks --------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", ECHO_VECTORS, ids=[v["name"] for v in ECHO_VECTORS])
async def test_url_verification_official_sample(make_config, start_app, fake, vector):
    client, _ = await start_app(vector_config(make_config, fake, vector))
    query = {
        "msg_signature": vector["msg_signature"],
        "timestamp": vector["timestamp"],
        "nonce": vector["nonce"],
        "echostr": vector["encrypt"],
    }
    r = await client.get(PATH, params=query)
    assert (r.status, await r.text()) == (200, vector["plaintext"])
    r = await client.get(PATH, params={**query, "msg_signature": "0" * 40})
    assert r.status == 403


async def test_url_verification_with_our_own_echostr(wecom_config, start_app, fake):
    client, _ = await start_app(wecom_config(max_clock_skew_s=60))
    crypto = wecom_crypto(fake.corp_id)
    query, body = encrypt(crypto, "5927638365071234", to=fake.corp_id)
    echostr = body.decode().split("<![CDATA[")[-1].split("]]>")[0]
    r = await client.get(PATH, params={**query, "echostr": echostr})
    assert (r.status, await r.text()) == (200, "5927638365071234")
    stale = str(int(utcnow().timestamp()) - 3600)
    signature = url_signature(WECOM_TOKEN, stale, query["nonce"], echostr)
    r = await client.get(
        PATH,
        params={
            "msg_signature": signature,
            "timestamp": stale,
            "nonce": query["nonce"],
            "echostr": echostr,
        },
    )
    assert r.status == 403


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=[v["name"] for v in MESSAGE_VECTORS])
async def test_official_message_samples_are_answered_encrypted(
    make_config, start_app, fake, demo, vector
):
    client, _ = await start_app(vector_config(make_config, fake, vector))
    query = {
        "msg_signature": vector["msg_signature"],
        "timestamp": vector["timestamp"],
        "nonce": vector["nonce"],
    }
    body = (
        f"<xml><ToUserName><![CDATA[{vector['corp_id']}]]></ToUserName>"
        f"<Encrypt><![CDATA[{vector['encrypt']}]]></Encrypt>"
        "<AgentID><![CDATA[218]]></AgentID></xml>"
    )
    r = await client.post(PATH, params=query, data=body.encode())
    assert r.status == 200
    reply = open_reply(vector_crypto(vector), await r.text())
    sender = "mycreate" if "mycreate" in vector["plaintext"] else "ChenJiaShun"
    assert reply["ToUserName"] == sender
    assert reply["FromUserName"] == vector["corp_id"]
    assert "网格编码" in reply["Content"]


async def test_registered_member_gets_an_encrypted_reply(wecom_config, start_app, fake, db, demo):
    client, _ = await start_app(wecom_config())
    async with db.write() as conn:
        await repo.bind_identity(conn, demo.resident_ids[0], "wecom", USER, "")
        person = await repo.load_person(conn, demo.resident_ids[0])
    assert person is not None
    crypto = wecom_crypto(fake.corp_id)
    r = await post(client, crypto, message(USER, "我的信息"))
    reply = open_reply(crypto, await r.text())
    assert reply["ToUserName"] == USER
    assert person.name in reply["Content"]
    # A menu click in the app does what the keyword does.
    r = await post(
        client,
        crypto,
        event_message(USER, "click", key="MY_INFO", to=fake.corp_id, agent_id=AGENT_ID),
    )
    assert open_reply(crypto, await r.text())["Content"] == reply["Content"]


async def test_same_msgid_twice_concurrently_is_handled_once(
    wecom_config, start_app, fake, db, demo
):
    client, _ = await start_app(wecom_config())
    crypto = wecom_crypto(fake.corp_id)
    document = message("lisi", "你好", msg_id=next_msg_id())
    first, second = await asyncio.gather(
        post(client, crypto, document), post(client, crypto, document)
    )
    assert open_reply(crypto, await first.text()) == open_reply(crypto, await second.text())
    assert await count_rows(db, InboundMessage.__table__) == 1


async def test_enter_agent_starts_registration_for_newcomers_only(
    wecom_config, start_app, fake, db, demo
):
    client, _ = await start_app(wecom_config())
    crypto = wecom_crypto(fake.corp_id)
    enter = event_message("wangwu", "enter_agent", to=fake.corp_id, agent_id=AGENT_ID)
    r = await post(client, crypto, enter)
    assert "网格编码" in open_reply(crypto, await r.text())["Content"]
    async with db.write() as conn:
        await repo.bind_identity(conn, demo.resident_ids[2], "wecom", "zhaoliu", "")
    enter = event_message("zhaoliu", "enter_agent", to=fake.corp_id, agent_id=AGENT_ID)
    r = await post(client, crypto, enter)
    assert (r.status, await r.text()) == (200, "success")


async def test_group_chat_message_is_logged_and_replies_go_through_the_outbox(
    wecom_config, start_app, fake, db, demo
):
    client, _ = await start_app(wecom_config())
    crypto = wecom_crypto(fake.corp_id)
    r = await post(client, crypto, message(USER, "大家好", chat_id="wrgrid0101"))
    assert (r.status, await r.text()) == (200, "success")
    async with db.read() as conn:
        row = (await conn.execute(select(InboundMessage.__table__))).one()
    assert row.chat_id == "wrgrid0101"


async def test_refusals(wecom_config, start_app, fake, db):
    client, _ = await start_app(wecom_config(max_clock_skew_s=60))
    crypto = wecom_crypto(fake.corp_id)
    document = message(USER, "你好")
    query, body = encrypt(crypto, document)
    r = await client.post(PATH, params={**query, "msg_signature": "0" * 40}, data=body)
    assert r.status == 403
    r = await client.post(PATH, params=query, data=document.encode())  # not encrypted
    assert r.status == 400
    r = await client.post(PATH, params=query, data=b"<xml><Encrypt>")  # unverifiable
    assert r.status == 400
    stale = int(utcnow().timestamp()) - 3600
    r = await post(client, crypto, document, timestamp=stale)
    assert r.status == 403
    r = await client.post(PATH, params=query, data=b"<xml>" + b" " * (65 * 1024) + b"</xml>")
    assert r.status == 413
    other = MessageCrypto("wecom", token=WECOM_TOKEN, encoding_aes_key=AES_KEY, corp_id="ww_other")
    r = await post(client, other, document)
    assert r.status == 403
    assert await count_rows(db, InboundMessage.__table__) == 0


async def test_signed_but_undecryptable_body_is_kept_and_answered_success(
    wecom_config, start_app, fake, db
):
    client, _ = await start_app(wecom_config())
    garbage = "QUJDRA=="
    timestamp, nonce = str(int(utcnow().timestamp())), "42"
    query = {
        "msg_signature": url_signature(WECOM_TOKEN, timestamp, nonce, garbage),
        "timestamp": timestamp,
        "nonce": nonce,
    }
    r = await client.post(PATH, params=query, data=f"<xml><Encrypt>{garbage}</Encrypt></xml>")
    assert (r.status, await r.text()) == (200, "success")
    async with db.read() as conn:
        (kept,) = list(await conn.execute(select(RawPayload.__table__)))
    assert kept.channel == "wecom"
    # Decrypted but not a callback: kept as well.
    r = await post(client, wecom_crypto(fake.corp_id), "<xml><Nothing/></xml>")
    assert (r.status, await r.text()) == (200, "success")
    assert await count_rows(db, RawPayload.__table__) == 2


# --- outbound ---------------------------------------------------------------------------------


async def test_app_message_to_a_member(wecom_config, start_app, fake, db):
    _, rt = await start_app(wecom_config())
    await queue(
        rt,
        outbox_row(key="u1", target=Target("wecom", "user", USER), payload={"text": "请打卡"}),
        outbox_row(
            key="u2",
            target=Target("wecom", "user", USER),
            payload={"text": "**紧急通知**", "format": "markdown"},
        ),
    )
    assert await rt.delivery.run_once() == 2
    calls = sorted(fake.calls_to("/cgi-bin/message/send"), key=lambda c: c.json["msgtype"])
    assert [c.json["msgtype"] for c in calls] == ["markdown", "text"]
    assert calls[1].json == {
        "touser": USER,
        "agentid": AGENT_ID,
        "msgtype": "text",
        "text": {"content": "请打卡"},
    }
    assert len(fake.calls_to("/cgi-bin/gettoken")) == 1
    rows = await outbox_rows(db)
    assert {row.status for row in rows} == {"sent"}
    assert all(row.platform_msg_id for row in rows)


async def test_app_chat_is_created_and_messaged(wecom_config, start_app, fake, db, demo):
    _, rt = await start_app(wecom_config())
    channel = rt.channels["wecom"]
    chat_id = await channel.create_app_chat("桃园社区第1网格居民群", USER, [USER, "lisi", "wangwu"])
    assert fake.chats[chat_id]["userlist"] == [USER, "lisi", "wangwu"]
    async with db.write() as conn:
        group_id = await repo.create_group(
            conn, region_id=demo.grids[0].id, channel="wecom", external_id=chat_id, name="居民群"
        )
        target = await group_target(conn, group_id)
    assert target == Target("wecom", "chat", chat_id)
    await queue(rt, outbox_row(key="c1", target=target, payload={"text": "今晚核酸"}))
    await rt.delivery.run_once()
    (call,) = fake.calls_to("/cgi-bin/appchat/send")
    assert call.json == {"chatid": chat_id, "msgtype": "text", "text": {"content": "今晚核酸"}}
    fake.script("/cgi-bin/appchat/send", [{"errcode": 86003}])
    await queue(
        rt, outbox_row(key="c2", target=Target("wecom", "chat", "gone"), payload={"text": "x"})
    )
    await rt.delivery.run_once()
    assert [row.status for row in await outbox_rows(db)] == ["sent", "dead"]


async def test_robot_is_held_to_twenty_a_minute_by_the_outbox(
    wecom_config, start_app, fake, db, demo
):
    _, rt = await start_app(wecom_config())
    async with db.write() as conn:
        group_id = await repo.create_group(
            conn,
            region_id=demo.grids[0].id,
            channel="wecom",
            external_id="robot-group-g0101",
            name="桃园社区第1网格群",
            robot_key=ROBOT_KEY,
        )
        target = await group_target(conn, group_id)
    assert target == Target("wecom", "robot", ROBOT_KEY)
    await queue(
        rt,
        *[
            outbox_row(key=f"r{i}", target=target, payload={"text": f"通知 {i}"}, group_id=group_id)
            for i in range(25)
        ],
    )
    await rt.delivery.run_once()
    await rt.delivery.run_once()
    robot_calls = fake.calls_to("/cgi-bin/webhook/send")
    assert len(robot_calls) == 20
    assert all(call.query == {"key": ROBOT_KEY} for call in robot_calls)
    statuses = [row.status for row in await outbox_rows(db)]
    assert statuses.count("sent") == 20
    assert statuses.count("pending") == 5
    assert fake.calls_to("/cgi-bin/gettoken") == []  # robots need no access token


async def test_robot_errors_map_to_backoff_and_dead(wecom_config, start_app, fake, db):
    _, rt = await start_app(wecom_config())
    fake.script("/cgi-bin/webhook/send", [{"errcode": 45009}])
    await queue(
        rt, outbox_row(key="r1", target=Target("wecom", "robot", ROBOT_KEY), payload={"text": "a"})
    )
    await rt.delivery.run_once()
    await queue(
        rt, outbox_row(key="r2", target=Target("wecom", "robot", "unknown"), payload={"text": "b"})
    )
    await rt.delivery.run_once()
    rows = await outbox_rows(db)
    assert [row.status for row in rows] == ["pending", "dead"]
    assert "45009" in rows[0].last_error
    assert "93000" in rows[1].last_error


async def test_wecom_token_error_refreshes_once(wecom_config, start_app, fake, db):
    _, rt = await start_app(wecom_config())
    fake.script("/cgi-bin/message/send", [{"errcode": 42001}])
    await queue(
        rt, outbox_row(key="u1", target=Target("wecom", "user", USER), payload={"text": "a"})
    )
    await rt.delivery.run_once()
    assert len(fake.calls_to("/cgi-bin/message/send")) == 2
    assert len(fake.calls_to("/cgi-bin/gettoken")) == 2
    assert [row.status for row in await outbox_rows(db)] == ["sent"]


async def test_long_texts_to_a_member_and_a_robot_are_split_not_cut(
    wecom_config, start_app, fake, db, demo
):
    _, rt = await start_app(wecom_config(notices={"part_gap_s": 0}))
    async with db.write() as conn:
        group_id = await repo.create_group(
            conn,
            region_id=demo.grids[0].id,
            channel="wecom",
            external_id="robot-group-long",
            name="桃园社区第1网格群",
            robot_key=ROBOT_KEY,
        )
        robot = await group_target(conn, group_id)
    text = "今晚八点全员核酸，请到小区东门排队，保持间距。" * 120
    await queue(
        rt,
        outbox_row(key="m", target=Target("wecom", "user", USER), payload={"text": text}),
        outbox_row(key="r", target=robot, payload={"text": text}, group_id=group_id),
    )
    while await rt.delivery.run_once():
        pass
    member = [c.json["text"]["content"] for c in fake.calls_to("/cgi-bin/message/send")]
    robot_calls = [c.json["text"]["content"] for c in fake.calls_to("/cgi-bin/webhook/send")]
    for contents in (member, robot_calls):
        assert len(contents) >= 3
        assert all(len(c.encode()) <= 2048 and not c.endswith("…") for c in contents)
        assert "".join(c.partition("\n")[2] for c in contents) == text
    rows = await outbox_rows(db)
    assert {r.status for r in rows} == {"sent"}
    assert {r.group_id for r in rows if r.key.startswith("r")} == {group_id}
