"""The console's notices pages through the real app on SQLite and PostgreSQL: compose (scope,
acknowledgement, now or scheduled), the list with receipt counts, one notice with each
recipient's status, reminding, cancelling; bad forms, scope and CSRF refusals."""

from __future__ import annotations

from datetime import timedelta

from console_support import logged_in, start_console, without_tags
from notices_support import (
    NO_QUIET,
    audit,
    count,
    deliver_all,
    notice_rows,
    notices,
    outbox_of,
    people,
    people_in,
    say,
)

from storage.models import utcnow

NEW = "/console/notices/new"
SEND = "/console/notices"


async def staff_console(start_app, make_config, db, person_id, **console):
    client, rt = await start_console(
        start_app, lambda **s: make_config(notices=NO_QUIET, **s), **console
    )
    token = await logged_in(client, db, person_id)
    return client, rt, token


async def test_absurd_notice_ids_and_paging_numbers_are_refused_not_a_500(
    make_config, start_app, demo, db
):
    # Thousands of digits made int() raise: a 500 page instead of "not found" / "bad request".
    client, _, _ = await staff_console(start_app, make_config, db, demo.wardens["G0101"])
    huge = "9" * 5000
    assert (await client.get(f"/console/notices/{huge}")).status == 404
    assert (await client.get(f"/console/notices?before={huge}")).status == 400


def compose(token: str, text: str, *regions: str, **fields: str) -> list[tuple[str, str]]:
    """The compose form as a browser posts it (ticked boxes only)."""
    data = [("csrf_token", token), ("text", text), ("groups", "1"), ("individuals", "1")]
    data += [("regions", code) for code in regions]
    data += list(fields.items())
    return data


async def test_compose_offers_only_the_regions_in_scope(make_config, start_app, demo, db):
    client, _, _ = await staff_console(start_app, make_config, db, demo.wardens["G0101"])

    page = await client.get(NEW)

    html = await page.text()
    assert page.status == 200
    assert 'value="G0101" checked' in html
    assert 'value="G0102"' not in html and 'value="D01"' not in html
    assert "需要居民回复“收到”确认" in html and 'name="send_at"' in html


async def test_send_now_queues_and_the_list_shows_receipt_counts(make_config, start_app, demo, db):
    client, rt, token = await staff_console(start_app, make_config, db, demo.admin_id)

    sent = await client.post(
        SEND,
        data=compose(token, "明天上午9点东门核酸", "G0101", ack_required="1"),
        allow_redirects=False,
    )

    assert sent.status == 302, await sent.text()
    [notice] = await notice_rows(db)
    assert sent.headers["Location"] == f"/console/notices/{notice.id}"
    assert notice.ack_required and notice.audience["region_codes"] == ["G0101"]
    residents = await people_in(db, "G0101", exclude=demo.admin_id)
    rows = await outbox_of(db, notice.id)
    assert {r.person_id for r in rows if r.person_id} == residents
    assert len([r for r in rows if r.group_id]) == 1
    [created] = await _audit_rows(db, "notice.create")
    assert created.detail["via"] == "console"

    await deliver_all(rt)
    first = sorted(residents)[0]
    assert "谢谢" in await say(client, first, "收到")
    listing = "".join(without_tags(await (await client.get(SEND)).text()).split())
    assert "已开始发送" in listing  # the flash after sending
    assert notice.code in listing
    assert f"居民{len(residents)}：送达{len(residents)}，确认1" in listing
    page = "".join(
        without_tags(await (await client.get(f"/console/notices/{notice.id}")).text()).split()
    )
    assert f"已确认1未确认{len(residents) - 1}" in page
    assert await count(db, audit, audit.c.action == "console.notices.list") == 1
    assert await count(db, audit, audit.c.action == "console.notices.recipients") == 1


async def test_recipients_are_paged_and_filtered_to_non_acknowledgers(
    make_config, start_app, demo, db
):
    client, rt, token = await staff_console(start_app, make_config, db, demo.admin_id, page_size=5)
    await client.post(SEND, data=compose(token, "请核对家庭信息", "G0101", ack_required="1"))
    [notice] = await notice_rows(db)
    await deliver_all(rt)
    residents = sorted(await people_in(db, "G0101", exclude=demo.admin_id))
    await say(client, residents[0], "收到")
    url = f"/console/notices/{notice.id}"

    first = await (await client.get(url)).text()
    second = await (await client.get(url, params={"after": str(residents[4])})).text()
    unacked = await (await client.get(url, params={"unacked": "1"})).text()

    assert first.count('<td class="name">') == 5 and "下一页" in first
    assert second.count('<td class="name">') == min(5, len(residents) - 5)
    acked_name = (await names_of(db, [residents[0]]))[0]
    assert f'<td class="name">{acked_name}</td>' in first
    assert f'<td class="name">{acked_name}</td>' not in unacked
    assert unacked.count('<td class="name">') == 5


async def test_scheduled_notice_can_be_cancelled_once(make_config, start_app, demo, db):
    client, _, token = await staff_console(start_app, make_config, db, demo.wardens["G0101"])
    later = (utcnow() + timedelta(days=1)).astimezone(make_config().tz)

    sent = await client.post(
        SEND,
        data=compose(
            token, "周六停水", "G0101", when="later", send_at=later.strftime("%Y-%m-%dT%H:%M")
        ),
        allow_redirects=False,
    )

    assert sent.status == 302
    [notice] = await notice_rows(db)
    assert notice.status == "scheduled" and await outbox_of(db, notice.id) == []
    page = await client.get(sent.headers["Location"])
    assert "已定时" in without_tags(await page.text())
    cancel = f"/console/notices/{notice.id}/cancel"
    done = await client.post(cancel, data={"csrf_token": token}, allow_redirects=False)
    assert done.status == 302
    [notice] = await notice_rows(db)
    assert notice.status == "cancelled"
    again = await client.post(cancel, data={"csrf_token": token})
    assert "已经取消，不能再修改或取消" in without_tags(await again.text())
    assert await count(db, audit, audit.c.action == "notice.cancel") == 1


async def test_resend_reminds_only_those_who_have_not_acknowledged(
    make_config, start_app, demo, db
):
    client, rt, token = await staff_console(start_app, make_config, db, demo.admin_id)
    await client.post(SEND, data=compose(token, "请登记疫苗接种", "G0102", ack_required="1"))
    [notice] = await notice_rows(db)
    await deliver_all(rt)
    residents = sorted(await people_in(db, "G0102", exclude=demo.admin_id))
    await say(client, residents[0], "收到")

    page = await client.post(f"/console/notices/{notice.id}/resend", data={"csrf_token": token})

    assert "已再次提醒" in without_tags(await page.text())
    reminded = await outbox_of(db, notice.id, "notice+")
    assert {r.person_id for r in reminded if r.person_id} == set(residents[1:])
    again = await client.post(f"/console/notices/{notice.id}/resend", data={"csrf_token": token})
    assert "刚提醒过" in without_tags(await again.text())


async def test_bad_forms_come_back_with_the_reason_and_store_nothing(
    make_config, start_app, demo, db
):
    client, _, token = await staff_console(start_app, make_config, db, demo.wardens["G0101"])
    past = (utcnow() - timedelta(hours=1)).astimezone(make_config().tz)
    cases = [
        (compose(token, "   ", "G0101"), "通知内容不能为空"),
        (
            compose(token, "通知", "G0101", when="later", send_at=past.strftime("%Y-%m-%dT%H:%M")),
            "这个时间已经过去了",
        ),
        (compose(token, "通知", "G0101", when="later", send_at="下礼拜"), "没看懂这个发送时间"),
        (compose(token, "通知"), "请至少勾选一个区域"),
        (compose(token, "通知", more_regions="X9999"), "找不到编码或名称为“X9999”的区域"),
        ([("csrf_token", token), ("text", "通知"), ("regions", "G0101")], "至少要选一项"),
        (compose(token, "长" * 5000, "G0101"), "超过了"),
    ]
    for form, reason in cases:
        page = await client.post(SEND, data=form)
        html = await page.text()
        assert page.status == 400, reason
        assert reason in without_tags(html)
        assert 'name="text"' in html  # the form again, as typed
    assert await count(db, notices) == 0


async def test_a_region_outside_the_scope_is_refused_with_403(make_config, start_app, demo, db):
    client, _, token = await staff_console(start_app, make_config, db, demo.wardens["G0101"])

    page = await client.post(SEND, data=compose(token, "通知", "G0101", "G0102"))

    assert page.status == 403
    assert "不在您的管辖范围内" in without_tags(await page.text())
    assert await count(db, notices) == 0


async def test_another_wardens_notice_is_not_shown(make_config, start_app, demo, db):
    client, _, token = await staff_console(start_app, make_config, db, demo.wardens["G0101"])
    await client.post(SEND, data=compose(token, "本网格通知", "G0101"))
    [notice] = await notice_rows(db)
    other, _ = await start_console(start_app, lambda **s: make_config(notices=NO_QUIET, **s))
    other_token = await logged_in(other, db, demo.wardens["G0102"])

    page = await other.get(f"/console/notices/{notice.id}")
    cancel = await other.post(
        f"/console/notices/{notice.id}/cancel", data={"csrf_token": other_token}
    )
    listing = await (await other.get(SEND)).text()

    assert page.status == 404 and cancel.status == 404
    assert notice.code not in listing


async def test_doctors_have_no_notices_pages(make_config, start_app, demo, db):
    client, _, _ = await staff_console(start_app, make_config, db, demo.doctor_id)
    assert (await client.get(SEND)).status == 403
    assert (await client.get(NEW)).status == 403


async def test_forms_without_the_csrf_token_are_refused(make_config, start_app, demo, db):
    client, _, token = await staff_console(start_app, make_config, db, demo.admin_id)
    form = [pair for pair in compose(token, "通知", "G0101") if pair[0] != "csrf_token"]

    refused = await client.post(SEND, data=form)
    wrong = await client.post(SEND, data=[("csrf_token", "x" * 43), *form])

    assert refused.status == 403 and wrong.status == 403
    assert await count(db, notices) == 0
    await client.post(SEND, data=compose(token, "通知", "G0101", when="later", send_at="明天9点"))
    [notice] = await notice_rows(db)
    cancel = await client.post(f"/console/notices/{notice.id}/cancel", data={})
    resend = await client.post(f"/console/notices/{notice.id}/resend", data={})
    assert cancel.status == 403 and resend.status == 403
    assert (await notice_rows(db))[0].status == "scheduled"
    assert await outbox_of(db, notice.id, "notice+") == []


async def _audit_rows(db, action):
    async with db.read() as conn:
        return list(await conn.execute(audit.select().where(audit.c.action == action)))


async def names_of(db, person_ids):
    async with db.read() as conn:
        rows = await conn.execute(people.select().where(people.c.id.in_(person_ids)))
        by_id = {r.id: r.name for r in rows}
    return [by_id[pid] for pid in person_ids]
