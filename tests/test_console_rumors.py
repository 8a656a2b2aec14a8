"""The console's rumor pages through the real app on SQLite and PostgreSQL: the knowledge base
(create, edit with history, publish, withdraw), pushing to regions, the review queue (attach,
create and publish, dismiss), the report; bad forms, scope and CSRF refusals."""

from __future__ import annotations

from console_support import logged_in, start_console, without_tags
from rumors_support import (
    GARLIC,
    LIQUOR,
    OTHER_UNKNOWN_POST,
    SUPERMARKET,
    UNKNOWN_POST,
    audit,
    clarifications,
    count,
    grant,
    history,
    items,
    outbox,
    rows,
    say,
)

from storage import repo
from storage.models import Role

KB = "/console/rumors"
REVIEW = "/console/rumors/review"
REPORT = "/console/rumors/report"


async def admin_console(start_app, make_config, db, person_id):
    client, rt = await start_console(
        start_app, lambda **s: make_config(notices={"quiet_hours": False}, **s)
    )
    token = await logged_in(client, db, person_id)
    return client, rt, token


def form(token: str, body: dict, **extra: str) -> dict[str, str]:
    """A clarification form as a browser posts it (``region`` empty means everyone)."""
    fields = {k: v for k, v in body.items() if v is not None}
    return {"csrf_token": token, "source_url": "", "region": "D01", **fields, **extra}


async def test_create_draft_then_publish_and_withdraw(make_config, start_app, demo, db):
    client, _, token = await admin_console(start_app, make_config, db, demo.admin_id)

    created = await client.post(KB, data=form(token, LIQUOR), allow_redirects=False)

    assert created.status == 302, await created.text()
    [row] = await rows(db, clarifications)
    assert (row.status, row.claim, row.region_id) == ("draft", LIQUOR["claim"], demo.district.id)
    url = created.headers["Location"]
    assert url == f"{KB}/{row.id}"
    page = without_tags(await (await client.get(url)).text())
    assert "已保存为草稿" in page and LIQUOR["explanation"] in page

    published = await client.post(f"{url}/publish", data={"csrf_token": token})
    assert "辟谣信息已发布" in without_tags(await published.text())
    assert (await rows(db, clarifications))[0].status == "published"
    listing = without_tags(await (await client.get(KB, params={"status": "published"})).text())
    assert LIQUOR["claim"] in listing

    withdrawn = await client.post(f"{url}/withdraw", data={"csrf_token": token})
    assert "已撤回" in without_tags(await withdrawn.text())
    assert (await rows(db, clarifications))[0].status == "withdrawn"
    actions = {r.action for r in await rows(db, audit)}
    assert {
        "rumor.clarification.create",
        "rumor.clarification.publish",
        "rumor.clarification.withdraw",
    } <= actions


async def test_editing_a_published_clarification_keeps_its_history(
    make_config, start_app, demo, db
):
    client, _, token = await admin_console(start_app, make_config, db, demo.admin_id)
    await client.post(KB, data=form(token, SUPERMARKET, publish="1"))
    [row] = await rows(db, clarifications)
    edit = f"{KB}/{row.id}/edit"
    page = await (await client.get(edit)).text()
    assert SUPERMARKET["claim"] in page and 'name="notify"' in page

    changed = form(
        token, {**SUPERMARKET, "explanation": "全市超市正常营业，请勿囤积。"}, notify="1"
    )
    saved = await client.post(edit, data=changed)

    assert "修改已保存" in without_tags(await saved.text())
    [row] = await rows(db, clarifications)
    assert row.version == 2 and row.explanation == "全市超市正常营业，请勿囤积。"
    [old] = await rows(db, history)
    assert (old.version, old.explanation) == (1, SUPERMARKET["explanation"])
    detail = without_tags(await (await client.get(f"{KB}/{row.id}")).text())
    assert "第 1 版" in detail and SUPERMARKET["explanation"] in detail
    same = await client.post(edit, data=changed)
    assert same.status == 400 and "没有修改任何内容" in without_tags(await same.text())


async def test_bad_clarification_forms_come_back_with_the_reason(make_config, start_app, demo, db):
    client, _, token = await admin_console(start_app, make_config, db, demo.admin_id)
    cases = [
        (form(token, {**LIQUOR, "explanation": "  "}), 400, "请填写“解释说明”"),
        (form(token, {**LIQUOR, "verdict": "maybe"}), 400, "请选择一个结论"),
        (form(token, {**LIQUOR, "source_url": "ftp://x"}), 400, "来源链接必须以"),
        (form(token, {**LIQUOR, "expires_at": "2020-01-01T08:00"}), 400, "必须是将来的时间"),
        (form(token, {**LIQUOR, "claim": "新" * 400}), 400, "“传言内容”太长了"),
        (form(token, LIQUOR, region=""), 403, "只有市级管理员可以管理"),
        (form(token, LIQUOR, region="ZZZ"), 400, "找不到地区“ZZZ”"),
    ]
    for data, status, reason in cases:
        page = await client.post(KB, data=data)
        html = await page.text()
        assert page.status == status, reason
        assert reason in without_tags(html), reason
        assert 'name="claim"' in html
    assert await count(db, clarifications) == 0


async def test_street_admin_sees_and_changes_only_what_is_in_scope(
    make_config, start_app, demo, db
):
    client, _, token = await admin_console(start_app, make_config, db, demo.admin_id)
    await client.post(KB, data=form(token, LIQUOR, region="S02", publish="1"))
    await client.post(KB, data=form(token, SUPERMARKET, region="D01", publish="1"))
    south, district = await rows(db, clarifications)
    street_admin = demo.wardens["G0101"]
    await grant(db, street_admin, Role.ADMIN, "S01")
    other, _, other_token = await admin_console(start_app, make_config, db, street_admin)

    hidden = await other.get(f"{KB}/{south.id}")
    above = await other.get(f"{KB}/{district.id}")
    edit = await other.post(
        f"{KB}/{district.id}/edit", data=form(other_token, {**SUPERMARKET, "claim": "改"})
    )
    withdraw = await other.post(f"{KB}/{district.id}/withdraw", data={"csrf_token": other_token})

    assert hidden.status == 404
    assert above.status == 200  # visible: it applies to the street too
    assert edit.status == 403 and withdraw.status == 403
    assert [r.status for r in await rows(db, clarifications)] == ["published", "published"]


async def test_push_to_regions_in_scope(make_config, start_app, demo, db):
    client, _, token = await admin_console(start_app, make_config, db, demo.admin_id)
    await client.post(KB, data=form(token, SUPERMARKET, publish="1"))
    [row] = await rows(db, clarifications)
    push = f"{KB}/{row.id}/push"

    pushed = await client.post(
        push, data={"csrf_token": token, "regions": "G0101", "groups": "1", "individuals": "1"}
    )
    assert "已作为通知" in without_tags(await pushed.text())
    queued = await rows(db, outbox, outbox.c.ref_type == "notice")
    assert queued and any("【辟谣】" in r.payload["text"] for r in queued)
    none = await client.post(push, data={"csrf_token": token, "groups": "1"})
    assert none.status == 400 and "请至少勾选一个区域" in without_tags(await none.text())

    warden = demo.wardens["G0201"]
    await grant(db, warden, Role.ADMIN, "G0201")
    other, _, other_token = await admin_console(start_app, make_config, db, warden)
    outside = await other.post(
        push, data={"csrf_token": other_token, "regions": "G0101", "individuals": "1"}
    )
    assert outside.status == 403 and "不在您的管辖范围内" in without_tags(await outside.text())


async def test_review_queue_by_count_attach_create_and_dismiss(make_config, start_app, demo, db):
    client, _, token = await admin_console(start_app, make_config, db, demo.admin_id)
    a, b, c, d = demo.resident_ids[:4]
    for person in (a, b, c):
        await say(client, person, "这是真的吗 " + UNKNOWN_POST)
    await say(client, d, "这是真的吗 " + OTHER_UNKNOWN_POST)
    await say(client, d, "这是真的吗 隔壁楼有人确诊了，整栋楼要消杀三天")
    big, small, tiny = await rows(db, items, order=items.c.id)

    page = await (await client.get(REVIEW)).text()
    assert page.index("直升机") < page.index("自来水")  # most askers first
    assert "3 人问过" in without_tags(page)

    form_page = await (await client.get(f"{REVIEW}/{big.id}/clarify")).text()
    assert "直升机" in form_page and 'name="publish" value="1" checked' in form_page
    assert await count(db, audit, audit.c.action == "console.rumors.review_item") == 1
    created = await client.post(
        f"{REVIEW}/{big.id}/clarify",
        data=form(
            token,
            {
                "claim": "周六晚直升机全城喷洒消毒药水",
                "verdict": "false",
                "explanation": "没有安排任何空中喷洒消毒作业。",
                "source_name": "区应急管理局",
            },
            publish="1",
        ),
    )
    assert "已通知 3 位问过的居民" in without_tags(await created.text())
    notified = await rows(db, outbox, outbox.c.ref_type == "rumor")
    assert {r.person_id for r in notified} == {a, b, c}

    await client.post(KB, data=form(token, LIQUOR, publish="1"))
    liquor = next(r for r in await rows(db, clarifications) if r.claim == LIQUOR["claim"])
    attached = await client.post(
        f"{REVIEW}/{small.id}/attach", data={"csrf_token": token, "clarification_id": liquor.id}
    )
    assert "1 位问过的居民会收到答复" in without_tags(await attached.text())
    again = await client.post(
        f"{REVIEW}/{small.id}/attach", data={"csrf_token": token, "clarification_id": liquor.id}
    )
    assert "已经处理过了" in without_tags(await again.text())
    empty = await client.post(f"{REVIEW}/{tiny.id}/attach", data={"csrf_token": token})
    assert "请先选择要关联的辟谣信息" in without_tags(await empty.text())

    dismissed = await client.post(f"{REVIEW}/{tiny.id}/dismiss", data={"csrf_token": token})
    assert "已忽略" in without_tags(await dismissed.text())
    assert [i.status for i in await rows(db, items, order=items.c.id)] == [
        "attached",
        "attached",
        "dismissed",
    ]
    assert "没有待核实的消息" in without_tags(await (await client.get(REVIEW)).text())
    assert await count(db, audit, audit.c.action == "rumor.review.list") >= 2


async def test_bad_clarify_form_keeps_the_item_pending(make_config, start_app, demo, db):
    client, _, token = await admin_console(start_app, make_config, db, demo.admin_id)
    await say(client, demo.resident_ids[0], "这是真的吗 " + UNKNOWN_POST)
    [item] = await rows(db, items)

    page = await client.post(
        f"{REVIEW}/{item.id}/clarify",
        data=form(token, {"claim": "直升机喷洒", "verdict": "false", "source_name": "区应急局"}),
    )

    assert page.status == 400 and "请填写“解释说明”" in without_tags(await page.text())
    assert (await rows(db, items))[0].status == "pending"
    assert await count(db, clarifications) == 0


async def test_report_by_period_and_region_within_scope(make_config, start_app, demo, db):
    client, _, _ = await admin_console(start_app, make_config, db, demo.admin_id)
    [inside] = [p for p in demo.resident_ids if await _grid_of(db, p) == "G0101"][:1]
    await say(client, inside, "这是真的吗 " + UNKNOWN_POST)

    report = without_tags(await (await client.get(REPORT, params={"days": "1"})).text())
    assert "直升机" in report and "共 1 次询问" in report and "桃园社区 1" not in report
    street = without_tags(await (await client.get(REPORT, params={"region": "S01"})).text())
    assert "桃园社区 1" in street

    warden, _, _ = await admin_console(start_app, make_config, db, demo.wardens["G0202"])
    own = await warden.get(REPORT)
    assert own.status == 200 and "直升机" not in without_tags(await own.text())
    assert (await warden.get(REPORT, params={"region": "G0101"})).status == 403
    assert (await warden.get(REPORT, params={"days": "0"})).status == 400
    assert (await warden.get(KB)).status == 403
    assert (await warden.get(REVIEW)).status == 403
    actions = [r.detail.get("via") for r in await rows(db, audit, audit.c.action == "rumor.report")]
    assert actions.count("console") == 3


async def test_every_rumor_action_without_the_csrf_token_is_refused(
    make_config, start_app, demo, db
):
    client, _, token = await admin_console(start_app, make_config, db, demo.admin_id)
    await client.post(KB, data=form(token, LIQUOR))
    await client.post(KB, data=form(token, SUPERMARKET, publish="1"))
    draft, published = await rows(db, clarifications)
    await say(client, demo.resident_ids[0], "这是真的吗 " + UNKNOWN_POST)
    [item] = await rows(db, items)
    before = await count(db, audit)
    posts = [
        (KB, form(token, GARLIC)),
        (f"{KB}/{draft.id}/edit", form(token, {**LIQUOR, "claim": "改过的"})),
        (f"{KB}/{draft.id}/publish", {}),
        (f"{KB}/{published.id}/withdraw", {}),
        (f"{KB}/{published.id}/push", {"regions": "G0101", "individuals": "1"}),
        (f"{REVIEW}/{item.id}/attach", {"clarification_id": str(published.id)}),
        (f"{REVIEW}/{item.id}/clarify", form(token, GARLIC, publish="1")),
        (f"{REVIEW}/{item.id}/dismiss", {}),
    ]
    for path, data in posts:
        data = {k: v for k, v in data.items() if k != "csrf_token"}
        page = await client.post(path, data=data)
        assert page.status == 403, path
        assert "请刷新页面后重试" in without_tags(await page.text())
        wrong = await client.post(path, data={**data, "csrf_token": "x" * 43})
        assert wrong.status == 403, path

    assert [(r.status, r.claim) for r in await rows(db, clarifications)] == [
        ("draft", LIQUOR["claim"]),
        ("published", SUPERMARKET["claim"]),
    ]
    assert (await rows(db, items))[0].status == "pending"
    assert await count(db, outbox, outbox.c.ref_type == "notice") == 0
    assert await count(db, audit) == before


async def _grid_of(db, person_id):
    async with db.read() as conn:
        person = await repo.load_person(conn, person_id)
    return person.region.code if person and person.region else None
