"""What wardens, doctors and admins do in chat: 今日打卡, 未打卡, 异常, quarantine commands."""

from __future__ import annotations

from datetime import timedelta

import pytest
from checkin_support import (
    NORMAL,
    converse,
    grid_people,
    outbox_rows,
    quarantine_rows,
    send,
    today,
)
from sqlalchemy import select, update

from flows.quarantine import CommandError, parse_command
from storage import repo
from storage.models import AuditEntry, Person

NO_QUIET = {"schedule": {"quiet_hours": ["00:00", "00:00"]}}


@pytest.fixture
def config(make_config):
    return make_config(checkin={**NO_QUIET, "page_size": 5})


async def audit_actions(db) -> list[tuple[str, int]]:
    audit = AuditEntry.__table__
    async with db.read() as conn:
        return [tuple(r) for r in await conn.execute(select(audit.c.action, audit.c.actor_id))]


async def test_today_counts_the_wardens_grid(config, start_app, demo, db):
    client, _ = await start_app(config)
    grid = demo.grids[0]
    residents = await grid_people(db, grid.id)
    await converse(client, residents[0].id, "打卡", *NORMAL)
    await converse(client, residents[1].id, "打卡", "38.0", *NORMAL[1:])
    warden = demo.wardens[grid.code]
    reply = await send(client, warden, "今日打卡")
    assert grid.name in reply
    assert f"应打卡{len(residents)}人，已完成2人" in reply
    assert "需留意1人" in reply
    assert ("checkin.view.today", warden) in await audit_actions(db)


async def test_missing_list_is_paged_and_names_households(config, start_app, demo, db):
    client, _ = await start_app(config)
    grid = demo.grids[0]
    residents = await grid_people(db, grid.id)
    answered = residents[0]
    await converse(client, answered.id, "打卡", *NORMAL)
    warden = demo.wardens[grid.code]
    first = await send(client, warden, "未打卡")
    total = len(residents) - 1
    pages = -(-total // 5)
    assert f"未打卡共{total}人（第1/{pages}页）" in first
    assert answered.name not in first
    assert len([line for line in first.splitlines()[1:] if line[:1].isdigit()]) == 5
    assert "回复“未打卡 2”" in first
    second = await send(client, warden, "未打卡 2")
    assert f"（第2/{pages}页）" in second and second.splitlines()[1].startswith("6. ")
    assert f"没有第9页了，共{pages}页" in await send(client, warden, "未打卡 第9页")
    assert "“未打卡 2”看第二页" in await send(client, warden, "未打卡 明天")
    assert ("checkin.view.missing", warden) in await audit_actions(db)


async def test_abnormal_lists_todays_moderate_and_high_with_their_alert(
    config, start_app, demo, db
):
    client, _ = await start_app(config)
    grid = demo.grids[0]
    residents = await grid_people(db, grid.id)
    await converse(client, residents[0].id, "打卡", "37.5", *NORMAL[1:])
    await converse(client, residents[1].id, "打卡", "38.5", "1 2", "是", "否", "1")
    await converse(client, residents[2].id, "打卡", *NORMAL)
    reply = await send(client, demo.wardens[grid.code], "异常")
    assert "异常打卡2条" in reply
    high_at, moderate_at = reply.index(residents[1].name), reply.index(residents[0].name)
    assert high_at < moderate_at  # worst first
    assert residents[2].name not in reply
    assert "38.5℃" in reply and "待确认" in reply
    # A warden of another grid sees none of it.
    assert "没有异常打卡" in await send(client, demo.wardens["G0201"], "异常")


async def test_chat_views_of_health_data_are_audited_against_the_region_viewed(
    config, start_app, demo, db
):
    """A community doctor living in another community: an audit of the community they look
    after must still find their views of its residents' health answers."""
    client, _ = await start_app(config)
    community = demo.grids[0].parent_id
    elsewhere = next(g for g in demo.grids if g.parent_id != community)
    async with db.write() as conn:
        await conn.execute(
            update(Person.__table__)
            .where(Person.__table__.c.id == demo.doctor_id)
            .values(region_id=elsewhere.id, household_id=None)
        )
        audited = await repo.get_region(conn, community)
    assert audited is not None
    for command in ("今日打卡", "未打卡", "异常"):
        await send(client, demo.doctor_id, command)
    async with db.read() as conn:
        _, entries = await repo.list_audit(
            conn,
            repo.AuditFilter(paths=(audited.path,), action="checkin.view."),
            limit=50,
            offset=0,
        )
    found = {(e.action, e.actor_id) for e in entries}
    for action in ("checkin.view.today", "checkin.view.missing", "checkin.view.abnormal"):
        assert (action, demo.doctor_id) in found


async def test_residents_cannot_use_staff_commands(config, start_app, demo, db):
    client, _ = await start_app(config)
    resident = demo.resident_ids[0]
    assert "未打卡共" not in await send(client, resident, "未打卡")
    assert "已登记" not in await send(client, resident, f"隔离 {demo.resident_ids[1]}")
    assert await quarantine_rows(db) == []
    # "今日打卡" from a resident starts their own check-in.
    assert "（1/5）" in await send(client, resident, "今日打卡")


async def test_quarantine_whole_household_then_extend_and_end(config, start_app, demo, db):
    client, _ = await start_app(config)
    grid = demo.grids[0]
    warden = demo.wardens[grid.code]
    residents = await grid_people(db, grid.id)
    target = next(
        r
        for r in residents
        if r.household_id and sum(o.household_id == r.household_id for o in residents) >= 2
    )
    members = [r.id for r in residents if r.household_id == target.household_id]
    reply = await send(client, warden, f"隔离 {target.id} 全户")
    assert "已登记居家隔离" in reply and "共14天" in reply
    rows = await quarantine_rows(db)
    assert sorted(q.person_id for q in rows) == sorted(members)
    assert all(q.start_day == today() and q.end_day == today() + timedelta(14) for q in rows)
    again = await send(client, warden, f"隔离 {target.id}")
    assert "未重复登记" in again
    extended = await send(client, warden, f"延长隔离 {target.id} 7天")
    assert "延长7天" in extended
    [mine] = [q for q in await quarantine_rows(db) if q.person_id == target.id]
    assert mine.end_day == today() + timedelta(21)
    ended = await send(client, warden, f"解除隔离 {target.id}")
    assert "已解除" in ended
    [mine] = [q for q in await quarantine_rows(db) if q.person_id == target.id]
    assert mine.status == "ended"
    assert "目前不在隔离或观察中" in await send(client, warden, f"解除隔离 {target.id}")
    actions = [a for a, _ in await audit_actions(db)]
    assert actions.count("checkin.quarantine.start") == len(members)
    assert "checkin.quarantine.extend" in actions and "checkin.quarantine.end" in actions


async def test_extending_a_quarantine_tells_the_resident_the_new_release_day(
    config, start_app, demo, db
):
    client, _ = await start_app(config)
    grid = demo.grids[0]
    target = (await grid_people(db, grid.id))[0]
    await send(client, demo.wardens[grid.code], f"隔离 {target.id} 14天")
    await send(client, demo.wardens[grid.code], f"延长隔离 {target.id} 7天")
    [told] = await outbox_rows(db, "checkin:qextend:")
    assert told.person_id == target.id
    new_end = today() + timedelta(21)
    assert f"{new_end.month}月{new_end.day}日" in told.payload["text"]
    assert "延长" in told.payload["text"]


async def test_quarantine_commands_refuse_bad_input_politely(config, start_app, demo, db):
    client, _ = await start_app(config)
    warden = demo.wardens["G0101"]
    other_grid_resident = next(
        r.id for r in await grid_people(db, demo.grids[3].id) if r.id in demo.resident_ids
    )
    assert "请这样登记" in await send(client, warden, "隔离")
    assert "没有找到“不存在的人”" in await send(client, warden, "隔离 不存在的人")
    assert "不在您负责的范围内" in await send(client, warden, f"隔离 {other_grid_resident}")
    assert "不是可用的开始日期" in await send(client, warden, "隔离 1 2月30日")
    assert "天数需要在1到60天之间" in await send(client, warden, "隔离 1 90天")
    assert "就已结束" in await send(client, warden, f"隔离 {demo.resident_ids[0]} 前天 1天")
    assert await quarantine_rows(db) == []


async def test_quarantine_by_an_ambiguous_name_asks_for_the_number(config, start_app, demo, db):
    client, _ = await start_app(config)
    grid = demo.grids[0]
    async with db.write() as conn:
        for _ in range(2):
            await repo.create_person(conn, name="同名人", region_id=grid.id)
    reply = await send(client, demo.wardens[grid.code], "隔离 同名人")
    assert "有2位“同名人”" in reply and "编号" in reply
    assert await quarantine_rows(db) == []


def test_quarantine_command_reading() -> None:
    day = today()
    start = day - timedelta(days=3)
    command = parse_command(f"隔离 张三 全户 {start.month}月{start.day}日 14天", day)
    assert (command.action, command.who, command.household, command.days) == (
        "quarantine",
        "张三",
        True,
        14,
    )
    assert command.start == start
    assert parse_command("健康观察 王小天", day).who == "王小天"  # a name ending in 天
    assert parse_command("延长隔离 #12 三天", day).days == 3
    with pytest.raises(CommandError):
        parse_command("延长隔离 张三", day)  # extend needs a number of days
    with pytest.raises(CommandError):
        parse_command("隔离 张三 李四", day)
