"""The rumor API through the real app, on SQLite and PostgreSQL: clarifications and their
history, the review queue, notify-on-publish once per person, corrections, pushes, scope,
validation and the report."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from rumors_support import (
    LIQUOR,
    OTHER_UNKNOWN_POST,
    SUPERMARKET,
    SUPERMARKET_POST,
    UNKNOWN_POST,
    admin_token,
    audit,
    call,
    clarifications,
    clarify_item,
    count,
    deliveries,
    grant,
    history,
    items,
    ok,
    outbox,
    publish,
    questions,
    refused,
    residents_in,
    rows,
    say,
    sim_messages,
    until_waiting,
)
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.api import PREFIX, create_token
from storage import rumors as store
from storage.models import Role, utcnow
from storage.notices_models import Notice

DISTRICT = {"region": "D01"}
CLAIM = {
    "claim": "本周六晚上将用直升机在全城上空喷洒消毒药水",
    "verdict": "false",
    "explanation": "本市没有安排任何空中喷洒消毒作业，请勿轻信。",
    "source_name": "市疫情防控指挥部",
    "source_url": "https://example.org/spray",
    **DISTRICT,
}


async def rumor_outbox(db, clarification_id: int) -> list:
    return await rows(db, outbox, outbox.c.ref_type == "rumor", outbox.c.ref_id == clarification_id)


async def ask_unknown(client, people: list[int], post: str = UNKNOWN_POST) -> None:
    for pid in people:
        assert "核实后会告诉您" in await say(client, pid, "这是真的吗 " + post)


async def pending_items(client, token) -> list[dict]:
    return (await ok(await call(client, token, "GET", "/review")))["items"]


# -- clarifications --------------------------------------------------------------------------


async def received_by_two(client, token, *, asker: int, inline: int) -> int:
    """``asker`` asks an unknown post, the review publishes a clarification of it (``asker`` is
    told), then ``inline`` asks and is answered: the clarification's id."""
    await ask_unknown(client, [asker])
    [item] = await pending_items(client, token)
    created = await clarify_item(client, token, item["id"], {**CLAIM, "publish": True})
    assert CLAIM["explanation"] in await say(client, inline, "这是真的吗 " + UNKNOWN_POST)
    return created["id"]


async def push_to_grid(client, token, clarification_id: int) -> dict:
    """Push the clarification to grid G0101 as a notice."""
    return await ok(
        await call(
            client,
            token,
            "POST",
            f"/clarifications/{clarification_id}/push",
            json={"regions": ["G0101"]},
        ),
        201,
    )


async def test_create_edit_publish_and_history(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)

    draft = await ok(await call(client, token, "POST", "/clarifications", json=CLAIM), 201)
    assert (draft["status"], draft["version"], draft["region"]) == ("draft", 1, "D01")

    # Edits of a draft keep no history.
    edited = await ok(
        await call(
            client, token, "PATCH", f"/clarifications/{draft['id']}", json={"verdict": "misleading"}
        )
    )
    assert (edited["verdict"], edited["version"]) == ("misleading", 1)
    assert await count(db, history) == 0

    published = await ok(
        await call(client, token, "POST", f"/clarifications/{draft['id']}/publish")
    )
    assert published["status"] == "published"
    assert published["published_at"]

    corrected = await ok(
        await call(
            client,
            token,
            "PATCH",
            f"/clarifications/{draft['id']}",
            json={"verdict": "false", "explanation": "经核实，本市没有空中喷洒消毒安排。"},
        )
    )
    assert corrected["version"] == 2
    one = await ok(await call(client, token, "GET", f"/clarifications/{draft['id']}"))
    [old] = one["history"]
    assert (old["version"], old["verdict"], old["explanation"]) == (
        1,
        "misleading",
        CLAIM["explanation"],
    )
    listed = await ok(await call(client, token, "GET", "/clarifications?status=published"))
    assert [c["id"] for c in listed["clarifications"]] == [draft["id"]]
    actions = [r.action for r in await rows(db, audit, audit.c.action.startswith("rumor."))]
    assert actions == [
        "rumor.clarification.create",
        "rumor.clarification.edit",
        "rumor.clarification.publish",
        "rumor.clarification.edit",
    ]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"verdict": "maybe"}, "bad_verdict"),
        ({"claim": "   "}, "empty_field"),
        ({"claim": "😷😷！！"}, "empty_field"),
        ({"claim": "长" * 301}, "too_long"),
        ({"explanation": "长" * 1001}, "too_long"),
        ({"source_url": "javascript:alert(1)"}, "bad_url"),
        ({"expires_at": "2020-01-01T00:00:00+08:00"}, "past_time"),
        ({"expires_at": "2099-01-01T00:00:00"}, "bad_time"),
        ({"expires_at": "明天"}, "bad_time"),
        ({"region": "NOPE"}, "unknown_region"),
        ({"colour": "red"}, "unknown_field"),
    ],
)
async def test_invalid_clarification_is_refused_and_nothing_stored(
    make_config, start_app, demo, db, change, code
):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)

    await refused(
        await call(client, token, "POST", "/clarifications", json={**CLAIM, **change}), 400, code
    )

    assert await count(db, clarifications) == 0


async def test_missing_field_and_bad_body_are_refused(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    body = {k: v for k, v in CLAIM.items() if k != "source_name"}

    await refused(
        await call(client, token, "POST", "/clarifications", json=body), 400, "empty_field"
    )
    await refused(
        await call(client, token, "POST", "/clarifications", data=b"{not json"), 400, "bad_body"
    )
    await refused(await call(client, token, "POST", "/clarifications", json=[1]), 400, "bad_body")
    assert await count(db, clarifications) == 0


async def test_state_changes_are_checked(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    draft = await ok(await call(client, token, "POST", "/clarifications", json=CLAIM), 201)
    cid = draft["id"]

    await refused(
        await call(client, token, "POST", f"/clarifications/{cid}/withdraw"), 409, "not_published"
    )
    await refused(
        await call(
            client, token, "POST", f"/clarifications/{cid}/push", json={"regions": ["G0101"]}
        ),
        409,
        "not_published",
    )
    await ok(await call(client, token, "POST", f"/clarifications/{cid}/publish"))
    await refused(
        await call(client, token, "POST", f"/clarifications/{cid}/publish"),
        409,
        "already_published",
    )
    await refused(
        await call(
            client, token, "PATCH", f"/clarifications/{cid}", json={"claim": CLAIM["claim"]}
        ),
        400,
        "nothing_changed",
    )
    await refused(await call(client, token, "GET", "/clarifications/999999"), 404, "not_found")
    await refused(await call(client, token, "GET", "/clarifications/abc"), 400, "bad_parameter")


async def test_attaching_to_a_clarification_that_expired_is_refused_and_nothing_sent(
    make_config, start_app, demo, db
):
    """Publishing an expired clarification is refused; so is answering askers with one that
    expired after publication."""
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    soon = (utcnow() + timedelta(days=1)).isoformat()
    cid = (await publish(client, token, {**LIQUOR, **DISTRICT, "expires_at": soon}))["id"]
    async with db.write() as conn:
        await store.update_clarification(conn, db, cid, expires_at=utcnow() - timedelta(seconds=1))
    asker = demo.resident_ids[0]
    await ask_unknown(client, [asker])
    [item] = await pending_items(client, token)

    error = await refused(
        await call(
            client, token, "POST", f"/review/{item['id']}/attach", json={"clarification_id": cid}
        ),
        409,
        "expired",
    )

    assert "再关联" in error["message"]
    assert [i["id"] for i in await pending_items(client, token)] == [item["id"]]
    assert await rumor_outbox(db, cid) == []
    assert await count(db, deliveries) == 0
    await ok(await call(client, token, "POST", f"/clarifications/{cid}/withdraw"))
    error = await refused(
        await call(client, token, "POST", f"/clarifications/{cid}/publish"), 409, "expired"
    )
    assert "再发布" in error["message"]


# -- scope -----------------------------------------------------------------------------------


async def test_only_admins_manage_clarifications_within_their_scope(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    district_admin = await admin_token(db, demo)
    warden = await create_token(db, demo.wardens["G0101"])
    street_admin_id = demo.wardens["G0201"]
    await grant(db, street_admin_id, Role.ADMIN, "S02")
    street_admin = await create_token(db, street_admin_id)

    await refused(
        await call(client, warden, "POST", "/clarifications", json=CLAIM), 403, "not_allowed"
    )
    # A clarification for everyone needs a city admin.
    everyone = {**CLAIM, "region": None}
    await refused(
        await call(client, district_admin, "POST", "/clarifications", json=everyone),
        403,
        "out_of_scope",
    )
    await refused(
        await call(
            client, street_admin, "POST", "/clarifications", json={**CLAIM, "region": "S01"}
        ),
        403,
        "out_of_scope",
    )
    assert await count(db, clarifications) == 0

    district_wide = await publish(client, district_admin, CLAIM)
    # The street admin sees it (it applies to their street) but may not change it.
    await ok(await call(client, street_admin, "GET", f"/clarifications/{district_wide['id']}"))
    await refused(
        await call(
            client,
            street_admin,
            "POST",
            f"/clarifications/{district_wide['id']}/withdraw",
        ),
        403,
        "out_of_scope",
    )
    # Nor can the district admin move one into the street admin's scope and lose it.
    own = await publish(client, street_admin, {**LIQUOR, "region": "S02"})
    await refused(
        await call(
            client, street_admin, "PATCH", f"/clarifications/{own['id']}", json={"region": "D01"}
        ),
        403,
        "out_of_scope",
    )

    await grant(db, demo.admin_id, Role.ADMIN, demo.city.code)
    for_everyone = await publish(client, district_admin, {**LIQUOR, "region": None})
    assert for_everyone["region"] is None


async def test_review_queue_shows_only_items_asked_in_scope(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    [north] = await residents_in(db, demo, "G0101", 1)
    [south] = await residents_in(db, demo, "G0201", 1)
    await ask_unknown(client, [north], UNKNOWN_POST)
    await ask_unknown(client, [south], OTHER_UNKNOWN_POST)
    street_admin_id = demo.wardens["G0201"]
    await grant(db, street_admin_id, Role.ADMIN, "S02")
    street_admin = await create_token(db, street_admin_id)

    seen = await pending_items(client, street_admin)
    assert [i["sample"] for i in seen] == [OTHER_UNKNOWN_POST]
    north_item = next(
        i
        for i in await pending_items(client, await admin_token(db, demo))
        if "直升机" in i["sample"]
    )
    await refused(
        await call(client, street_admin, "POST", f"/review/{north_item['id']}/dismiss"),
        404,
        "item_not_found",
    )
    assert await count(db, audit, audit.c.action == "rumor.review.list") == 2


# -- review queue and notify-on-publish ------------------------------------------------------


async def test_review_list_is_by_count_and_publishing_from_it_tells_each_asker_once(
    make_config, start_app, demo, db
):
    client, rt = await start_app(make_config())
    token = await admin_token(db, demo)
    a, b, c, d = demo.resident_ids[:4]
    await ask_unknown(client, [d], OTHER_UNKNOWN_POST)
    await ask_unknown(client, [a, b, a], UNKNOWN_POST)
    await say(client, c, "转发 " + UNKNOWN_POST[:45])

    listed = await pending_items(client, token)
    assert [(i["asker_count"], i["ask_count"]) for i in listed] == [(3, 4), (1, 1)]
    top = listed[0]

    body = {k: v for k, v in CLAIM.items() if k != "claim"} | {"publish": True}
    created = await clarify_item(client, token, top["id"], body)

    assert created["status"] == "published"
    assert created["claim"] == top["sample"][:300]
    assert created["delivered"] == {"notified": 3, "updated": 0, "correction_notices": []}
    sent = await rumor_outbox(db, created["id"])
    assert sorted(r.person_id for r in sent) == sorted([a, b, c])
    assert {r.key for r in sent} == {f"rumor:{created['id']}:v1:{p}" for p in (a, b, c)}
    assert all(CLAIM["explanation"] in r.payload["text"] for r in sent)
    [item] = await rows(db, items, items.c.id == top["id"])
    assert (item.status, item.clarification_id) == ("attached", created["id"])

    # Attaching a second item to it tells only its own askers; nobody gets it twice.
    other = listed[1]
    attached = await ok(
        await call(
            client,
            token,
            "POST",
            f"/review/{other['id']}/attach",
            json={"clarification_id": created["id"]},
        )
    )
    assert attached["delivered"]["notified"] == 1
    assert sorted(r.person_id for r in await rumor_outbox(db, created["id"])) == sorted(
        [a, b, c, d]
    )
    await refused(
        await call(
            client,
            token,
            "POST",
            f"/review/{other['id']}/attach",
            json={"clarification_id": created["id"]},
        ),
        409,
        "item_closed",
    )

    await rt.delivery.run_once()
    delivered = await rows(db, sim_messages, sim_messages.c.outbox_key.startswith("rumor:"))
    assert sorted(m.target for m in delivered) == sorted(f"sim-{p}" for p in (a, b, c, d))
    assert await count(db, deliveries, deliveries.c.kind == "notify") == 4
    # Someone asking now gets the answer inline, and is not notified again.
    assert CLAIM["explanation"] in await say(client, a, "这是真的吗 " + UNKNOWN_POST)
    assert len(await rumor_outbox(db, created["id"])) == 4


async def test_item_attached_to_a_draft_is_told_on_publish(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    a, b = demo.resident_ids[:2]
    await ask_unknown(client, [a, b])
    [item] = await pending_items(client, token)
    draft = await ok(await call(client, token, "POST", "/clarifications", json=CLAIM), 201)

    attached = await ok(
        await call(
            client,
            token,
            "POST",
            f"/review/{item['id']}/attach",
            json={"clarification_id": draft["id"]},
        )
    )
    assert attached["delivered"]["notified"] == 0
    assert await rumor_outbox(db, draft["id"]) == []

    published = await ok(
        await call(client, token, "POST", f"/clarifications/{draft['id']}/publish")
    )
    assert published["delivered"]["notified"] == 2
    assert sorted(r.person_id for r in await rumor_outbox(db, draft["id"])) == sorted([a, b])


async def test_asking_after_the_item_was_attached_to_a_draft_joins_it_and_is_told_on_publish(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    first, second = demo.resident_ids[:2]
    await ask_unknown(client, [first])
    [item] = await pending_items(client, token)
    draft = await clarify_item(client, token, item["id"], CLAIM)

    await ask_unknown(client, [second], post="转发：" + UNKNOWN_POST)

    assert await pending_items(client, token) == []
    [joined] = await rows(db, items)
    assert (joined.status, joined.ask_count, joined.asker_count) == ("attached", 2, 2)
    published = await ok(
        await call(client, token, "POST", f"/clarifications/{draft['id']}/publish")
    )
    assert published["delivered"]["notified"] == 2
    assert sorted(r.person_id for r in await rumor_outbox(db, draft["id"])) == [first, second]


async def test_region_scoped_clarification_notifies_only_askers_in_it(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    [north] = await residents_in(db, demo, "G0101", 1)
    [south] = await residents_in(db, demo, "G0201", 1)
    await ask_unknown(client, [north, south])
    [item] = await pending_items(client, token)

    created = await clarify_item(
        client, token, item["id"], {**CLAIM, "region": "S01", "publish": True}
    )

    assert [r.person_id for r in await rumor_outbox(db, created["id"])] == [north]


async def test_askers_outside_a_scoped_clarification_stay_in_review_as_a_new_item(
    make_config, start_app, demo, db
):
    """A street admin answers a shared item with a clarification for their street: the asker
    living in the other street is not told by it, so their question stays pending, in a new
    item of its own that the district admin can answer."""
    client, _ = await start_app(make_config())
    district = await admin_token(db, demo)
    [north] = await residents_in(db, demo, "G0101", 1)
    [south, south_again] = await residents_in(db, demo, "G0201", 2)
    await ask_unknown(client, [north, south, south_again])
    await ask_unknown(client, [north], post="转发：" + UNKNOWN_POST)
    south_admin_id = demo.wardens["G0201"]
    await grant(db, south_admin_id, Role.ADMIN, "S02")
    south_admin = await create_token(db, south_admin_id)
    [item] = await pending_items(client, south_admin)

    created = await clarify_item(
        client, south_admin, item["id"], {**CLAIM, "region": "S02", "publish": True}
    )

    told = sorted(r.person_id for r in await rumor_outbox(db, created["id"]))
    assert told == sorted([south, south_again])
    [left] = await pending_items(client, district)
    assert left["id"] != item["id"]
    assert (left["ask_count"], left["asker_count"]) == (2, 1)
    assert await pending_items(client, south_admin) == []
    [answered] = await rows(db, items, items.c.id == item["id"])
    assert (answered.status, answered.ask_count, answered.asker_count) == ("attached", 2, 2)
    moved = await rows(db, questions, questions.c.person_id == north)
    assert {q.review_item_id for q in moved} == {left["id"]}


async def test_dismissed_item_leaves_the_pending_list(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    await ask_unknown(client, demo.resident_ids[:1])
    [item] = await pending_items(client, token)

    await ok(await call(client, token, "POST", f"/review/{item['id']}/dismiss"))

    assert await pending_items(client, token) == []
    dismissed = await ok(await call(client, token, "GET", "/review?status=dismissed"))
    assert [i["id"] for i in dismissed["items"]] == [item["id"]]


async def holding_item(db, item_id: int):
    """A connection holding the review item's row lock (as an asker counting a question into
    it would), and its engine."""
    engine = create_async_engine(db.url)
    conn = await engine.connect()
    await conn.begin()
    await conn.execute(
        text("SELECT id FROM rumor_review_items WHERE id = :id FOR UPDATE"), {"id": item_id}
    )
    return engine, conn


@pytest.mark.parametrize("meanwhile", ["edit", "withdraw"])
async def test_attach_sends_the_clarification_as_edited_or_withdrawn_while_it_waited(
    make_config, start_app, demo, db, meanwhile
):
    """Regression: attach read the clarification before waiting for the item, so an edit (or
    withdrawal) committed meanwhile left the askers with the old version (or with a withdrawn
    clarification).  It now reads it after the item, locked."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL: SQLite write transactions are serialized by BEGIN IMMEDIATE")
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    cid = (await publish(client, token, {**LIQUOR, **DISTRICT}))["id"]
    asker = demo.resident_ids[0]
    await ask_unknown(client, [asker])
    [item] = await pending_items(client, token)

    engine, holder = await holding_item(db, item["id"])
    try:
        attach = asyncio.ensure_future(
            call(
                client,
                token,
                "POST",
                f"/review/{item['id']}/attach",
                json={"clarification_id": cid},
            )
        )
        await until_waiting(engine, 1)
        fixed = "更正：酒精不能预防病毒感染。"
        if meanwhile == "edit":
            change = await call(
                client, token, "PATCH", f"/clarifications/{cid}", json={"explanation": fixed}
            )
        else:
            change = await call(client, token, "POST", f"/clarifications/{cid}/withdraw")
        await ok(change)
        await holder.rollback()
        attached = await ok(await attach)
    finally:
        await holder.close()
        await engine.dispose()

    sent = [r.payload["text"] for r in await rumor_outbox(db, cid)]
    if meanwhile == "edit":
        assert attached["delivered"]["notified"] == 1
        assert len(sent) == 1 and fixed in sent[0]
    else:
        assert attached["delivered"]["notified"] == 0
        assert sent == []


async def test_two_reviewers_attaching_one_item_at_once_one_is_refused(
    make_config, start_app, demo, db
):
    """Regression: both reviewers got 200 although the item was attached to only one
    clarification (the second's update matched no pending row and was ignored)."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL: SQLite write transactions are serialized by BEGIN IMMEDIATE")
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    one = (await publish(client, token, {**LIQUOR, **DISTRICT}))["id"]
    two = (await publish(client, token, CLAIM))["id"]
    await ask_unknown(client, demo.resident_ids[:1], post=OTHER_UNKNOWN_POST)
    [item] = await pending_items(client, token)

    engine, holder = await holding_item(db, item["id"])
    try:
        calls = [
            asyncio.ensure_future(
                call(
                    client,
                    token,
                    "POST",
                    f"/review/{item['id']}/attach",
                    json={"clarification_id": c},
                )
            )
            for c in (one, two)
        ]
        await until_waiting(engine, 2)
        await holder.rollback()
        answers = [await c for c in calls]
    finally:
        await holder.close()
        await engine.dispose()

    assert sorted(a.status for a in answers) == [200, 409]
    [loser] = [a for a in answers if a.status == 409]
    assert (await loser.json())["error"]["code"] == "item_closed"
    [attached] = await rows(db, items)
    [winner] = [a for a in answers if a.status == 200]
    assert attached.clarification_id == (await winner.json())["clarification_id"]
    assert await count(db, outbox, outbox.c.ref_type == "rumor") == 1


# -- corrections -----------------------------------------------------------------------------


async def test_correction_goes_to_earlier_recipients_marked_as_update(
    make_config, start_app, demo, db
):
    client, rt = await start_app(make_config())
    token = await admin_token(db, demo)
    inline, asker, bystander = demo.resident_ids[:3]
    cid = await received_by_two(client, token, asker=asker, inline=inline)

    correction = "更正：本市确有一次无人机消毒演练，仅限公园，不涉及居民区。"
    edited = await ok(
        await call(
            client, token, "PATCH", f"/clarifications/{cid}", json={"explanation": correction}
        )
    )

    assert edited["version"] == 2
    assert edited["delivered"] == {"notified": 0, "updated": 2, "correction_notices": []}
    updates = [r for r in await rumor_outbox(db, cid) if r.key.startswith(f"rumor:{cid}:v2:")]
    assert sorted(r.person_id for r in updates) == sorted([inline, asker])
    for row in updates:
        assert row.payload["text"].startswith("【更新】")
        assert correction in row.payload["text"]
    assert all(r.person_id != bystander for r in await rumor_outbox(db, cid))
    versions = {r.person_id: (r.version, r.kind) for r in await rows(db, deliveries)}
    assert versions == {inline: (2, "update"), asker: (2, "update")}

    # A silent fix of a typo keeps history but sends nothing.
    before = len(await rumor_outbox(db, cid))
    silent = await ok(
        await call(
            client,
            token,
            "PATCH",
            f"/clarifications/{cid}",
            json={"source_name": "市疫情防控指挥部办公室", "notify": False},
        )
    )
    assert silent["version"] == 3
    assert len(await rumor_outbox(db, cid)) == before
    assert await count(db, history) == 2

    await rt.delivery.run_once()
    texts = [m.text for m in await rows(db, sim_messages, sim_messages.c.target == f"sim-{asker}")]
    assert any(t.startswith("【更新】") for t in texts)


async def test_editing_only_expiry_or_scope_keeps_history_but_sends_no_update(
    make_config, start_app, demo, db
):
    """Residents read neither the expiry nor the scope: such an edit makes a version (the
    history keeps the replaced one) but sends no "【更新】" and no correction notice; the next
    real correction reaches them."""
    client, _ = await start_app(make_config(notices={"quiet_hours": False}))
    token = await admin_token(db, demo)
    inline, asker = demo.resident_ids[:2]
    cid = await received_by_two(client, token, asker=asker, inline=inline)
    await push_to_grid(client, token, cid)
    sent = len(await rumor_outbox(db, cid))

    later = (utcnow() + timedelta(days=30)).isoformat()
    for change in ({"expires_at": later}, {"region": "S01"}):
        edited = await ok(await call(client, token, "PATCH", f"/clarifications/{cid}", json=change))
        assert edited["delivered"] == {"notified": 0, "updated": 0, "correction_notices": []}

    assert edited["version"] == 3
    assert await count(db, history) == 2
    assert len(await rumor_outbox(db, cid)) == sent
    corrected = await ok(
        await call(
            client, token, "PATCH", f"/clarifications/{cid}", json={"explanation": "更正后的说明。"}
        )
    )
    assert corrected["delivered"]["updated"] == 2
    assert len(corrected["delivered"]["correction_notices"]) == 1


async def test_withdrawal_tells_everyone_who_received_it_and_the_pushed_regions(
    make_config, start_app, demo, db
):
    client, rt = await start_app(make_config(notices={"quiet_hours": False}))
    token = await admin_token(db, demo)
    inline, asker, bystander = demo.resident_ids[:3]
    cid = await received_by_two(client, token, asker=asker, inline=inline)
    pushed = await push_to_grid(client, token, cid)

    withdrawn = await ok(await call(client, token, "POST", f"/clarifications/{cid}/withdraw"))
    assert withdrawn["status"] == "withdrawn"
    assert withdrawn["delivered"]["withdrawn"] == 2
    [notice_id] = withdrawn["delivered"]["withdrawal_notices"]

    told = [r for r in await rumor_outbox(db, cid) if ":withdrawn:" in r.key]
    assert sorted(r.person_id for r in told) == sorted([inline, asker])
    for row in told:
        assert row.payload["text"].startswith("【撤回】")
        assert CLAIM["claim"] in row.payload["text"]
    assert all(r.person_id != bystander for r in await rumor_outbox(db, cid))
    async with db.read() as conn:
        notice = (await conn.execute(select(Notice.__table__).where(Notice.id == notice_id))).one()
    assert notice.text.startswith("【撤回】") and notice.status == "sent"
    original = await rows(
        db, outbox, outbox.c.ref_type == "notice", outbox.c.ref_id == pushed["notice_id"]
    )
    withdrawal = await rows(db, outbox, outbox.c.ref_type == "notice", outbox.c.ref_id == notice_id)
    assert len(withdrawal) == len(original)
    # withdrawing once more is refused and tells nobody again
    await refused(
        await call(client, token, "POST", f"/clarifications/{cid}/withdraw"), 409, "not_published"
    )
    assert len([r for r in await rumor_outbox(db, cid) if ":withdrawn:" in r.key]) == 2

    await rt.delivery.run_once()
    texts = [m.text for m in await rows(db, sim_messages, sim_messages.c.target == f"sim-{asker}")]
    assert any(t.startswith("【撤回】") for t in texts)


async def test_published_again_after_withdrawal_tells_those_told_of_the_withdrawal(
    make_config, start_app, demo, db
):
    client, rt = await start_app(make_config(notices={"quiet_hours": False}))
    token = await admin_token(db, demo)
    inline, asker, bystander = demo.resident_ids[:3]
    cid = await received_by_two(client, token, asker=asker, inline=inline)
    pushed = await push_to_grid(client, token, cid)
    await ok(await call(client, token, "POST", f"/clarifications/{cid}/withdraw"))
    kinds = {r.person_id: (r.version, r.kind) for r in await rows(db, deliveries)}
    assert kinds == {inline: (1, "withdrawn"), asker: (1, "withdrawn")}
    # Reviewed while withdrawn: the explanation changes (version 2), nobody is told yet.
    fixed = "经复核：该消息确为谣言，本市未开展任何无人机喷洒消毒作业。"
    edited = await ok(
        await call(client, token, "PATCH", f"/clarifications/{cid}", json={"explanation": fixed})
    )
    assert edited["version"] == 2
    assert edited["delivered"] == {"notified": 0, "updated": 0, "correction_notices": []}

    again = await ok(await call(client, token, "POST", f"/clarifications/{cid}/publish"))

    assert again["status"] == "published"
    assert again["delivered"]["notified"] == 0
    assert again["delivered"]["updated"] == 2
    [notice_id] = again["delivered"]["correction_notices"]
    back = [r for r in await rumor_outbox(db, cid) if ":republished:" in r.key]
    assert sorted(r.person_id for r in back) == sorted([inline, asker])
    for row in back:
        assert row.payload["text"].startswith("【重新发布】")
        assert fixed in row.payload["text"]
    # Told once: no separate "update" beside the notice that it stands again.
    assert not [r for r in await rumor_outbox(db, cid) if r.key.startswith(f"rumor:{cid}:v2:")]
    assert all(r.person_id != bystander for r in await rumor_outbox(db, cid))
    kinds = {r.person_id: (r.version, r.kind) for r in await rows(db, deliveries)}
    assert kinds == {inline: (2, "update"), asker: (2, "update")}
    async with db.read() as conn:
        notice = (await conn.execute(select(Notice.__table__).where(Notice.id == notice_id))).one()
    assert notice.text.startswith("【重新发布】") and notice.status == "sent"
    original = await rows(
        db, outbox, outbox.c.ref_type == "notice", outbox.c.ref_id == pushed["notice_id"]
    )
    told_again = await rows(db, outbox, outbox.c.ref_type == "notice", outbox.c.ref_id == notice_id)
    assert len(told_again) == len(original)

    await rt.delivery.run_once()
    texts = [m.text for m in await rows(db, sim_messages, sim_messages.c.target == f"sim-{asker}")]
    assert any(t.startswith("【重新发布】") for t in texts)


# -- push ------------------------------------------------------------------------------------


async def test_push_to_regions_goes_out_as_a_notice_and_corrections_follow(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config(notices={"quiet_hours": False}))
    token = await admin_token(db, demo)
    cid = (await publish(client, token, CLAIM))["id"]

    pushed = await ok(
        await call(
            client, token, "POST", f"/clarifications/{cid}/push", json={"regions": ["G0101"]}
        ),
        201,
    )

    notice_rows = await rows(
        db, outbox, outbox.c.ref_type == "notice", outbox.c.ref_id == pushed["notice_id"]
    )
    assert len(notice_rows) == pushed["people"] + pushed["groups"]
    assert pushed["groups"] == 1
    assert all(CLAIM["explanation"] in r.payload["text"] for r in notice_rows)

    edited = await ok(
        await call(
            client, token, "PATCH", f"/clarifications/{cid}", json={"explanation": "更正后的说明。"}
        )
    )
    [correction_id] = edited["delivered"]["correction_notices"]
    async with db.read() as conn:
        notice = (
            await conn.execute(select(Notice.__table__).where(Notice.id == correction_id))
        ).one()
    assert notice.text.startswith("【更新】")
    assert notice.status == "sent"
    corrected = await rows(
        db, outbox, outbox.c.ref_type == "notice", outbox.c.ref_id == correction_id
    )
    assert len(corrected) == len(notice_rows)


async def test_attaching_an_item_after_a_correction_does_not_send_the_pushed_region_it_again(
    make_config, start_app, demo, db
):
    """Pushed at version 1, corrected (the grid gets the correction notice), then a review
    item is attached: its asker is told, and the grid gets no second correction notice."""
    client, _ = await start_app(make_config(notices={"quiet_hours": False}))
    token = await admin_token(db, demo)
    cid = (await publish(client, token, {**LIQUOR, **DISTRICT}))["id"]
    await push_to_grid(client, token, cid)
    edited = await ok(
        await call(
            client, token, "PATCH", f"/clarifications/{cid}", json={"explanation": "更正后的说明。"}
        )
    )
    assert len(edited["delivered"]["correction_notices"]) == 1
    await ask_unknown(client, demo.resident_ids[:1])
    [item] = await pending_items(client, token)

    attached = await ok(
        await call(
            client, token, "POST", f"/review/{item['id']}/attach", json={"clarification_id": cid}
        )
    )

    assert attached["delivered"] == {"notified": 1, "updated": 0, "correction_notices": []}
    assert await count(db, Notice.__table__) == 2


async def test_push_outside_scope_is_refused(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    street_scoped = await publish(client, token, {**CLAIM, "region": "S01"})

    await refused(
        await call(
            client,
            token,
            "POST",
            f"/clarifications/{street_scoped['id']}/push",
            json={"regions": ["G0201"]},
        ),
        400,
        "outside_clarification_scope",
    )
    await refused(
        await call(
            client,
            token,
            "POST",
            f"/clarifications/{street_scoped['id']}/push",
            json={"regions": []},
        ),
        400,
        "bad_field",
    )
    await refused(
        await call(
            client,
            token,
            "POST",
            f"/clarifications/{street_scoped['id']}/push",
            json={"regions": ["NOPE"]},
        ),
        400,
        "push_refused",
    )
    assert await count(db, Notice.__table__) == 0


# -- report ----------------------------------------------------------------------------------


async def test_report_lists_most_asked_claims_answered_and_unanswered_by_region(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    answered = await publish(client, token, {**SUPERMARKET, **DISTRICT})
    north = await residents_in(db, demo, "G0101", 2)
    [south] = await residents_in(db, demo, "G0201", 1)
    for pid in (*north, south):
        await say(client, pid, SUPERMARKET_POST)
    await ask_unknown(client, north[:1])

    report = await ok(await call(client, token, "GET", "/report"))

    assert report["region"] == "D01"
    assert report["asks"] == 4
    [line] = report["answered"]
    assert (line["id"], line["asks"], line["people"], line["verdict"]) == (
        answered["id"],
        3,
        3,
        "false",
    )
    assert line["regions"] == [
        {"code": "S01", "name": "东湖街道", "asks": 2},
        {"code": "S02", "name": "南岸街道", "asks": 1},
    ]
    [open_line] = report["unanswered"]
    assert (open_line["kind"], open_line["asks"]) == ("review_item", 1)

    street = await ok(await call(client, token, "GET", "/report?region=S02&days=1"))
    assert [ln["asks"] for ln in street["answered"]] == [1]
    assert street["unanswered"] == []

    warden = await create_token(db, demo.wardens["G0201"])
    own = await ok(await call(client, warden, "GET", "/report"))
    assert [ln["asks"] for ln in own["answered"]] == [1]
    await refused(await call(client, warden, "GET", "/report?region=G0101"), 403, "out_of_scope")
    await refused(await call(client, token, "GET", "/report?days=0"), 400, "bad_parameter")
    assert await count(db, audit, audit.c.action == "rumor.report") == 3


async def test_report_in_chat_for_staff_only(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    await publish(client, token, {**SUPERMARKET, **DISTRICT})
    a, b = demo.resident_ids[:2]
    await say(client, a, SUPERMARKET_POST)
    await say(client, b, SUPERMARKET_POST)
    await ask_unknown(client, [a])

    board = await say(client, demo.admin_id, "谣言榜")

    assert "共 3 次询问" in board
    assert "已核实" in board and "待核实" in board
    assert "——2次，2人" in board
    assert "只对网格员和管理员开放" in await say(client, a, "谣言榜")
    empty_warden = demo.wardens["G0202"]
    assert "没有询问过传言" in await say(client, empty_warden, "谣言榜")


async def test_report_counts_a_person_once_per_claim_however_they_asked(
    make_config, start_app, demo, db
):
    """A resident who asked before the clarification existed (queued, then told) and again
    afterwards (answered at once) asked twice, and is one person."""
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    [resident] = await residents_in(db, demo, "G0101", 1)
    cid = await received_by_two(client, token, asker=resident, inline=resident)

    report = await ok(await call(client, token, "GET", "/report"))

    [line] = report["answered"]
    assert (line["id"], line["asks"], line["people"]) == (cid, 2, 1)
    assert line["regions"] == [{"code": "S01", "name": "东湖街道", "asks": 2}]


async def test_report_in_chat_marks_a_draft_not_yet_published_not_withdrawn(
    make_config, start_app, demo, db
):
    """An item attached to a draft is verified but nobody was told yet: （未发布）."""
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    await ask_unknown(client, demo.resident_ids[:2])
    [item] = await pending_items(client, token)
    await clarify_item(client, token, item["id"], CLAIM)

    board = await say(client, demo.admin_id, "谣言榜")

    assert "——2次，2人（未发布）" in board
    assert "已撤回" not in board


async def test_expired_clarification_is_not_answered(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await admin_token(db, demo)
    soon = (utcnow() + timedelta(days=1)).isoformat()
    cid = (await publish(client, token, {**SUPERMARKET, **DISTRICT, "expires_at": soon}))["id"]
    resident = demo.resident_ids[0]
    assert SUPERMARKET["explanation"] in await say(client, resident, SUPERMARKET_POST)

    # A day later (the row's expiry moved into the past, as time passing would).
    async with db.write() as conn:
        await store.update_clarification(conn, db, cid, expires_at=utcnow() - timedelta(seconds=1))

    assert SUPERMARKET["explanation"] not in await say(client, resident, SUPERMARKET_POST)


async def test_openapi_lists_the_rumor_operations(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    document = await ok(await client.get(f"{PREFIX}/openapi.json"))
    paths = document["paths"]
    assert {"post", "get"} <= set(paths["/rumors/clarifications"])
    assert "patch" in paths["/rumors/clarifications/{id}"]
    assert "get" in paths["/rumors/report"]
