"""Notices in chat, through the real app (simulator and bridge), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from bridge_client import message, signed
from conftest import BRIDGE_SECRET
from notices_support import (
    acks,
    audit,
    compose,
    count,
    deliver_all,
    notice_config,
    notice_rows,
    notices,
    outbox,
    outbox_of,
    people,
    people_in,
    say,
    scalar,
    sim_messages,
)
from sqlalchemy import insert, select, update

from flows.notices import queue_due_notices
from flows.texts import Texts
from storage import repo
from storage.checkin_models import Quarantine
from storage.models import ChatGroup, utcnow

groups = ChatGroup.__table__


async def nothing_stored(db) -> bool:
    return await count(db, notices) == 0 and await count(db, outbox) == 0


async def test_warden_sends_now_to_grid_groups_and_residents(make_config, start_app, demo, db):
    client, rt = await start_app(notice_config(make_config))
    warden = demo.wardens["G0101"]
    preview = await compose(client, warden, audience="g0101")
    async with db.read() as conn:
        sender = await repo.load_person(conn, warden)
    expected_people = await people_in(db, "G0101", exclude=warden)
    assert sender.name in preview and "桃园社区第1网格" in preview
    assert f"个人 {len(expected_people)} 人，群聊 1 个" in preview
    assert await nothing_stored(db)  # nothing is stored before the sender confirms

    reply = await say(client, warden, "确认")
    [notice] = await notice_rows(db)
    assert f"通知 {notice.code} 已发出" in reply
    assert notice.status == "sent" and notice.ack_required
    rows = await outbox_of(db, notice.id)
    assert {r.person_id for r in rows if r.person_id} == expected_people
    assert [r.target for r in rows if r.group_id] == ["grid-G0101"]
    assert len(rows) == len(expected_people) + 1
    assert all(r.key == f"notice:{notice.id}:p{r.person_id}" for r in rows if r.person_id)
    assert await count(db, audit, audit.c.action == "notice.create", audit.c.actor_id == warden)

    assert await deliver_all(rt) == len(rows)
    async with db.read() as conn:
        texts = [
            r.text
            for r in await conn.execute(
                select(sim_messages.c.text).where(sim_messages.c.outbox_key.isnot(None))
            )
        ]
    assert len(texts) == len(rows)
    assert all(sender.name in t and "停水" in t and notice.code in t for t in texts)


async def test_resident_cannot_send_notices(make_config, start_app, demo, db):
    client, _ = await start_app(notice_config(make_config))
    resident = demo.resident_ids[0]
    reply = await say(client, resident, "发通知")
    assert "只有网格员和管理员可以发通知" in reply
    reply = await say(client, resident, "明天停水")  # not taken as a notice text
    assert "停水" not in reply
    assert await nothing_stored(db)


async def test_warden_cannot_reach_outside_their_grid(make_config, start_app, demo, db):
    client, _ = await start_app(notice_config(make_config))
    warden = demo.wardens["G0101"]
    for outside in ("G0201", "C0101", "D01", "G0101 滨江社区第1网格"):
        await say(client, warden, "发通知")
        await say(client, warden, "封控区域调整通知")
        reply = await say(client, warden, outside)
        assert "不在您的管辖范围内，不能向那里发通知" in reply, reply
        assert "取消" in await say(client, warden, "取消")
    assert await nothing_stored(db)


async def test_bad_input_in_chat_is_refused_with_a_reason(make_config, start_app, demo, db):
    client, _ = await start_app(notice_config(make_config))
    warden = demo.wardens["G0101"]
    async with db.write() as conn:
        await repo.bind_identity(conn, warden, "bridge", "wx-warden")
    # An empty notice (a bridge message with no text, e.g. a sticker).
    raw, headers = signed(message("b1", "wx-warden", "发通知"), BRIDGE_SECRET)
    r = await client.post("/bridge/inbound", data=raw, headers=headers)
    assert "通知内容" in (await r.json())["replies"][0]["text"]
    raw, headers = signed(message("b2", "wx-warden", "   "), BRIDGE_SECRET)
    r = await client.post("/bridge/inbound", data=raw, headers=headers)
    assert "通知内容不能为空" in "".join(x["text"] for x in (await r.json())["replies"])
    assert "取消" in await say(client, warden, "取消")

    await say(client, warden, "发通知")
    await say(client, warden, "明天上午核酸检测")
    reply = await say(client, warden, "X9999")
    assert "找不到编码或名称为“X9999”的区域" in reply
    reply = await say(client, warden, "只发群 只发个人")
    assert "不能同时选" in reply
    assert "取消" in await say(client, warden, "取消")
    await say(client, warden, "发通知")
    await say(client, warden, "明天上午核酸检测")
    await say(client, warden, "G0101")
    await say(client, warden, "不需要")
    reply = await say(client, warden, "2020-01-01 09:00")
    assert "这个时间已经过去了" in reply
    reply = await say(client, warden, "下周吧")
    assert "没看懂这个时间" in reply
    reply = await say(client, warden, "取消")
    assert "已取消" in reply
    assert await nothing_stored(db)


async def test_scheduled_notice_goes_out_at_its_time_and_can_be_cancelled_before(
    make_config, start_app, demo, db
):
    client, _ = await start_app(notice_config(make_config))
    warden = demo.wardens["G0102"]
    config, texts = notice_config(make_config), Texts()
    preview = await compose(client, warden, audience="G0102", when="明天8点")
    assert "发送时间：" in preview and "8:00" in preview.replace("08:00", "8:00")
    reply = await say(client, warden, "确认")
    [notice] = await notice_rows(db)
    assert notice.status == "scheduled"
    assert f"取消通知 {notice.code}" in reply
    assert await count(db, outbox) == 0
    reply = await say(client, warden, "通知回执")
    assert f"{notice.code}「明天上午9点到11点停水" in reply and "定时发送" in reply

    assert await queue_due_notices(db, texts=texts, settings=config, now=utcnow()) == 0
    at = notice.send_at + timedelta(seconds=5)
    assert await queue_due_notices(db, texts=texts, settings=config, now=at) == 1
    rows = await outbox_of(db, notice.id)
    assert len(rows) == len(await people_in(db, "G0102", exclude=warden)) + 1
    assert {r.next_attempt_at for r in rows} == {at}
    # Nothing twice: the job running again (another scheduler) adds nothing.
    assert await queue_due_notices(db, texts=texts, settings=config, now=at) == 0
    assert len(await outbox_of(db, notice.id)) == len(rows)

    await compose(client, warden, audience="G0102", when="后天9点")
    await say(client, warden, "确认")
    second = (await notice_rows(db))[-1]
    reply = await say(client, warden, f"取消通知 {second.code.lower()}")
    assert f"定时通知 {second.code} 已取消" in reply
    later = second.send_at + timedelta(minutes=1)
    assert await queue_due_notices(db, texts=texts, settings=config, now=later) == 0
    assert await outbox_of(db, second.id) == []
    reply = await say(client, warden, f"取消通知 {notice.code}")
    assert "已经开始发送，不能再修改或取消" in reply
    other = demo.wardens["G0201"]
    reply = await say(client, other, f"取消通知 {second.code}")
    assert "没有找到您能管理的通知" in reply
    assert await count(db, audit, audit.c.action == "notice.cancel") == 1


async def _send_now(client, db, sender: int, audience: str, *, ack: str = "需要", text=None):
    kwargs = {"text": text} if text else {}
    await compose(client, sender, audience=audience, ack=ack, **kwargs)
    await say(client, sender, "确认")
    return (await notice_rows(db))[-1]


async def test_person_acknowledges_by_reply_and_by_code(make_config, start_app, demo, db):
    client, rt = await start_app(notice_config(make_config))
    warden = demo.wardens["G0101"]
    first = await _send_now(client, db, warden, "G0101", text="第一条：周三停电")
    second = await _send_now(client, db, warden, "G0101", text="第二条：周四停水")
    plain = await _send_now(client, db, warden, "G0101", ack="不需要", text="第三条：天气转凉")
    other = await _send_now(client, db, demo.wardens["G0201"], "G0201", text="别的网格")
    await deliver_all(rt)
    resident = sorted(await people_in(db, "G0101", exclude=warden))[0]

    reply = await say(client, resident, "收到")
    assert f"已确认收到通知 {second.code}" in reply  # the newest one waiting
    reply = await say(client, resident, f"收到 {first.code}")
    assert f"已确认收到通知 {first.code}" in reply
    reply = await say(client, resident, first.code)
    assert "已经确认过了" in reply
    reply = await say(client, resident, "收到")
    assert "目前没有需要您确认的通知" in reply
    reply = await say(client, resident, plain.code)
    assert "不需要确认" in reply
    reply = await say(client, resident, other.code)
    assert "没有找到发给您的编号" in reply
    async with db.read() as conn:
        rows = list(await conn.execute(select(acks).order_by(acks.c.id)))
    assert [(r.notice_id, r.person_id, r.via) for r in rows] == [
        (second.id, resident, "reply"),
        (first.id, resident, "code"),
    ]


async def test_group_member_acknowledges_for_the_group(make_config, start_app, demo, db):
    client, rt = await start_app(notice_config(make_config))
    warden = demo.wardens["G0101"]
    notice = await _send_now(client, db, warden, "G0101")
    await deliver_all(rt)
    members = sorted(await people_in(db, "G0101", exclude=warden))

    reply = await say(client, members[0], "收到", chat="grid-G0101")
    assert f"已代表本群确认收到通知 {notice.code}" in reply
    reply = await say(client, members[1], "收到了", chat="grid-G0101")
    assert reply == ""  # one thank-you per group, no chatter
    r = await client.post(
        "/sim/api/send",
        json={"address": "sim-new-guest", "name": "访客", "text": "收到", "chat": "grid-G0102"},
    )
    assert (await r.json())["replies"] == []  # no notice went to that group

    async with db.read() as conn:
        rows = list(await conn.execute(select(acks).order_by(acks.c.id)))
        group_id = (
            await conn.execute(select(groups.c.id).where(groups.c.external_id == "grid-G0101"))
        ).scalar_one()
    group_acks = [r for r in rows if r.group_id is not None]
    assert [(r.group_id, r.member_person_id) for r in group_acks] == [(group_id, members[0])]
    assert {r.person_id for r in rows if r.person_id} == {members[0], members[1]}

    reply = await say(client, warden, "通知回执")
    assert "群聊：送达 1/1，已确认 1，未确认 0" in reply
    assert f"已确认 2，未确认 {len(members) - 2}" in reply


async def test_unregistered_group_member_can_acknowledge(make_config, start_app, demo, db):
    client, rt = await start_app(notice_config(make_config))
    notice = await _send_now(client, db, demo.wardens["G0101"], "G0101 只发群")
    await deliver_all(rt)
    r = await client.post(
        "/sim/api/send",
        json={"address": "sim-new-7f", "name": "楼长老李", "text": "收到", "chat": "grid-G0101"},
    )
    assert f"楼长老李 已代表本群确认收到通知 {notice.code}" in (await r.json())["replies"][0]
    ack = await scalar(db, select(acks.c.member).where(acks.c.notice_id == notice.id))
    assert ack == "楼长老李"


async def test_reminder_goes_to_non_acknowledgers_only(make_config, start_app, demo, db):
    client, rt = await start_app(notice_config(make_config))
    warden = demo.wardens["G0101"]
    notice = await _send_now(client, db, warden, "G0101")
    await deliver_all(rt)
    members = sorted(await people_in(db, "G0101", exclude=warden))
    await say(client, members[0], "收到")
    await say(client, members[1], notice.code)

    reply = await say(client, warden, f"提醒未确认 {notice.code}")
    assert f"已再次提醒通知 {notice.code} 还没确认的 {len(members) - 2 + 1} 个对象" in reply
    reminders = await outbox_of(db, notice.id, "notice+")
    assert {r.person_id for r in reminders if r.person_id} == set(members[2:])
    assert [r.target for r in reminders if r.group_id] == ["grid-G0101"]
    assert all(r.key.startswith(f"notice:{notice.id}:r1:") for r in reminders)
    assert all("【提醒】" in r.payload["text"] for r in reminders)

    reply = await say(client, warden, f"再次提醒 {notice.code}")
    assert "刚提醒过" in reply
    assert len(await outbox_of(db, notice.id, "notice+")) == len(reminders)
    assert await deliver_all(rt) == len(reminders)
    # A reminded resident acknowledges the original notice.
    reply = await say(client, members[2], "收到")
    assert f"已确认收到通知 {notice.code}" in reply
    assert await count(db, audit, audit.c.action == "notice.remind") == 1

    plain = await _send_now(client, db, warden, "G0101", ack="不需要")
    reply = await say(client, warden, f"提醒未确认 {plain.code}")
    assert "没有要求确认" in reply


async def test_long_notice_is_split_for_a_channel_limit(make_config, start_app, demo, db):
    client, _ = await start_app(notice_config(make_config, max_length={"sim": 80}))
    warden = demo.wardens["G0101"]
    text = "各位居民：明天上午八点起小区开展全员核酸检测，请带好身份证按楼栋顺序排队。" * 3
    notice = await _send_now(client, db, warden, "G0101", text=text)
    first_parts = await outbox_of(db, notice.id)
    later_parts = await outbox_of(db, notice.id, "notice+")
    assert later_parts and len(later_parts) % len(first_parts) == 0
    for row in first_parts + later_parts:
        assert len(row.payload["text"]) <= 80
    assert first_parts[0].payload["text"].startswith("（1/")
    assert min(r.next_attempt_at for r in later_parts) > first_parts[0].next_attempt_at
    # The receipt counts recipients, not parts.
    reply = await say(client, warden, "通知回执")
    assert f"个人：送达 0/{len(first_parts) - 1}" in reply


async def test_quiet_hours_hold_non_urgent_notices(make_config, start_app, demo, db):
    now_local = datetime.now(notice_config(make_config).tz)
    start = (now_local - timedelta(hours=1)).strftime("%H:%M")
    end_local = (now_local + timedelta(hours=1)).replace(second=0, microsecond=0)
    config = make_config(
        notices={
            "quiet_hours": True,
            "quiet_start": start,
            "quiet_end": end_local.strftime("%H:%M"),
        }
    )
    client, rt = await start_app(config)
    warden = demo.wardens["G0101"]
    preview = await compose(client, warden, audience="G0101")
    assert "免打扰时段" in preview
    reply = await say(client, warden, "确认")
    assert "免打扰时段过后" in reply
    held = (await notice_rows(db))[-1]
    assert {r.next_attempt_at for r in await outbox_of(db, held.id)} == {end_local}
    assert await rt.delivery.run_once() == 0

    preview = await compose(client, warden, audience="G0101", when="现在 紧急")
    assert "【紧急通知】" in preview
    await say(client, warden, "确认")
    urgent = (await notice_rows(db))[-1]
    assert urgent.urgent
    assert await deliver_all(rt) == len(await outbox_of(db, urgent.id))


async def test_admin_reaches_the_whole_district(make_config, start_app, demo, db):
    client, _ = await start_app(notice_config(make_config))
    admin = demo.admin_id
    preview = await compose(client, admin, audience="全部", ack="不需要")
    assert "江岸区" in preview and "（管理员）" in preview
    await say(client, admin, "确认")
    [notice] = await notice_rows(db)
    rows = await outbox_of(db, notice.id)
    assert {r.person_id for r in rows if r.person_id} == await people_in(db, "D01", exclude=admin)
    assert len([r for r in rows if r.group_id]) == len(demo.grids)


async def test_notice_to_quarantined_households_only(make_config, start_app, demo, db):
    client, _ = await start_app(notice_config(make_config))
    warden = demo.wardens["G0101"]
    quarantined = sorted(await people_in(db, "G0101", exclude=warden))[-1]
    today = datetime.now(notice_config(make_config).tz).date()
    async with db.write() as conn:
        household = (
            await conn.execute(select(people.c.household_id).where(people.c.id == quarantined))
        ).scalar_one()
        await conn.execute(
            insert(Quarantine.__table__).values(
                person_id=quarantined,
                kind="home",
                start_day=today - timedelta(days=2),
                end_day=today + timedelta(days=12),
                status="active",
                created_at=utcnow(),
            )
        )
        housemates = {
            r.id
            for r in await conn.execute(
                select(people.c.id).where(people.c.household_id == household)
            )
        }
    preview = await compose(client, warden, audience="G0101 隔离户")
    assert f"个人 {len(housemates)} 人" in preview and "隔离户全家" in preview
    await say(client, warden, "确认")
    notice = (await notice_rows(db))[-1]
    rows = await outbox_of(db, notice.id)
    assert {r.person_id for r in rows} == housemates

    await compose(client, warden, audience="G0101 隔离人员")
    await say(client, warden, "确认")
    rows = await outbox_of(db, (await notice_rows(db))[-1].id)
    assert [r.person_id for r in rows] == [quarantined]
    assert isinstance(today, date)


async def test_large_send_from_chat_is_queued_by_the_job(make_config, start_app, demo, db):
    config = notice_config(make_config, inline_max_targets=3)
    client, _ = await start_app(config)
    warden = demo.wardens["G0101"]
    await compose(client, warden, audience="G0101")
    reply = await say(client, warden, "确认")
    assert "人数较多" in reply
    [notice] = await notice_rows(db)
    assert await outbox_of(db, notice.id) == []
    assert await queue_due_notices(db, texts=Texts(), settings=config, now=utcnow()) == 1
    assert (
        len(await outbox_of(db, notice.id)) == len(await people_in(db, "G0101", exclude=warden)) + 1
    )


async def test_opted_out_residents_are_not_reached(make_config, start_app, demo, db):
    client, _ = await start_app(notice_config(make_config))
    warden = demo.wardens["G0101"]
    gone = sorted(await people_in(db, "G0101", exclude=warden))[0]
    async with db.write() as conn:
        await conn.execute(update(people).where(people.c.id == gone).values(opted_out=True))
    notice = await _send_now(client, db, warden, "G0101")
    assert gone not in {r.person_id for r in await outbox_of(db, notice.id)}
