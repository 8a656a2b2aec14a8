"""The check-in conversation through the real app (simulator channel), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from checkin_support import (
    NORMAL,
    all_records,
    converse,
    current_records,
    grid_people,
    outbox_rows,
    send,
    today,
)
from sqlalchemy import select, update

from storage import checkin as store
from storage.models import AuditEntry, Person, utcnow

NO_QUIET = {"schedule": {"quiet_hours": ["00:00", "00:00"]}}


@pytest.fixture
def config(make_config):
    return make_config(checkin=NO_QUIET)


async def test_temperature_formats_are_read(config, start_app, demo, db):
    client, _ = await start_app(config)
    resident = demo.resident_ids[0]
    for text, expected in [("36.5", 36.5), ("36度5", 36.5), ("三十六度五", 36.5), ("36.8℃", 36.8)]:
        replies = await converse(client, resident, "打卡", text, *NORMAL[1:])
        assert "打卡已完成" in replies[-1]
        [record] = await current_records(db, resident)
        assert record.answers["temperature"] == expected
        assert record.status == "complete"


async def test_yes_no_formats_are_read(config, start_app, demo, db):
    client, _ = await start_app(config)
    resident = demo.resident_ids[1]
    words = [
        ("是", True),
        ("否", False),
        ("有", True),
        ("没有", False),
        ("无", False),
        ("对", True),
        ("不是", False),
        ("y", True),
        ("n", False),
    ]
    for word, expected in words:
        await converse(client, resident, "打卡", "36.5", "没有", word, "否", "1")
        [record] = await current_records(db, resident)
        assert record.answers["contact"] is expected, word


async def test_choice_formats_are_read(config, start_app, demo, db):
    client, _ = await start_app(config)
    resident = demo.resident_ids[2]
    cases = [
        ("1 3", ["fever", "sore_throat"]),
        ("1,3", ["fever", "sore_throat"]),
        ("1、3", ["fever", "sore_throat"]),
        ("咳嗽 乏力", ["cough", "fatigue"]),
        ("嗓子疼和没力气", ["sore_throat", "fatigue"]),
        ("都没有", ["none"]),
    ]
    for text, expected in cases:
        await converse(client, resident, "打卡", "36.5", text, "否", "否", "在单位上班")
        [record] = await current_records(db, resident)
        assert record.answers["symptoms"] == expected, text
        assert record.answers["status"] == "work"


async def test_temperature_outside_human_range_is_asked_again_not_stored(
    config, start_app, demo, db
):
    client, _ = await start_app(config)
    resident = demo.resident_ids[0]
    await send(client, resident, "打卡")
    for impossible in ("25", "45"):
        reply = await send(client, resident, impossible)
        assert "数值不太对" in reply
        assert "体温是多少" in reply
    reply = await send(client, resident, "36.6")
    assert "有没有下面这些症状" in reply
    await converse(client, resident, *NORMAL[1:])
    [record] = await all_records(db, resident)
    assert record.answers["temperature"] == 36.6


async def test_unreadable_answers_up_to_the_limit_save_an_incomplete_record(
    config, start_app, demo, db
):
    client, _ = await start_app(config)
    resident = demo.resident_ids[0]
    await converse(client, resident, "打卡", "36.5")
    first = await send(client, resident, "不清楚")
    assert "没看懂您的选择" in first and "有没有下面这些症状" in first
    await send(client, resident, "嗯？")
    assert await all_records(db, resident) == []
    last = await send(client, resident, "啥意思")  # the third miss (checkin.max_reasks = 3)
    assert "未完成" in last
    [record] = await all_records(db, resident)
    assert (record.status, record.risk) == ("incomplete", "low")
    assert record.answers == {"temperature": 36.5}
    # The conversation is over: the next message is not taken as an answer.
    assert "打卡已完成" not in await send(client, resident, "1")
    warden = demo.wardens["G0101"]
    listing = await send(client, warden, "未打卡")
    name = await _name(db, resident)
    assert any(name in line and "未完成" in line for line in listing.splitlines())


async def test_reask_limit_comes_from_config(make_config, start_app, demo, db):
    client, _ = await start_app(make_config(checkin={**NO_QUIET, "max_reasks": 1}))
    resident = demo.resident_ids[0]
    replies = await converse(client, resident, "打卡", "不知道")
    assert "未完成" in replies[-1]
    [record] = await all_records(db, resident)
    assert record.status == "incomplete" and record.answers == {}


async def test_cancel_stores_nothing(config, start_app, demo, db):
    client, _ = await start_app(config)
    resident = demo.resident_ids[0]
    replies = await converse(client, resident, "打卡", "36.5", "咳嗽", "取消")
    assert "已取消" in replies[-1]
    assert await all_records(db, resident) == []
    assert await outbox_rows(db) == []


async def test_restart_begins_again_from_the_first_question(config, start_app, demo, db):
    client, _ = await start_app(config)
    resident = demo.resident_ids[0]
    replies = await converse(client, resident, "打卡", "38.5", "1 2", "重新打卡")
    assert "重新开始" in replies[-1] and "（1/5）" in replies[-1]
    await converse(client, resident, *NORMAL)
    [record] = await all_records(db, resident)
    assert record.answers == {
        "temperature": 36.5,
        "symptoms": ["none"],
        "contact": False,
        "travel": False,
        "status": "home",
    }
    assert record.risk == "low"


async def test_answering_again_the_same_day_replaces_and_keeps_history(config, start_app, demo, db):
    client, _ = await start_app(config)
    resident = demo.resident_ids[0]
    await converse(client, resident, "打卡", "37.0", *NORMAL[1:])
    replies = await converse(client, resident, "打卡")
    assert "已经打过卡了" in replies[0] and "替换" in replies[0]
    await converse(client, resident, "36.4", *NORMAL[1:])
    first, second = await all_records(db, resident)
    assert first.replaced_at is not None and second.replaced_at is None
    assert (first.answers["temperature"], second.answers["temperature"]) == (37.0, 36.4)
    assert first.day == second.day == today()
    assert [r.id for r in await current_records(db, resident)] == [second.id]


async def test_household_member_reporting_records_who_reported(config, start_app, demo, db):
    client, _ = await start_app(config)
    reporter, members = await _household_with_members(db, demo)
    replies = await converse(client, reporter, "帮家人打卡")
    listing = replies[0]
    names = {m: await _name(db, m) for m in members}
    assert all(name in listing for name in names.values())
    replies = await converse(client, reporter, "1")
    assert f"现在替{names[members[0]]}打卡" in replies[0]
    assert names[members[0]] in replies[0]  # the question names the member
    replies = await converse(client, reporter, "37.6", "没有", "否", "否", "1")
    assert f"{names[members[0]]}的打卡已完成" in replies[-1]
    [record] = await all_records(db, members[0])
    assert (record.reporter_id, record.person_id, record.risk) == (reporter, members[0], "moderate")
    if len(members) > 1:
        assert "（今天已打卡）" in replies[-1]
        replies = await converse(client, reporter, "完成")
        assert "共替1位家人" in replies[-1]
    else:
        assert "共替1位家人" in replies[-1]
    assert await all_records(db, reporter) == []
    alert_text = (await outbox_rows(db, "checkin:alert:"))[0].payload["text"]
    reporter_name = await _name(db, reporter)
    assert f"由家人{reporter_name}代报" in alert_text
    async with db.read() as conn:
        audit = AuditEntry.__table__
        actions = list(
            await conn.execute(select(audit.c.action, audit.c.target_id, audit.c.actor_id))
        )
    assert ("checkin.report_for", str(members[0]), reporter) in actions


async def test_household_member_reported_twice_in_one_session_is_counted_once(
    config, start_app, demo, db
):
    client, _ = await start_app(config)
    reporter, members = await _household_with_members(db, demo)
    await converse(client, reporter, "帮家人打卡", "1", "37.0", *NORMAL[1:])
    if len(members) == 1:
        await send(client, reporter, "帮家人打卡")
    # The same member again (a correction): their record is replaced, not doubled.
    replies = await converse(client, reporter, "1", "36.6", *NORMAL[1:], "完成")
    assert "共替1位家人" in replies[-1]
    assert [r.answers["temperature"] for r in await current_records(db, members[0])] == [36.6]


async def test_household_members_with_the_same_name_are_chosen_by_number(
    config, start_app, demo, db
):
    client, _ = await start_app(config)
    reporter, members = await _household_with_members(db, demo)
    people = Person.__table__
    household = select(people.c.household_id).where(people.c.id == reporter).scalar_subquery()
    async with db.write() as conn:
        # Two members called the same (a roster that lists children as "宝宝").
        await conn.execute(
            update(people)
            .where(people.c.household_id == household, people.c.id != reporter)
            .values(name="宝宝")
        )
    await send(client, reporter, "帮家人打卡")
    reply = await send(client, reporter, "1")
    assert "现在替宝宝打卡" in reply
    await converse(client, reporter, *NORMAL)
    [record] = await current_records(db, members[0])
    assert record.reporter_id == reporter


async def test_household_choice_that_is_not_a_member_is_asked_again(config, start_app, demo, db):
    client, _ = await start_app(config)
    reporter, _members = await _household_with_members(db, demo)
    await send(client, reporter, "帮家人打卡")
    reply = await send(client, reporter, "9")
    assert "没看懂您选的是哪位家人" in reply and "请选择要替谁打卡" in reply


async def test_household_reporting_without_household_is_explained(config, start_app, demo, db):
    client, _ = await start_app(config)
    reply = await send(client, demo.wardens["G0201"], "帮家人打卡")
    assert "没有找到可以替他们打卡的家人" in reply


async def test_low_risk_gets_advice_and_no_alert(config, start_app, demo, db):
    client, _ = await start_app(config)
    replies = await converse(client, demo.resident_ids[0], "打卡", *NORMAL)
    assert "今天情况正常" in replies[-1]
    assert await outbox_rows(db, "checkin:alert:") == []
    [record] = await all_records(db, demo.resident_ids[0])
    assert (record.risk, record.reasons) == ("low", [])


async def test_moderate_risk_alerts_the_warden_and_the_community_doctor(
    config, start_app, demo, db
):
    client, _ = await start_app(config)
    resident = demo.resident_ids[0]
    replies = await converse(client, resident, "打卡", "37.5", "没有", "否", "否", "1")
    assert "需要留意" in replies[-1] and "发热（≥37.3℃）" in replies[-1]
    assert "已通知网格员和社区医生" in replies[-1]
    [record] = await all_records(db, resident)
    assert (record.risk, record.reasons) == ("moderate", ["发热（≥37.3℃）"])
    rows = await outbox_rows(db, "checkin:alert:")
    [alert] = await store_alerts(db)
    assert alert.level == "moderate" and alert.status == "open"
    assert {r.person_id for r in rows} == {demo.wardens["G0101"], demo.doctor_id}
    text = rows[0].payload["text"]
    assert await _name(db, resident) in text and "37.5℃" in text
    assert f"确认 {alert.id}" in text


async def test_abnormal_answer_in_a_grid_without_staff_does_not_claim_they_were_told(
    config, start_app, demo, db
):
    from storage.models import PersonRole

    client, _ = await start_app(config)
    grid = next(g for g in demo.grids if g.code == "G0201")  # no community doctor there
    roles = PersonRole.__table__
    async with db.write() as conn:
        await conn.execute(roles.delete().where(roles.c.scope_region_id == grid.id))
    resident = next(p.id for p in await grid_people(db, grid.id) if p.id in demo.resident_ids)
    replies = await converse(client, resident, "打卡", "38.5", *NORMAL[1:])
    assert await outbox_rows(db, "checkin:alert:") == []
    assert "已通知网格员和社区医生" not in replies[-1]
    assert "已记录为异常" in replies[-1]
    [alert] = await store_alerts(db)  # still open: it escalates to the admins above
    assert alert.status == "open"


async def test_two_symptoms_are_moderate_and_symptoms_with_contact_are_high(
    config, start_app, demo, db
):
    client, _ = await start_app(config)
    await converse(client, demo.resident_ids[0], "打卡", "36.6", "咳嗽 乏力", "否", "否", "1")
    await converse(client, demo.resident_ids[1], "打卡", "36.6", "咳嗽", "是", "否", "1")
    await converse(client, demo.resident_ids[2], "打卡", "36.6", "1 2 4", "否", "否", "1")
    levels = [(await all_records(db, pid))[0].risk for pid in demo.resident_ids[:3]]
    assert levels == ["moderate", "high", "high"]
    assert [a.level for a in await store_alerts(db)] == ["moderate", "high", "high"]


async def test_high_risk_also_goes_to_the_grid_staff_group(config, start_app, demo, db):
    client, _ = await start_app(config)
    grid = demo.grids[0]
    async with db.write() as conn:
        from storage import repo

        group_id = await repo.create_group(
            conn,
            region_id=grid.id,
            channel="sim",
            external_id="staff-G0101",
            name="桃园社区第1网格工作群",
            purpose="staff",
        )
    replies = await converse(client, demo.resident_ids[0], "打卡", "38.6", "1 2", "是", "否", "1")
    assert "需要尽快处理" in replies[-1] and "120" in replies[-1]
    rows = await outbox_rows(db, "checkin:alert:")
    assert any(r.group_id == group_id and r.target == "staff-G0101" for r in rows)
    assert {r.person_id for r in rows if r.person_id} == {demo.wardens["G0101"], demo.doctor_id}


async def test_alert_acknowledgement_by_staff_in_scope(config, start_app, demo, db):
    client, _ = await start_app(config)
    await converse(client, demo.resident_ids[0], "打卡", "37.9", *NORMAL[1:])
    [alert] = await store_alerts(db)
    assert "不在您负责的范围内" in await send(client, demo.wardens["G0201"], f"确认 {alert.id}")
    assert "例如“确认 12”" in await send(client, demo.wardens["G0101"], "确认 一下")
    assert "没有找到编号为 999" in await send(client, demo.wardens["G0101"], "确认 999")
    assert "已确认异常提醒" in await send(client, demo.wardens["G0101"], f"确认 {alert.id}")
    assert "已经有人确认过了" in await send(client, demo.doctor_id, f"确认{alert.id}")
    [alert] = await store_alerts(db)
    assert alert.status == "acknowledged" and alert.acknowledged_by == demo.wardens["G0101"]
    assert alert.next_escalation_at is None


async def test_unacknowledged_alert_escalates_one_level_up(make_config, start_app, demo, db):
    from flows.checkin_alerts import escalate_due
    from flows.texts import Texts

    config = make_config(checkin={**NO_QUIET, "alerts": {"escalate_after_minutes": 30}})
    client, _ = await start_app(config)
    await converse(client, demo.resident_ids[0], "打卡", "37.9", *NORMAL[1:])
    await converse(client, demo.resident_ids[1], "打卡", "37.9", *NORMAL[1:])
    first, second = await store_alerts(db)
    await send(client, demo.doctor_id, f"确认 {second.id}")
    texts, tz = Texts(), config.tz
    assert await escalate_due(db, texts, config.checkin, tz, utcnow() + timedelta(minutes=20)) == 0
    later = utcnow() + timedelta(minutes=31)
    assert await escalate_due(db, texts, config.checkin, tz, later) == 1
    # No admin on the community or street of the demo: the district admin is next.
    [row] = await outbox_rows(db, f"checkin:alert:{first.id}:l")
    assert row.person_id == demo.admin_id
    assert "【升级提醒】" in row.payload["text"] and "江岸区" in row.payload["text"]
    [first_now, _] = await store_alerts(db)
    assert first_now.escalation_level == 3 and first_now.next_escalation_at is not None
    # Nobody above the district: a later pass stops escalating and sends nothing more.
    assert await escalate_due(db, texts, config.checkin, tz, later + timedelta(hours=1)) == 0
    assert len(await outbox_rows(db, f"checkin:alert:{first.id}:l")) == 1
    assert (await store_alerts(db))[0].next_escalation_at is None


async def test_correcting_an_abnormal_answer_stops_the_old_alert_from_escalating(
    make_config, start_app, demo, db
):
    from flows.checkin_alerts import escalate_due
    from flows.texts import Texts

    config = make_config(checkin={**NO_QUIET, "alerts": {"escalate_after_minutes": 30}})
    client, _ = await start_app(config)
    resident = demo.resident_ids[0]
    await converse(client, resident, "打卡", "38.5", *NORMAL[1:])
    # A typo: the resident answers again the same day with a normal temperature.
    await converse(client, resident, "打卡", "36.5", *NORMAL[1:])
    [alert] = await store_alerts(db)
    assert alert.status != "open" and alert.next_escalation_at is None
    later = utcnow() + timedelta(minutes=31)
    assert await escalate_due(db, Texts(), config.checkin, config.tz, later) == 0
    assert await outbox_rows(db, f"checkin:alert:{alert.id}:l") == []
    reply = await send(client, demo.wardens["G0101"], f"确认 {alert.id}")
    assert "已由居民当天重新填写" in reply and "已经有人确认过了" not in reply


async def test_answering_abnormal_twice_the_same_day_leaves_one_open_alert(
    config, start_app, demo, db
):
    client, _ = await start_app(config)
    resident = demo.resident_ids[0]
    await converse(client, resident, "打卡", "38.5", *NORMAL[1:])
    await converse(client, resident, "打卡", "38.9", *NORMAL[1:])
    first, second = await store_alerts(db)
    assert first.status != "open" and first.next_escalation_at is None
    assert second.status == "open"
    [current] = await current_records(db, resident)
    assert second.record_id == current.id


async def test_checkin_in_a_group_chat_points_to_the_direct_chat(config, start_app, demo, db):
    client, _ = await start_app(config)
    reply = await send(client, demo.resident_ids[0], "打卡", chat="grid-G0101")
    assert "请私聊我" in reply
    assert await all_records(db) == []


async def test_quarantined_person_answers_the_questions_of_the_current_slot(
    config, start_app, demo, db
):
    from flows.checkin import quarantine_slot
    from flows.checkin_push import local_time

    client, _ = await start_app(config)
    resident = demo.resident_ids[0]
    day = today()
    async with db.write() as conn:
        await store.create_quarantine(
            conn,
            person_id=resident,
            kind="quarantine",
            start_day=day - timedelta(days=1),
            end_day=day + timedelta(days=13),
            created_by=demo.wardens["G0101"],
            now=utcnow(),
        )
    slot = quarantine_slot(config.checkin.quarantine, local_time(utcnow(), config.tz).time())
    reply = await send(client, resident, "打卡")
    assert "居家隔离第2天" in reply
    if slot == 1:  # afternoon: temperature only
        assert "共1个问题" in reply
        replies = await converse(client, resident, "36.7")
    else:
        assert "共5个问题" in reply
        replies = await converse(client, resident, *NORMAL)
    assert "打卡已完成" in replies[-1]
    [record] = await all_records(db, resident)
    assert record.slot == slot


async def store_alerts(db):
    async with db.read() as conn:
        return list(await conn.execute(select(store.alerts).order_by(store.alerts.c.id)))


async def _name(db, person_id: int) -> str:
    async with db.read() as conn:
        people = Person.__table__
        return (await conn.execute(select(people.c.name).where(people.c.id == person_id))).scalar()


async def _household_with_members(db, demo) -> tuple[int, list[int]]:
    """A demo resident whose household has other members: (reporter, other members)."""
    people = Person.__table__
    async with db.read() as conn:
        rows = list(
            await conn.execute(
                select(people.c.id, people.c.household_id)
                .where(people.c.id.in_(demo.resident_ids))
                .order_by(people.c.id)
            )
        )
    by_household: dict[int, list[int]] = {}
    for row in rows:
        by_household.setdefault(row.household_id, []).append(row.id)
    members = next(ids for ids in by_household.values() if len(ids) >= 2)
    return members[0], members[1:]
