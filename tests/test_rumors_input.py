"""Rumor checks with bad or unusual input (an image alone, an empty message, a 10,000-character
post, a forwarded link), the reading of commands and numbered replies, the match cache's
expiry, and the rumor tables against their migration."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from bridge_client import message, signed
from conftest import BRIDGE_SECRET
from fakes.wechat_api import FakeWeChat, start_fake_wechat
from rumors_support import (
    SUPERMARKET,
    SUPERMARKET_POST,
    admin_token,
    count,
    items,
    publish,
    questions,
    rows,
    say,
)
from wechat_client import MP_TOKEN, next_msg_id, signed_query, xml

from bot.channels.wxprotocol import safe_parse_xml
from flows.messages import Inbound
from flows.rumor_match import MAX_MESSAGE_CHARS
from flows.rumors import RumorKnowledge, parse_choice, question_text
from storage import repo
from storage import rumors as store
from storage.models import utcnow
from storage.rumor_models import MAX_QUESTION_RAW, MAX_QUESTION_TEXT
from storage.schema import metadata

FILLER = "今天下午社区组织志愿者给独居老人送去了新鲜蔬菜和鸡蛋，大家辛苦了。"


def ten_thousand(head: str) -> str:
    text = head + FILLER * (10_000 // len(FILLER) + 1)
    return text[:10_000]


async def test_ten_thousand_character_post_is_answered_and_stored_capped(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    await publish(client, await admin_token(db, demo), {**SUPERMARKET, "region": "D01"})
    post = ten_thousand(SUPERMARKET_POST)

    reply = await say(client, demo.resident_ids[0], post)

    assert SUPERMARKET["explanation"] in reply
    assert f"只核对了前 {MAX_MESSAGE_CHARS} 个字" in reply
    [question] = await rows(db, questions)
    assert len(question.raw_text) == MAX_QUESTION_RAW
    assert len(question.text) <= MAX_QUESTION_TEXT


async def test_ten_thousand_characters_of_unrelated_text_are_queued_once(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    await publish(client, await admin_token(db, demo), {**SUPERMARKET, "region": "D01"})

    reply = await say(client, demo.resident_ids[0], ten_thousand("转发："))

    assert "核实后会告诉您" in reply
    assert f"只核对了前 {MAX_MESSAGE_CHARS} 个字" in reply
    [item] = await rows(db, items)
    assert len(item.sample) == MAX_QUESTION_TEXT
    assert await count(db, questions) == 1


async def test_empty_message_gets_a_polite_reply_and_nothing_is_stored(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    async with db.write() as conn:
        await repo.bind_identity(conn, demo.resident_ids[0], "bridge", "wx-resident")
    raw, headers = signed(message("e1", "wx-resident", ""), BRIDGE_SECRET)

    r = await client.post("/bridge/inbound", data=raw, headers=headers)

    assert r.status == 200
    [reply] = (await r.json())["replies"]
    assert reply["text"]
    assert await count(db, questions) == 0
    assert await count(db, items) == 0


@pytest.fixture
async def fake():
    server = await start_fake_wechat()
    try:
        yield server
    finally:
        await server.close()


def mp_section(fake: FakeWeChat) -> dict:
    return {
        "enabled": True,
        "app_id": fake.app_id,
        "app_secret": fake.app_secret,
        "token": MP_TOKEN,
        "encoding_aes_key": "",
        "api_base": fake.base_url,
    }


async def post_mp(client, document: str):
    return await client.post("/wechat/mp", params=signed_query(), data=document.encode())


async def test_image_only_message_gets_a_polite_reply(make_config, start_app, demo, db, fake):
    client, _ = await start_app(make_config(channels={"wechat_mp": mp_section(fake)}))
    async with db.write() as conn:
        await repo.bind_identity(conn, demo.resident_ids[0], "wechat_mp", "o_rumor_1")
    document = xml(
        ToUserName="gh_test",
        FromUserName="o_rumor_1",
        CreateTime=1_700_000_000,
        MsgType="image",
        PicUrl="http://example.org/rumor.jpg",
        MediaId="media-1",
        MsgId=next_msg_id(),
    )

    r = await post_mp(client, document)

    assert r.status == 200
    assert "请把图片中的文字复制发给我" in safe_parse_xml(await r.text())["Content"]
    assert await count(db, questions) == 0


async def test_forwarded_link_is_checked_by_its_title(make_config, start_app, demo, db, fake):
    client, _ = await start_app(make_config(channels={"wechat_mp": mp_section(fake)}))
    await publish(client, await admin_token(db, demo), {**SUPERMARKET, "region": "D01"})
    async with db.write() as conn:
        await repo.bind_identity(conn, demo.resident_ids[0], "wechat_mp", "o_rumor_2")
    document = xml(
        ToUserName="gh_test",
        FromUserName="o_rumor_2",
        CreateTime=1_700_000_000,
        MsgType="link",
        Title="明天起全市所有超市停业",
        Description="市民要提前囤菜",
        Url="http://example.org/a",
        MsgId=next_msg_id(),
    )

    r = await post_mp(client, document)

    assert SUPERMARKET["explanation"] in safe_parse_xml(await r.text())["Content"]


# -- reading commands and replies ------------------------------------------------------------


def inbound(text: str, kind: str = "text") -> Inbound:
    return Inbound(channel="sim", sender_id="sim-1", text=text, dedupe_key="x", kind=kind)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("这是真的吗？网传超市停业", "网传超市停业"),
        ("这是真的吗", ""),
        ("辟谣：喝白酒防病毒。", "喝白酒防病毒。"),
        ("听说超市停业了，是真的吗？", "听说超市停业了"),
        ("超市停业真的假的", "超市停业"),
        ("超市开门吗", None),
        ("短" * 29, None),
        ("长" * 30, "长" * 30),
    ],
)
def test_question_text(text: str, expected: str | None) -> None:
    assert question_text(inbound(text), min_chars=30) == expected


def test_forwarded_link_or_file_text() -> None:
    assert question_text(inbound("标题\n摘要", "other"), min_chars=30) == "标题\n摘要"
    assert question_text(inbound("", "other"), min_chars=30) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("１", 1),
        (" 2。", 2),
        ("第3条", 3),
        ("三", 3),
        ("0", 0),
        ("都不是", 0),
        ("好的", None),
        ("123", None),
    ],
)
def test_parse_choice(text: str, expected: int | None) -> None:
    assert parse_choice(text) == expected


# -- the cache -------------------------------------------------------------------------------


async def test_knowledge_cache_follows_generation_and_drops_expired_entries(db, demo):
    now = utcnow()
    async with db.write() as conn:
        lasting = await store.insert_clarification(
            conn,
            db,
            claim=SUPERMARKET["claim"],
            verdict="false",
            explanation="x",
            source_name="y",
            source_url="",
            status="published",
            version=1,
            published_at=now,
            created_by=demo.admin_id,
            updated_by=demo.admin_id,
            created_at=now,
            updated_at=now,
        )
        expiring = await store.insert_clarification(
            conn,
            db,
            claim="喝高度白酒可以预防新冠病毒感染",
            verdict="false",
            explanation="x",
            source_name="y",
            source_url="",
            status="published",
            version=1,
            expires_at=now + timedelta(hours=1),
            published_at=now,
            created_by=demo.admin_id,
            updated_by=demo.admin_id,
            created_at=now,
            updated_at=now,
        )
    knowledge = RumorKnowledge()
    async with db.read() as conn:
        await knowledge.refresh(conn, now)
    assert (len(knowledge), knowledge.generation) == (2, 2)

    async with db.read() as conn:
        await knowledge.refresh(conn, now + timedelta(hours=2))
    assert knowledge.entry(expiring) is None
    assert knowledge.entry(lasting) is not None

    async with db.write() as conn:
        await store.update_clarification(conn, db, lasting, status="withdrawn")
    async with db.read() as conn:
        await knowledge.refresh(conn, now)
    assert (len(knowledge), knowledge.generation) == (0, 3)


# -- schema ----------------------------------------------------------------------------------


async def test_rumor_tables_match_their_migration(db):
    async with db.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert [d for d in diff if "rumor" in str(d)] == []
