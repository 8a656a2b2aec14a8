"""Rumor checks in chat through the real app, on SQLite and PostgreSQL: the three outcomes,
the numbered reply, grouping of unanswered questions, scope, withdrawal and bad input."""

from __future__ import annotations

import asyncio

import pytest
from rumors_support import (
    GARGLE,
    GARLIC,
    LIQUOR,
    LOCKER,
    OTHER_UNKNOWN_POST,
    SUPERMARKET,
    SUPERMARKET_POST,
    UNKNOWN_POST,
    admin_token,
    call,
    clarify_item,
    count,
    deliveries,
    items,
    ok,
    outbox,
    publish,
    questions,
    residents_in,
    rows,
    say,
    until_waiting,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from storage.rumor_models import QuestionOutcome

ALL = (LIQUOR, LOCKER, SUPERMARKET, GARGLE, GARLIC)
SPRAY_ANSWER = {
    "verdict": "false",
    "explanation": "本市没有安排任何空中喷洒消毒作业，请勿轻信。",
    "source_name": "市疫情防控指挥部",
    "region": "D01",
}


async def knowledge_base(client, token, *bodies, region="D01") -> dict[str, int]:
    """Publish clarifications for the demo district; their ids by claim."""
    ids = {}
    for body in bodies or ALL:
        published = await publish(client, token, {**body, "region": region})
        ids[body["claim"]] = published["id"]
    return ids


async def test_forwarded_post_is_answered_with_verdict_explanation_and_source(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    ids = await knowledge_base(client, await admin_token(db, demo))
    resident = demo.resident_ids[0]

    reply = await say(client, resident, "这是真的吗？" + SUPERMARKET_POST)

    assert "谣言" in reply
    assert SUPERMARKET["claim"] in reply
    assert SUPERMARKET["explanation"] in reply
    assert SUPERMARKET["source_name"] in reply
    [question] = await rows(db, questions)
    assert question.outcome == QuestionOutcome.ANSWER
    assert question.clarification_id == ids[SUPERMARKET["claim"]]
    assert question.person_id == resident
    [delivery] = await rows(db, deliveries)
    assert (delivery.person_id, delivery.version, delivery.kind) == (resident, 1, "answer")


async def test_long_message_without_a_command_is_checked_as_a_forward(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    await knowledge_base(client, await admin_token(db, demo))

    reply = await say(client, demo.resident_ids[1], SUPERMARKET_POST)

    assert SUPERMARKET["explanation"] in reply
    assert await count(db, questions) == 1


async def test_short_chat_without_a_command_is_not_a_rumor_check(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    await knowledge_base(client, await admin_token(db, demo))

    reply = await say(client, demo.resident_ids[1], "超市开门吗")

    assert "核实" not in reply
    assert await count(db, questions) == 0


async def test_question_ending_in_shi_zhen_de_ma_is_checked(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    await knowledge_base(client, await admin_token(db, demo))

    reply = await say(client, demo.resident_ids[2], "听说明天起全市所有超市停业了，是真的吗？")

    assert SUPERMARKET["explanation"] in reply


async def test_partial_match_suggests_and_a_numbered_reply_answers(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    ids = await knowledge_base(client, await admin_token(db, demo))
    resident = demo.resident_ids[0]

    reply = await say(client, resident, "辟谣 听说喝白酒能防新冠，真的假的")

    assert "您是想问以下哪条？回复序号" in reply
    assert "1. " + LIQUOR["claim"] in reply
    [question] = await rows(db, questions)
    assert question.outcome == QuestionOutcome.SUGGEST

    hint = await say(client, resident, "好的")
    assert "序号" in hint

    answer = await say(client, resident, "1")

    assert LIQUOR["explanation"] in answer
    [question] = await rows(db, questions)
    assert question.outcome == QuestionOutcome.CHOSEN
    assert question.clarification_id == ids[LIQUOR["claim"]]
    assert await count(db, deliveries, deliveries.c.person_id == resident) == 1
    # The conversation is over: a number now means nothing to the rumor desk.
    assert LIQUOR["explanation"] not in await say(client, resident, "1")


async def test_none_of_the_suggestions_queues_the_question_for_review(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    await knowledge_base(client, await admin_token(db, demo))
    resident = demo.resident_ids[0]
    await say(client, resident, "辟谣 听说喝白酒能防新冠，真的假的")

    reply = await say(client, resident, "都不是")

    assert "核实后会告诉您" in reply
    [question] = await rows(db, questions)
    assert question.outcome == QuestionOutcome.UNKNOWN
    [item] = await rows(db, items)
    assert question.review_item_id == item.id


async def test_a_new_forward_while_choosing_is_checked_instead(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    await knowledge_base(client, await admin_token(db, demo))
    resident = demo.resident_ids[0]
    await say(client, resident, "辟谣 听说喝白酒能防新冠，真的假的")

    reply = await say(client, resident, SUPERMARKET_POST)

    assert SUPERMARKET["explanation"] in reply
    assert await count(db, questions) == 2


async def test_keyword_query_suggests_claims_containing_it(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    await knowledge_base(client, await admin_token(db, demo))

    reply = await say(client, demo.resident_ids[0], "辟谣 大蒜")

    assert "1. " + GARLIC["claim"] in reply
    assert GARLIC["explanation"] not in reply


async def test_unknown_claim_is_queued_for_review_and_the_resident_told(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    await knowledge_base(client, await admin_token(db, demo))

    reply = await say(client, demo.resident_ids[0], "这是真的吗 " + UNKNOWN_POST)

    assert "核实后会告诉您" in reply
    [question] = await rows(db, questions)
    [item] = await rows(db, items)
    assert question.outcome == QuestionOutcome.UNKNOWN
    assert question.review_item_id == item.id
    assert (item.ask_count, item.asker_count, item.status) == (1, 1, "pending")
    assert "直升机" in item.sample


async def test_near_identical_unknown_questions_are_grouped_with_a_count(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    first, second, third, fourth = demo.resident_ids[:4]

    await say(client, first, "这是真的吗 " + UNKNOWN_POST)
    # Another wording of the head and tail, with emoji and a comment.
    await say(client, second, "转发：" + UNKNOWN_POST + "😱😱 真的假的？")
    # Only the first part of the post.
    await say(client, third, UNKNOWN_POST[:40])
    await say(client, first, "辟谣 " + UNKNOWN_POST)  # the same person again
    await say(client, fourth, "这是真的吗 " + OTHER_UNKNOWN_POST)

    grouped, other = await rows(db, items, order=items.c.id)
    assert (grouped.ask_count, grouped.asker_count) == (4, 3)
    assert (other.ask_count, other.asker_count) == (1, 1)
    by_item = {q.person_id: q.review_item_id for q in await rows(db, questions)}
    assert by_item == {first: grouped.id, second: grouped.id, third: grouped.id, fourth: other.id}


async def test_the_same_question_in_traditional_script_joins_its_review_item(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    simplified, traditional = demo.resident_ids[:2]

    await say(client, simplified, "这是真的吗 " + UNKNOWN_POST)
    await say(
        client,
        traditional,
        "緊急通知：本週六晚上將用直升機在全城上空噴灑消毒藥水，請大家關好門窗，"
        "晾在外面的衣服趕緊收回家，轉告親朋好友！是真的嗎？",
    )

    [item] = await rows(db, items)
    assert (item.ask_count, item.asker_count) == (2, 2)


async def test_region_scoped_clarification_answers_only_people_in_it(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    await knowledge_base(client, await admin_token(db, demo), SUPERMARKET, region="S01")
    [inside] = await residents_in(db, demo, "G0101", 1)
    [outside] = await residents_in(db, demo, "G0201", 1)

    assert SUPERMARKET["explanation"] in await say(client, inside, SUPERMARKET_POST)
    reply = await say(client, outside, SUPERMARKET_POST)

    assert SUPERMARKET["explanation"] not in reply
    assert "核实后会告诉您" in reply


async def test_withdrawn_clarification_is_no_longer_answered(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    ids = await knowledge_base(client, token, SUPERMARKET)
    resident = demo.resident_ids[0]
    assert SUPERMARKET["explanation"] in await say(client, resident, SUPERMARKET_POST)

    cid = ids[SUPERMARKET["claim"]]
    withdrawn = await ok(await call(client, token, "POST", f"/clarifications/{cid}/withdraw"))
    assert withdrawn["status"] == "withdrawn"

    reply = await say(client, resident, SUPERMARKET_POST)
    assert SUPERMARKET["explanation"] not in reply
    assert "核实后会告诉您" in reply


async def test_two_processes_answer_alike_after_a_change(make_config, start_app, demo, db):
    """Publishing and withdrawing through one app is seen by another app on the same database
    (the match index is only a cache, refreshed by the knowledge base's generation)."""
    config = make_config()
    admin_side, _ = await start_app(config)
    resident_side, _ = await start_app(config)
    token = await admin_token(db, demo)
    resident = demo.resident_ids[0]
    assert "核实后会告诉您" in await say(resident_side, resident, SUPERMARKET_POST)

    ids = await knowledge_base(admin_side, token, SUPERMARKET)
    assert SUPERMARKET["explanation"] in await say(resident_side, resident, SUPERMARKET_POST)

    cid = ids[SUPERMARKET["claim"]]
    await ok(await call(admin_side, token, "POST", f"/clarifications/{cid}/withdraw"))
    assert SUPERMARKET["explanation"] not in await say(resident_side, resident, SUPERMARKET_POST)


@pytest.mark.parametrize("text", ["这是真的吗", "是真的吗？？", "辟谣：", "真的假的!!"])
async def test_command_without_text_asks_for_it(make_config, start_app, demo, db, text):
    client, _ = await start_app(make_config())

    reply = await say(client, demo.resident_ids[0], text)

    assert "请把您想核实的消息内容" in reply
    assert await count(db, questions) == 0
    assert await count(db, items) == 0


@pytest.mark.parametrize("text", ["这是真的吗 😷😷👍🏻❤️", "辟谣 [哭][哭]！！", "😷" * 40])
async def test_emoji_only_gets_a_polite_reply_and_nothing_is_stored(
    make_config, start_app, demo, db, text
):
    client, _ = await start_app(make_config())

    reply = await say(client, demo.resident_ids[0], text)

    assert "没有看到需要核实的文字" in reply
    assert await count(db, questions) == 0
    assert await count(db, items) == 0


async def test_concurrent_near_identical_questions_share_one_review_item_on_postgres(
    make_config, start_app, demo, db
):
    """Regression: two near-identical questions asked at the same moment through different
    processes both found no pending item and both created one.

    Each question goes through its own app (its own pool and group committer, as a separate
    process would).  The test holds ``SHARE`` on the review-item table, which lets every
    question read the (empty) queue but not create or count into an item, and releases it
    only once every question is waiting on a lock: the widest possible race, every time.
    """
    if db.is_sqlite:
        pytest.skip("PostgreSQL: SQLite write transactions are serialized by BEGIN IMMEDIATE")
    config = make_config()
    apps = [(await start_app(config))[0] for _ in range(4)]
    askers = demo.resident_ids[:4]
    wordings = [
        "这是真的吗 " + UNKNOWN_POST,
        "转发：" + UNKNOWN_POST + "😱😱 真的假的？",
        "辟谣 " + UNKNOWN_POST,
        UNKNOWN_POST + " 是真的吗",
    ]

    blocker = create_async_engine(db.url)
    try:
        async with blocker.connect() as conn:
            await conn.execute(text("LOCK TABLE rumor_review_items IN SHARE MODE"))
            asking = [
                asyncio.ensure_future(say(client, person, wording))
                for client, person, wording in zip(apps, askers, wordings, strict=True)
            ]
            await until_waiting(blocker, len(asking))
            await conn.commit()  # releases the table lock
            replies = await asyncio.gather(*asking)
    finally:
        await blocker.dispose()

    assert all("核实后会告诉您" in reply for reply in replies)
    created = await rows(db, items)
    assert [(i.ask_count, i.asker_count, i.status) for i in created] == [(4, 4, "pending")]
    [item] = created
    asked = await rows(db, questions, questions.c.person_id.in_(askers))
    assert sorted(q.person_id for q in asked) == sorted(askers)
    assert {q.review_item_id for q in asked} == {item.id}


async def test_question_grouped_into_an_item_a_reviewer_closes_meanwhile_starts_a_new_one(
    make_config, start_app, demo, db
):
    """Regression: a question counted into an item that a reviewer attached in the same moment
    joined the closed item, so its asker was never told.  The test's transaction stands in for
    the reviewer's: it closes the item and commits only once the question waits for the row."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL: SQLite write transactions are serialized by BEGIN IMMEDIATE")
    client, _ = await start_app(make_config())
    first, second = demo.resident_ids[:2]
    await say(client, first, "这是真的吗 " + UNKNOWN_POST)
    [item] = await rows(db, items)

    reviewer = create_async_engine(db.url)
    try:
        async with reviewer.connect() as conn:
            await conn.execute(
                text("UPDATE rumor_review_items SET status = 'dismissed' WHERE id = :id"),
                {"id": item.id},
            )
            asking = asyncio.ensure_future(say(client, second, "转发：" + UNKNOWN_POST))
            await until_waiting(reviewer, 1)
            await conn.commit()
            reply = await asking
    finally:
        await reviewer.dispose()

    assert "核实后会告诉您" in reply
    closed, fresh = await rows(db, items, order=items.c.id)
    assert (closed.id, closed.status, closed.ask_count) == (item.id, "dismissed", 1)
    assert (fresh.status, fresh.ask_count, fresh.asker_count) == ("pending", 1, 1)
    [question] = await rows(db, questions, questions.c.person_id == second)
    assert question.review_item_id == fresh.id


async def test_question_joining_a_draft_published_meanwhile_starts_a_new_item(
    make_config, start_app, demo, db
):
    """A question near an item attached to a draft joins that item, holding the draft's row
    until it commits.  When the draft is being published at that moment, the question waits
    for the publication and starts a new pending item rather than join an item whose askers
    were all just told (it would never be told).  The test's transaction stands in for the
    publisher: it publishes the draft and commits only once the question waits for the row."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL: SQLite write transactions are serialized by BEGIN IMMEDIATE")
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    first, second = demo.resident_ids[:2]
    await say(client, first, "这是真的吗 " + UNKNOWN_POST)
    [item] = await rows(db, items)
    draft = await clarify_item(client, token, item.id, SPRAY_ANSWER)

    publisher = create_async_engine(db.url)
    try:
        async with publisher.connect() as conn:
            await conn.execute(
                text(
                    "UPDATE rumor_clarifications SET status = 'published', published_at = now()"
                    " WHERE id = :id"
                ),
                {"id": draft["id"]},
            )
            asking = asyncio.ensure_future(say(client, second, "转发：" + UNKNOWN_POST))
            await until_waiting(publisher, 1)
            await conn.commit()
            reply = await asking
    finally:
        await publisher.dispose()

    assert "核实后会告诉您" in reply
    attached, fresh = await rows(db, items, order=items.c.id)
    assert (attached.status, attached.ask_count, attached.asker_count) == ("attached", 1, 1)
    assert (fresh.status, fresh.ask_count, fresh.asker_count) == ("pending", 1, 1)
    [question] = await rows(db, questions, questions.c.person_id == second)
    assert question.review_item_id == fresh.id


# -- a short claim without a question cue (the fallback) -------------------------------------

NOT_UNDERSTOOD = "抱歉，我没太明白"
SHORT_LIQUOR = "喝白酒可以预防新冠病毒"  # 11 characters, no "是真的吗"


async def test_short_claim_without_a_cue_gets_the_clarification(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    ids = await knowledge_base(client, await admin_token(db, demo))
    resident = demo.resident_ids[0]

    reply = await say(client, resident, SHORT_LIQUOR)

    assert LIQUOR["claim"] in reply
    assert LIQUOR["explanation"] in reply
    assert LIQUOR["source_name"] in reply
    assert NOT_UNDERSTOOD not in reply
    [question] = await rows(db, questions)
    assert question.outcome == QuestionOutcome.ANSWER
    assert question.clarification_id == ids[LIQUOR["claim"]]
    assert (question.person_id, question.raw_text) == (resident, SHORT_LIQUOR)
    [delivery] = await rows(db, deliveries)
    assert (delivery.person_id, delivery.version, delivery.kind) == (resident, 1, "answer")
    assert await count(db, items) == 0
    # Answered, not a conversation: a number afterwards is not a choice.
    assert NOT_UNDERSTOOD in await say(client, resident, "1")


async def test_short_claim_answer_is_the_same_as_the_asked_one(make_config, start_app, demo, db):
    """The fallback answers with the rumor flow's own template: the reply to the bare claim is
    the reply to the same claim asked with "这是真的吗"."""
    client, _ = await start_app(make_config())
    await knowledge_base(client, await admin_token(db, demo))
    first, second = demo.resident_ids[:2]

    assert await say(client, first, SHORT_LIQUOR) == await say(
        client, second, "这是真的吗 " + SHORT_LIQUOR
    )
    assert [q.outcome for q in await rows(db, questions)] == [QuestionOutcome.ANSWER] * 2


@pytest.mark.parametrize(
    "message",
    [
        "你好呀",
        "谢谢",
        "今天天气真不错啊",  # long enough to be matched, matches nothing
        "喝白酒能防新冠",  # only a suggestion: not sure enough to answer unasked
    ],
)
async def test_unrelated_short_message_gets_the_usual_reply_and_nothing_is_queued(
    make_config, start_app, demo, db, message
):
    client, _ = await start_app(make_config())
    await knowledge_base(client, await admin_token(db, demo))
    resident = demo.resident_ids[0]

    reply = await say(client, resident, message)

    assert reply == await say(client, resident, "嗯")  # the fallback reply of today
    assert NOT_UNDERSTOOD in reply
    assert LIQUOR["explanation"] not in reply
    assert await count(db, questions) == 0
    assert await count(db, items) == 0
    assert await count(db, deliveries) == 0
    # No suggestion was offered, so no conversation waits for a number.
    assert NOT_UNDERSTOOD in await say(client, resident, "1")


async def test_withdrawn_clarification_is_not_answered_through_the_fallback(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    ids = await knowledge_base(client, token, LIQUOR)
    resident = demo.resident_ids[0]
    assert LIQUOR["explanation"] in await say(client, resident, SHORT_LIQUOR)

    cid = ids[LIQUOR["claim"]]
    await ok(await call(client, token, "POST", f"/clarifications/{cid}/withdraw"))

    reply = await say(client, resident, SHORT_LIQUOR)
    assert LIQUOR["explanation"] not in reply
    assert NOT_UNDERSTOOD in reply
    assert await count(db, questions) == 1  # only the question answered before the withdrawal
    assert await count(db, items) == 0


@pytest.mark.parametrize(
    ("min_chars", "answered"),
    [(11, True), (12, False)],
)
async def test_message_below_the_minimum_length_is_not_matched(
    make_config, start_app, demo, db, min_chars, answered
):
    """``rumors.fallback_min_chars`` counts Chinese characters, letters and digits: the 11 of
    the claim, not its punctuation or emoji."""
    client, _ = await start_app(make_config(rumors={"fallback_min_chars": min_chars}))
    await knowledge_base(client, await admin_token(db, demo))

    reply = await say(client, demo.resident_ids[0], SHORT_LIQUOR + "！！😷")

    assert (LIQUOR["explanation"] in reply) is answered
    assert (NOT_UNDERSTOOD in reply) is not answered
    assert await count(db, questions) == (1 if answered else 0)
    assert await count(db, items) == 0


async def test_short_claim_counts_in_the_report_and_gets_later_corrections(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    ids = await knowledge_base(client, token, LIQUOR, SUPERMARKET)
    cid = ids[LIQUOR["claim"]]
    first, second = demo.resident_ids[:2]
    await say(client, first, SHORT_LIQUOR)
    await say(client, second, "这是真的吗 " + SHORT_LIQUOR)
    await say(client, second, "谢谢")  # not a question: not counted

    board = await say(client, demo.admin_id, "谣言榜")

    assert "共 2 次询问" in board
    assert LIQUOR["claim"] in board and "——2次，2人" in board
    assert "待核实" not in board

    correction = "更正：任何酒精饮料都不能预防病毒感染。"
    edited = await ok(
        await call(
            client, token, "PATCH", f"/clarifications/{cid}", json={"explanation": correction}
        )
    )
    assert edited["delivered"]["updated"] == 2
    updates = await rows(
        db, outbox, outbox.c.ref_type == "rumor", outbox.c.key.like(f"rumor:{cid}:v2:%")
    )
    assert sorted(r.person_id for r in updates) == sorted([first, second])
    assert all(correction in r.payload["text"] for r in updates)


async def test_commands_flows_and_registration_route_before_the_fallback(
    make_config, start_app, demo, db
):
    """A short claim never pre-empts what routes before the fallback: a newcomer registers,
    a flow waiting for an answer reads it, a staff command stays a command."""
    client, _ = await start_app(
        make_config(checkin={"schedule": {"quiet_hours": ["00:00", "00:00"]}})
    )
    await knowledge_base(client, await admin_token(db, demo))
    resident = demo.resident_ids[0]

    r = await client.post("/sim/api/newcomer")
    newcomer = (await r.json())["address"]
    sent = await client.post("/sim/api/send", json={"address": newcomer, "text": SHORT_LIQUOR})
    registration = "\n".join((await sent.json())["replies"])
    assert "网格编码" in registration and LIQUOR["explanation"] not in registration

    await say(client, resident, "打卡")
    checkin = await say(client, resident, SHORT_LIQUOR)  # the temperature question's answer
    assert LIQUOR["explanation"] not in checkin and NOT_UNDERSTOOD not in checkin
    await say(client, resident, "取消")

    assert "哪一类" in await say(client, resident, "求助")
    intake = await say(client, resident, SHORT_LIQUOR)
    assert LIQUOR["explanation"] not in intake and NOT_UNDERSTOOD not in intake
    await say(client, resident, "取消")

    warden = demo.wardens["G0101"]
    today = await say(client, warden, "今日打卡")
    assert "应打卡" in today and NOT_UNDERSTOOD not in today

    assert await count(db, questions) == 0
    # With nothing waiting any more, the same words get the clarification.
    assert LIQUOR["explanation"] in await say(client, resident, SHORT_LIQUOR)
