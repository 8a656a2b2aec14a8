"""Residents' requests (诉求) through the real app, on SQLite and PostgreSQL: intake in chat,
assignment, handling, volunteers, the resident's verdict, deadlines and escalation up to the
city, supervision, scope, the API, and the sweep run by two schedulers at once."""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import timedelta

from sqlalchemy import func, select

from bot.api import PREFIX, create_token
from flows.messages import Inbound
from flows.requests import Desk, sweep_deadlines
from flows.texts import Texts
from storage import repo
from storage import requests_repo as rq
from storage.db import Database
from storage.models import OutboxMessage, Role, SimMessage, utcnow
from storage.requests_models import RequestClock, RequestEvent, ResidentRequest

requests_t = ResidentRequest.__table__
clocks_t = RequestClock.__table__
events_t = RequestEvent.__table__
sim_t = SimMessage.__table__
outbox_t = OutboxMessage.__table__
NUMBER = re.compile(r"Q\d{8}-\d{4}")


# -- helpers -------------------------------------------------------------------------------


async def say(client, person_id: int, text: str) -> str:
    r = await client.post("/sim/api/send", json={"address": f"sim-{person_id}", "text": text})
    assert r.status == 200, await r.text()
    return "\n".join((await r.json())["replies"])


async def pushed(rt, person_id: int) -> list[str]:
    """Everything the outbox delivered to a person so far (delivering what is due first)."""
    while await rt.delivery.run_once():
        pass
    async with rt.db.read() as conn:
        rows = await conn.execute(
            select(sim_t.c.text)
            .where(sim_t.c.target == f"sim-{person_id}", sim_t.c.outbox_key.is_not(None))
            .order_by(sim_t.c.id)
        )
        return [r.text for r in rows]


async def request_row(db, number: str):
    """The request as the application reads it (with its clock's level, handler, ...)."""
    async with db.read() as conn:
        return await rq.get_request(conn, number=number)


async def event_kinds(db, number: str) -> list[str]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(events_t.c.kind)
            .join(requests_t, requests_t.c.id == events_t.c.request_id)
            .where(requests_t.c.number == number)
            .order_by(events_t.c.id)
        )
        return [r.kind for r in rows]


async def count(db, table) -> int:
    async with db.read() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar()


async def file_in_chat(client, resident: int, *answers: str) -> str:
    """Run the intake with the given answers; returns the request number."""
    await say(client, resident, "求助")
    reply = ""
    for answer in answers:
        reply = await say(client, resident, answer)
    match = NUMBER.search(reply)
    assert match, reply
    return match.group(0)


async def file_direct(
    db, resident_id: int, *, now=None, category="supplies", urgency="urgent", config=None
) -> str:
    """File a request through the desk at a chosen time (to put deadlines in the past)."""
    settings = config.requests if config is not None else _default_requests_settings()
    async with db.write() as conn:
        person = await repo.load_person(conn, resident_id)
        desk = Desk(conn, settings, _tz(), now or utcnow(), row_lock=not db.is_sqlite)
        req = await desk.file(
            person,
            category=category,
            urgency=urgency,
            description="家里没米了",
            items="大米",
            quantity="10斤",
        )
    return req.number


def _default_requests_settings():
    from bot.config import RequestsConfig

    return RequestsConfig()


def _tz():
    from zoneinfo import ZoneInfo

    return ZoneInfo("Asia/Shanghai")


async def resident_in(db, demo, grid_code: str, n: int = 0) -> int:
    """The ``n``-th demo resident living in grid ``grid_code``."""
    grid = next(g for g in demo.grids if g.code == grid_code)
    async with db.read() as conn:
        ids = (
            (
                await conn.execute(
                    select(repo.people.c.id)
                    .where(
                        repo.people.c.region_id == grid.id, repo.people.c.id.in_(demo.resident_ids)
                    )
                    .order_by(repo.people.c.id)
                )
            )
            .scalars()
            .all()
        )
    return ids[n]


async def grant(db, person_id: int, role: str, code: str) -> None:
    async with db.write() as conn:
        region = await repo.get_region_by_code(conn, code)
        await repo.grant_role(conn, person_id, role, region.id)


async def new_staff(db, name: str, role: str, code: str) -> int:
    async with db.write() as conn:
        region = await repo.get_region_by_code(conn, code)
        person_id = await repo.create_person(
            conn, name=name, region_id=region.id, phone="13900000000"
        )
        await repo.grant_role(conn, person_id, role, region.id)
        await repo.bind_identity(conn, person_id, "sim", f"sim-{person_id}", name)
    return person_id


# -- intake --------------------------------------------------------------------------------


async def test_intake_in_chat_files_and_assigns_the_grid_warden(make_config, start_app, demo, db):
    client, rt = await start_app(make_config())
    resident = await resident_in(db, demo, "G0101")
    warden = demo.wardens["G0101"]
    reply = await say(client, resident, "求助")
    assert "哪一类" in reply and "1. 物资" in reply
    assert "您的情况" in await say(client, resident, "1")
    assert "哪些物资" in await say(client, resident, "老人家里没米没油了")
    assert "多少" in await say(client, resident, "大米、食用油")
    assert "紧急" in await say(client, resident, "大米10斤，油1桶")
    reply = await say(client, resident, "紧急")
    number = NUMBER.search(reply).group(0)
    assert "网格负责人" in reply

    row = await request_row(db, number)
    assert (row.category, row.urgency, row.status, row.level) == (
        "supplies",
        "urgent",
        "pending",
        "grid",
    )
    assert (row.items, row.quantity) == ("大米、食用油", "大米10斤，油1桶")
    assert row.handler_id == warden
    assert row.accept_due_at - row.created_at == timedelta(minutes=60)
    assert row.sla_due_at == row.escalate_at == row.accept_due_at
    assert await event_kinds(db, number) == ["created", "assigned"]

    alert = [t for t in await pushed(rt, warden) if number in t]
    assert alert and "受理" in alert[0] and "老人家里没米没油了" in alert[0]

    mine = await say(client, resident, "我的诉求")
    assert number in mine and "待受理" in mine


async def test_unknown_category_is_asked_again_and_empty_description_refused(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    resident = await resident_in(db, demo, "G0102")
    await say(client, resident, "我要反映")
    reply = await say(client, resident, "哈哈哈")
    assert "不在选项里" in reply and "哪一类" in reply
    assert "您的情况" in await say(client, resident, "就医")
    reply = await say(client, resident, "。。。？")
    assert "不能是空的" in reply
    assert await count(db, requests_t) == 0
    assert "紧急" in await say(client, resident, "需要配降压药，家里只剩一天的量")
    reply = await say(client, resident, "1")
    number = NUMBER.search(reply).group(0)
    row = await request_row(db, number)
    assert (row.category, row.urgency) == ("medical", "urgent")
    # medical + urgent: accept within 30 minutes
    assert row.accept_due_at - row.created_at == timedelta(minutes=30)
    assert row.description == "需要配降压药，家里只剩一天的量"


async def test_empty_description_over_the_bridge_and_giving_up_stores_nothing(
    make_config, start_app, demo, db
):
    from bridge_client import message, signed
    from conftest import BRIDGE_SECRET

    client, _ = await start_app(make_config())

    async def post(mid: str, text: str) -> str:
        raw, headers = signed(message(mid, "wx-req", text), BRIDGE_SECRET)
        r = await client.post("/bridge/inbound", data=raw, headers=headers)
        return "".join(x["text"] for x in (await r.json())["replies"])

    await post("b1", "你好")
    await post("b2", "G0101")
    assert "登记好了" in await post("b3", "李四")
    assert "哪一类" in await post("b4", "求助")
    await post("b5", "3")
    assert "不能是空的" in await post("b6", "   ")
    assert "不能是空的" in await post("b7", "")
    reply = await post("b8", "……")
    assert "没能完成" in reply
    assert await count(db, requests_t) == 0


async def test_photo_and_location_are_attached_and_menu_click_starts(
    make_config, start_app, demo, db
):
    _, rt = await start_app(make_config())
    resident = await resident_in(db, demo, "G0103")
    address = f"sim-{resident}"

    async def send(kind="text", text="", **extra):
        inbound = Inbound(
            channel="sim",
            sender_id=address,
            text=text,
            dedupe_key=secrets.token_hex(6),
            kind=kind,
            extra=extra,
            event="click" if kind == "event" else None,
            event_key=extra.pop("key", None) if kind == "event" else None,
        )
        return "\n".join(o.text for o in await rt.dispatcher.handle(inbound))

    assert "哪一类" in await send("event", key="REQUEST")
    await send(text="3")
    reply = await send("image", media_id="m-1", pic_url="https://img.invalid/1.jpg")
    assert "照片收到了" in reply and "您的情况" in reply
    reply = await send(
        "location", text="江城市桃园小区", latitude=30.5, longitude=114.3, label="江城市桃园小区"
    )
    assert "位置收到了" in reply
    await send(text="楼道灯坏了一周")
    number = NUMBER.search(await send(text="一般")).group(0)
    row = await request_row(db, number)
    assert row.category == "daily"
    assert [a["kind"] for a in row.attachments] == ["image", "location"]
    assert row.attachments[0]["media_id"] == "m-1"
    assert row.attachments[1]["label"] == "江城市桃园小区"


# -- handling, verdict, rating -------------------------------------------------------------


async def test_accept_note_resolve_confirm_and_rate(make_config, start_app, demo, db):
    client, rt = await start_app(make_config())
    resident = await resident_in(db, demo, "G0101")
    warden = demo.wardens["G0101"]
    number = await file_in_chat(client, resident, "2", "想配一些感冒药", "一般")

    todo = await say(client, warden, "待办")
    assert number in todo and "待受理" in todo
    assert "已受理" in await say(client, warden, f"{number} 受理")
    assert "记下备注" in await say(client, warden, f"{number.lower()} 备注 已电话联系居民")
    reply = await say(client, warden, f"{number} 办结：药已送到家门口")
    assert "已办结" in reply
    detail = await say(client, warden, number)
    assert "已电话联系居民" in detail and "办结" in detail

    to_resident = await pushed(rt, resident)
    assert any("已受理" in t and number in t for t in to_resident)
    assert any("药已送到家门口" in t and "满意" in t for t in to_resident)

    reply = await say(client, resident, "满意")
    assert "已关闭" in reply and "1到5" in reply
    assert "1到5" in await say(client, resident, "六")
    assert "5分" in await say(client, resident, "5分")
    row = await request_row(db, number)
    assert (row.status, row.satisfied, row.rating) == ("closed", True, 5)
    assert row.reply == "药已送到家门口"
    assert await event_kinds(db, number) == [
        "created",
        "assigned",
        "accepted",
        "note",
        "resolved",
        "confirmed",
        "rated",
    ]


async def test_verdict_and_rating_with_a_sentence_end_are_understood(
    make_config, start_app, demo, db
):
    """Residents type "满意！" and "5分。" (and speech recognition, which the voice path treats as
    typed text, ends sentences with "。"), as the category and urgency answers already may."""
    client, _ = await start_app(make_config())
    resident = await resident_in(db, demo, "G0101")
    warden = demo.wardens["G0101"]
    number = await file_in_chat(client, resident, "2", "想配一些感冒药", "一般。")
    await say(client, warden, f"{number} 受理")
    await say(client, warden, f"{number} 办结：药已送到家门口")
    reply = await say(client, resident, "满意！")
    assert "已关闭" in reply and "1到5" in reply
    assert "5分" in await say(client, resident, "5分。")
    row = await request_row(db, number)
    assert (row.status, row.satisfied, row.rating) == ("closed", True, 5)


async def test_resolving_a_closed_or_resolved_request_is_refused_with_the_reason(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    resident = await resident_in(db, demo, "G0102")
    warden = demo.wardens["G0102"]
    number = await file_in_chat(client, resident, "5", "小区门口加个消毒点", "2")
    assert "答复" in await say(client, warden, f"{number} 办结")  # no reply text: asked for one
    assert (await request_row(db, number)).status == "pending"
    await say(client, warden, f"{number} 办结 已反馈物业，本周增设")
    reply = await say(client, warden, f"{number} 办结 再办一次")
    assert "等待居民确认" in reply and "不能再办结" in reply
    await say(client, resident, "满意")
    reply = await say(client, warden, f"{number} 办结 再办一次")
    assert "关闭" in reply and "居民已确认满意" in reply and "不能再办结" in reply
    reply = await say(client, warden, f"{number} 受理")
    assert "不能再受理" in reply
    row = await request_row(db, number)
    assert (row.status, row.reply) == ("closed", "已反馈物业，本周增设")
    assert (await event_kinds(db, number)).count("resolved") == 1


async def test_reopen_after_resolve_and_after_unsatisfied(make_config, start_app, demo, db):
    client, rt = await start_app(make_config())
    resident = await resident_in(db, demo, "G0201")
    warden = demo.wardens["G0201"]
    number = await file_in_chat(client, resident, "3", "水管漏水", "1")
    await say(client, warden, f"{number} 受理")
    await say(client, warden, f"{number} 办结 已联系维修")
    reply = await say(client, resident, "重新处理")
    assert "重新处理" in reply
    row = await request_row(db, number)
    assert (row.status, row.reopen_count, row.handler_id) == ("accepted", 1, warden)
    assert row.sla_due_at == row.escalate_at == row.resolve_due_at
    assert any("重新处理" in t and number in t for t in await pushed(rt, warden))

    await say(client, warden, f"{number} 办结 已换新水管")
    reply = await say(client, resident, "不满意")
    assert "不满意已记录" in reply
    assert "谢谢" in await say(client, resident, "2")
    assert (await request_row(db, number)).status == "closed"
    assert "重新处理" in await say(client, resident, "重新处理")
    row = await request_row(db, number)
    assert (row.status, row.reopen_count) == ("accepted", 2)
    # Only the resident reopens their own request; a neighbour cannot.
    other = await resident_in(db, demo, "G0201", 1)
    assert "不是您提交的" in await say(client, other, f"{number} 满意")


# -- scope ---------------------------------------------------------------------------------


async def test_acting_outside_scope_is_refused_and_changes_nothing(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    resident = await resident_in(db, demo, "G0101")
    number = await file_in_chat(client, resident, "4", "垃圾三天没清运", "1")
    before = await event_kinds(db, number)
    outsider = demo.wardens["G0201"]
    for action in ("受理", "备注 看看", "办结 好了", "转交 G0202", ""):
        reply = await say(client, outsider, f"{number} {action}".strip())
        assert "不在您负责的范围内" in reply, action
    assert "只有网格员和管理员" in await say(
        client, await resident_in(db, demo, "G0101", 1), f"{number} 受理"
    )
    assert "没有派给您" in await say(client, demo.volunteer_id, f"{number} 接单")
    assert "没有找到" in await say(client, outsider, "Q20200101-0001 受理")
    row = await request_row(db, number)
    assert row.status == "pending" and await event_kinds(db, number) == before
    # the district admin's scope covers it
    assert "已受理" in await say(client, demo.admin_id, f"{number} 受理")


async def test_transfer_within_scope(make_config, start_app, demo, db):
    client, rt = await start_app(make_config())
    resident = await resident_in(db, demo, "G0101")
    number = await file_in_chat(client, resident, "6", "邻居家狗一直叫", "2")
    warden = demo.wardens["G0101"]
    await say(client, warden, f"{number} 受理")
    assert "没有编码为 XYZ 的网格" in await say(client, warden, f"{number} 转交 XYZ")
    assert "本来就在" in await say(client, warden, f"{number} 转交 G0101")
    reply = await say(client, warden, f"{number} 转交 G0201")
    assert "不在您的范围内" in reply
    reply = await say(client, warden, f"{number} 转交 g0102")
    assert "已转交" in reply
    row = await request_row(db, number)
    g0102 = next(g for g in demo.grids if g.code == "G0102")
    assert (row.region_id, row.status, row.handler_id, row.level) == (
        g0102.id,
        "pending",
        demo.wardens["G0102"],
        "grid",
    )
    assert any("转来" in t and number in t for t in await pushed(rt, demo.wardens["G0102"]))
    assert any("已转交" in t for t in await pushed(rt, resident))
    # the old grid's warden is out of scope now; the district admin may move it anywhere
    assert "不在您负责的范围内" in await say(client, warden, f"{number} 受理")
    assert "已转交" in await say(client, demo.admin_id, f"{number} 转交 G0201")
    row = await request_row(db, number)
    assert row.handler_id == demo.wardens["G0201"]
    assert (await event_kinds(db, number)).count("transferred") == 2


# -- volunteers ----------------------------------------------------------------------------


async def test_volunteer_hand_off_delivery_and_receipt(make_config, start_app, demo, db):
    client, rt = await start_app(make_config())
    resident = await resident_in(db, demo, "G0102")
    warden = demo.wardens["G0102"]
    volunteer = demo.volunteer_id
    async with db.read() as conn:
        volunteer_person = await repo.load_person(conn, volunteer)
        resident_person = await repo.load_person(conn, resident)
    number = await file_in_chat(
        client, resident, "1", "独居老人需要买菜", "蔬菜和鸡蛋", "够吃三天", "1"
    )
    medical = await file_in_chat(client, resident, "2", "需要胰岛素", "1")
    assert "只有物资和生活类" in await say(client, warden, f"{medical} 派给志愿者 {volunteer}")
    assert "没有找到志愿者" in await say(client, warden, f"{number} 派给志愿者 不存在的人")
    reply = await say(client, warden, f"{number} 派给志愿者 {volunteer_person.name}")
    assert "已派给志愿者" in reply
    row = await request_row(db, number)
    assert (row.status, row.volunteer_id, row.volunteer_status) == ("accepted", volunteer, "handed")

    assert any(number in t and "接单" in t for t in await pushed(rt, volunteer))
    assert any("志愿者" in t and volunteer_person.name in t for t in await pushed(rt, resident))
    todo = await say(client, volunteer, "待办")
    assert number in todo and medical not in todo
    # what a volunteer sees: address and a masked phone, never the full number
    card = await say(client, volunteer, f"{number} 接单")
    assert repo.mask_phone(resident_person.phone) in card
    assert resident_person.phone not in card
    assert "蔬菜和鸡蛋" in card and "栋" in card
    assert "没有派给您" in await say(client, volunteer, medical)
    assert "已记录送达" in await say(client, volunteer, f"{number} 已送达")
    assert any("确认收到" in t for t in await pushed(rt, resident))
    assert "不能这样操作" in await say(client, volunteer, f"{number} 已送达")

    reply = await say(client, resident, f"{number} 确认收到")
    assert "已确认收到" in reply and "1到5" in reply
    await say(client, resident, "4")
    row = await request_row(db, number)
    assert (row.status, row.volunteer_status, row.rating) == ("closed", "received", 4)
    assert await event_kinds(db, number) == [
        "created",
        "assigned",
        "accepted",
        "handed",
        "volunteer_accepted",
        "delivered",
        "received",
        "rated",
    ]
    assert any("确认收到" in t for t in await pushed(rt, volunteer))


# -- deadlines and escalation --------------------------------------------------------------


async def test_accept_deadline_escalates_level_by_level_up_to_the_city(
    make_config, start_app, demo, db
):
    config = make_config()
    _, rt = await start_app(config)
    community_admin = await new_staff(db, "社区书记", Role.ADMIN, "C0101")
    street_admin = await new_staff(db, "街道主任", Role.ADMIN, "S01")
    city_admin = await new_staff(db, "市指挥部", Role.ADMIN, "C")
    t0 = utcnow()
    number = await file_direct(db, await resident_in(db, demo, "G0101"), now=t0, config=config)
    texts = Texts()

    async def sweep_at(minutes: int):
        return await sweep_deadlines(db, texts, config, now=t0 + timedelta(minutes=minutes))

    assert (await sweep_at(59)).escalated == 0
    expected = [
        (61, "community", community_admin),
        (122, "street", street_admin),
        (183, "district", demo.admin_id),
        (244, "city", city_admin),
    ]
    for minutes, level, handler in expected:
        report = await sweep_at(minutes)
        assert report.escalated == 1, level
        assert (await sweep_at(minutes)).escalated == 0  # the same sweep again: nothing
        row = await request_row(db, number)
        assert (row.level, row.handler_id, row.escalations) == (
            level,
            handler,
            expected.index((minutes, level, handler)) + 1,
        )
        assert row.escalate_at == t0 + timedelta(minutes=minutes + 60)
        alerts = await pushed(rt, handler)
        assert any("超期升级" in t and number in t for t in alerts), level
    report = await sweep_at(305)
    assert (report.escalated, report.exhausted) == (0, 1)
    row = await request_row(db, number)
    assert (row.level, row.handler_id, row.escalate_at) == ("city", city_admin, None)
    assert any("没有更高一级" in t for t in await pushed(rt, city_admin))
    assert (await sweep_at(1000)).exhausted == 0
    assert await event_kinds(db, number) == [
        "created",
        "assigned",
        "escalated",
        "escalated",
        "escalated",
        "escalated",
        "deadline_missed",
    ]
    # the SLA deadline never moved: the request is overdue since minute 60
    assert row.sla_due_at == t0 + timedelta(minutes=60)


async def test_levels_with_nobody_responsible_are_skipped(make_config, start_app, demo, db):
    config = make_config()
    await start_app(config)
    t0 = utcnow()
    number = await file_direct(db, await resident_in(db, demo, "G0201"), now=t0, config=config)
    await sweep_deadlines(db, Texts(), config, now=t0 + timedelta(minutes=61))
    row = await request_row(db, number)
    # the demo city has no community, street or city admin: straight to the district
    assert (row.level, row.handler_id) == ("district", demo.admin_id)
    report = await sweep_deadlines(db, Texts(), config, now=t0 + timedelta(minutes=122))
    assert report.exhausted == 1


async def test_resolve_deadline_escalates_an_accepted_request(make_config, start_app, demo, db):
    config = make_config()
    client, _ = await start_app(config)
    await new_staff(db, "社区书记", Role.ADMIN, "C0102")
    t0 = utcnow()
    number = await file_direct(
        db,
        await resident_in(db, demo, "G0103"),
        now=t0,
        config=config,
        category="daily",
        urgency="normal",
    )
    await say(client, demo.wardens["G0103"], f"{number} 受理")
    row = await request_row(db, number)
    assert row.sla_due_at == row.resolve_due_at == t0 + timedelta(minutes=2880)
    texts = Texts()
    assert (
        await sweep_deadlines(db, texts, config, now=t0 + timedelta(minutes=2879))
    ).escalated == 0
    assert (
        await sweep_deadlines(db, texts, config, now=t0 + timedelta(minutes=2881))
    ).escalated == 1
    row = await request_row(db, number)
    assert (row.level, row.status) == ("community", "accepted")
    async with db.read() as conn:
        detail = (
            await conn.execute(select(events_t.c.detail).where(events_t.c.kind == "escalated"))
        ).scalar()
    assert detail["stage"] == "resolve"
    # a resolved request has no deadline left to miss
    await say(client, demo.wardens["G0103"], f"{number} 办结 已处理")
    assert (await sweep_deadlines(db, texts, config, now=t0 + timedelta(days=1))).escalated == 0


async def test_medical_urgent_deadline_is_thirty_minutes_and_configurable(
    make_config, start_app, demo, db
):
    config = make_config(
        requests={
            "deadlines": {
                "medical": {
                    "urgent": {"accept_minutes": 10, "resolve_minutes": 60},
                    "normal": {"accept_minutes": 120, "resolve_minutes": 1440},
                }
            }
        }
    )
    await start_app(config)
    t0 = utcnow()
    default = await file_direct(
        db, await resident_in(db, demo, "G0104"), now=t0, category="medical"
    )
    configured = await file_direct(
        db, await resident_in(db, demo, "G0104", 1), now=t0, config=config, category="medical"
    )
    assert (await request_row(db, default)).accept_due_at == t0 + timedelta(minutes=30)
    assert (await request_row(db, configured)).accept_due_at == t0 + timedelta(minutes=10)
    report = await sweep_deadlines(db, Texts(), config, now=t0 + timedelta(minutes=29))
    assert report.escalated == 1  # only the configured 10-minute one
    report = await sweep_deadlines(db, Texts(), config, now=t0 + timedelta(minutes=31))
    assert report.escalated == 1
    assert (await request_row(db, default)).level == "district"


async def test_two_schedulers_sweeping_at_once_escalate_each_request_once(
    make_config, start_app, demo, db
):
    config = make_config(requests={"sweep_batch": 7})
    await start_app(config)
    await new_staff(db, "社区书记", Role.ADMIN, "C0101")
    t0 = utcnow()
    residents = demo.resident_ids[:40]
    for resident in residents:
        await file_direct(db, resident, now=t0, config=config)
    second = Database(config.database.url)
    try:
        now = t0 + timedelta(minutes=61)
        reports = await asyncio.gather(
            sweep_deadlines(db, Texts(), config, now=now),
            sweep_deadlines(second, Texts(), config, now=now),
        )
    finally:
        await second.dispose()
    assert sum(r.escalated + r.exhausted for r in reports) == len(residents)
    async with db.read() as conn:
        escalations = [r.escalations for r in await conn.execute(select(clocks_t))]
        kinds = [r.kind for r in await conn.execute(select(events_t.c.kind))]
        alert_keys = [
            r.key
            for r in await conn.execute(
                select(outbox_t.c.key).where(outbox_t.c.key.like("request-escalated:%"))
            )
        ]
    assert escalations == [1] * len(residents)
    assert kinds.count("escalated") == len(residents)
    assert len(alert_keys) == len(set(alert_keys)) >= 1
    again = await sweep_deadlines(db, Texts(), config, now=now)
    assert (again.escalated, again.exhausted) == (0, 0)


async def test_unanswered_resolved_requests_close_after_the_configured_days(
    make_config, start_app, demo, db
):
    config = make_config(requests={"auto_close_days": 3})
    client, rt = await start_app(config)
    resident = await resident_in(db, demo, "G0202")
    number = await file_in_chat(client, resident, "5", "建议多开一个核酸点", "2")
    await say(client, demo.wardens["G0202"], f"{number} 办结 已转告街道")
    now = utcnow()
    assert (await sweep_deadlines(db, Texts(), config, now=now + timedelta(days=2))).closed == 0
    assert (await sweep_deadlines(db, Texts(), config, now=now + timedelta(days=4))).closed == 1
    assert (await request_row(db, number)).status == "closed"
    assert any("自动关闭" in t for t in await pushed(rt, resident))
    assert (await event_kinds(db, number))[-1] == "auto_closed"


# -- supervision ---------------------------------------------------------------------------


async def test_supervision_lists_overdue_in_subtree_and_presses_the_handler(
    make_config, start_app, demo, db
):
    config = make_config()
    client, rt = await start_app(config)
    street_admin = await new_staff(db, "街道主任", Role.ADMIN, "S01")
    past = utcnow() - timedelta(hours=3)
    late = await file_direct(db, await resident_in(db, demo, "G0101"), now=past, config=config)
    other_street = await file_direct(
        db, await resident_in(db, demo, "G0201"), now=past, config=config
    )
    on_time = await file_direct(db, await resident_in(db, demo, "G0102"), config=config)

    listing = await say(client, street_admin, "督办")
    assert "东湖街道" in listing and "1件" in listing
    assert late in listing and other_street not in listing and on_time not in listing
    district = await say(client, demo.admin_id, "督办")
    assert late in district and other_street in district and "2件" in district
    assert "不在您管理的范围内" in await say(client, street_admin, "督办 S02")
    assert "0件" in await say(client, demo.admin_id, "督办 C0102")

    reply = await say(client, street_admin, f"{late} 督办 请今天内联系居民")
    assert "已督办" in reply
    alerts = await pushed(rt, demo.wardens["G0101"])
    assert any("【督办】" in t and "请今天内联系居民" in t and "街道主任" in t for t in alerts)
    assert "不在您负责的范围内" in await say(client, street_admin, f"{other_street} 督办")
    assert (await event_kinds(db, late))[-1] == "pressed"
    # wardens have no 督办 list (admins only)
    assert late not in await say(client, demo.wardens["G0101"], "督办")


# -- API -----------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_api_lists_shows_and_acts_within_scope(make_config, start_app, demo, db):
    config = make_config()
    client, rt = await start_app(config)
    warden = demo.wardens["G0101"]
    token = bearer(await create_token(db, warden))
    admin = bearer(await create_token(db, demo.admin_id))
    outsider = bearer(await create_token(db, demo.wardens["G0201"]))
    past = utcnow() - timedelta(hours=2)
    number = await file_direct(db, await resident_in(db, demo, "G0101"), now=past, config=config)
    fresh = await file_direct(db, await resident_in(db, demo, "G0101", 1), config=config)

    r = await client.get(f"{PREFIX}/requests?region=G0101&status=pending", headers=token)
    assert r.status == 200
    assert {x["number"] for x in (await r.json())["requests"]} == {number, fresh}
    r = await client.get(f"{PREFIX}/requests?status=nonsense", headers=token)
    assert r.status == 400
    r = await client.get(f"{PREFIX}/requests?region=G0201", headers=token)
    assert r.status == 403
    r = await client.get(f"{PREFIX}/requests/overdue?region=S01", headers=admin)
    body = await r.json()
    assert body["total"] == 1 and body["requests"][0]["number"] == number
    assert body["requests"][0]["overdue_minutes"] >= 59

    r = await client.get(f"{PREFIX}/requests/{number}", headers=token)
    body = await r.json()
    assert [e["kind"] for e in body["timeline"]] == ["created", "assigned"]
    assert body["resident"]["phone"] and "****" not in body["resident"]["phone"]
    r = await client.get(f"{PREFIX}/requests/{number}", headers=admin)
    assert "****" in (await r.json())["resident"]["phone"]  # not the grid's warden: masked
    r = await client.get(f"{PREFIX}/requests/{number}", headers=outsider)
    assert r.status == 403 and (await r.json())["error"]["code"] == "out_of_scope"
    r = await client.get(f"{PREFIX}/requests/Q20200101-0009", headers=token)
    assert r.status == 404
    r = await client.get(f"{PREFIX}/requests/nonsense", headers=token)
    assert r.status == 400

    r = await client.post(f"{PREFIX}/requests/{number}/accept", headers=outsider)
    assert r.status == 403
    r = await client.post(f"{PREFIX}/requests/{number}/notes", headers=token, json={"text": " "})
    assert r.status == 400
    r = await client.post(f"{PREFIX}/requests/{number}/notes", headers=token, data="{oops")
    assert r.status == 400 and (await r.json())["error"]["code"] == "malformed_json"
    r = await client.post(f"{PREFIX}/requests/{number}/accept", headers=token)
    assert r.status == 200 and (await r.json())["status"] == "accepted"
    r = await client.post(f"{PREFIX}/requests/{number}/accept", headers=token)
    assert r.status == 409
    r = await client.post(
        f"{PREFIX}/requests/{number}/notes", headers=token, json={"text": "已上门"}
    )
    assert r.status == 200
    r = await client.post(f"{PREFIX}/requests/{number}/press", headers=admin, json={"text": "加快"})
    assert r.status == 200
    assert any("【督办】" in t for t in await pushed(rt, warden))
    r = await client.post(
        f"{PREFIX}/requests/{fresh}/transfer", headers=token, json={"grid": "G0102"}
    )
    assert r.status == 200 and (await r.json())["handler_id"] == demo.wardens["G0102"]
    r = await client.post(
        f"{PREFIX}/requests/{number}/resolve", headers=token, json={"reply": "米已送到"}
    )
    assert r.status == 200 and (await r.json())["status"] == "resolved"
    r = await client.post(
        f"{PREFIX}/requests/{number}/resolve", headers=token, json={"reply": "again"}
    )
    assert r.status == 409
    assert "等待居民确认" in (await r.json())["error"]["message"]
    assert any("米已送到" in t for t in await pushed(rt, await resident_in(db, demo, "G0101")))
    kinds = await event_kinds(db, number)
    assert kinds == ["created", "assigned", "accepted", "note", "pressed", "resolved"]

    spec = await (await client.get(f"{PREFIX}/openapi.json")).json()
    assert "/requests/{number}/resolve" in spec["paths"] and "/requests/overdue" in spec["paths"]


async def test_help_lists_request_commands(make_config, start_app, demo):
    client, _ = await start_app(make_config())
    reply = await say(client, demo.wardens["G0101"], "帮助")
    assert "求助" in reply and "待办" in reply
    assert "没有需要您处理" in await say(client, demo.wardens["G0101"], "待办")
    assert "还没有提交过" in await say(client, demo.resident_ids[0], "我的诉求")
    assert "没有等待确认" in await say(client, demo.resident_ids[0], "满意")
