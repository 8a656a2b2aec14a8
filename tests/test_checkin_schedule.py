"""The check-in clock: prompts, reminders, quiet hours, summaries, quarantine, two schedulers.

The schedule is driven with explicit times (``run_checkin_schedule(..., now)``), on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

from checkin_support import (
    count,
    local,
    outbox_rows,
    quarantine_rows,
    send,
    today,
)
from sqlalchemy import delete, func, select, update

from flows.checkin_schedule import run_checkin_schedule
from flows.texts import Texts
from storage import checkin as store
from storage import repo
from storage.db import Database
from storage.models import Person, Region, utcnow

DAY = date(2031, 3, 3)  # a fixed day in the future: nothing else happens on it
people = Person.__table__
regions = Region.__table__


async def tick(db, config, when):
    return await run_checkin_schedule(db, config.checkin, config.tz, Texts(), when)


async def everyone(db) -> set[int]:
    async with db.read() as conn:
        return set((await conn.execute(select(people.c.id))).scalars())


async def keys(db, kind: str, day: date = DAY) -> dict[int, object]:
    """Outbox rows of one kind on ``day``, by person."""
    rows = await outbox_rows(db, f"checkin:{kind}:")
    return {r.person_id: r for r in rows if r.key.endswith(day.isoformat())}


async def save(db, person_id: int, day: date, *, status="complete", slot=0, risk="low"):
    async with db.write() as conn:
        person = await repo.load_person(conn, person_id)
        return await store.save_record(
            conn,
            store.NewRecord(
                person_id=person_id,
                reporter_id=person_id,
                region_id=person.region.id if person.region else None,
                household_id=person.household_id,
                day=day,
                slot=slot,
                status=status,
                risk=risk,
                reasons=[],
                answers={"temperature": 36.5},
            ),
            now=utcnow(),
        )


async def test_morning_prompt_goes_once_to_every_reachable_resident(make_config, demo, db):
    config = make_config()
    opted_out = demo.resident_ids[5]
    async with db.write() as conn:
        await repo.set_opted_out(conn, opted_out, True)
    assert await tick(db, config, local(DAY, 7, 59)) == {}
    counts = await tick(db, config, local(DAY, 8, 0))
    expected = await everyone(db) - {opted_out}
    assert counts["prompt"] == len(expected)
    prompts = await keys(db, "prompt")
    assert set(prompts) == expected
    row = prompts[demo.resident_ids[0]]
    assert row.key == f"checkin:prompt:{demo.resident_ids[0]}:{DAY.isoformat()}"
    assert (row.target, row.channel) == (f"sim-{demo.resident_ids[0]}", "sim")
    assert "回复“打卡”" in row.payload["text"]
    # A second tick, even with the batch marks gone, adds nothing: the keys are deterministic.
    assert await tick(db, config, local(DAY, 8, 1)) == {}
    async with db.write() as conn:
        await conn.execute(delete(store.runs))
    await tick(db, config, local(DAY, 8, 2))
    assert len(await keys(db, "prompt")) == len(expected)


async def test_reminders_go_only_to_those_without_a_complete_record(make_config, demo, db):
    config = make_config()
    await tick(db, config, local(DAY, 8, 0))
    done, incomplete, other_day = demo.resident_ids[:3]
    await save(db, done, DAY)
    await save(db, incomplete, DAY, status="incomplete")
    await save(db, other_day, DAY - timedelta(days=1))
    counts = await tick(db, config, local(DAY, 10, 0))
    reminded = await keys(db, "reminder1000")
    assert counts["reminder"] == len(reminded)
    assert done not in reminded
    assert {incomplete, other_day} <= set(reminded)
    assert set(reminded) == await everyone(db) - {done}
    assert "还没有完成健康打卡" in reminded[incomplete].payload["text"]
    # 14:00: the one who answered in between is left out too.
    await save(db, incomplete, DAY)
    await tick(db, config, local(DAY, 14, 0))
    assert set(await keys(db, "reminder1400")) == await everyone(db) - {done, incomplete}


async def test_a_late_scheduler_sends_the_prompt_without_reminders_on_top(make_config, demo, db):
    config = make_config()
    counts = await tick(db, config, local(DAY, 15, 0))
    assert counts["prompt"] == len(await everyone(db))
    assert "reminder" not in counts
    assert await keys(db, "reminder1000") == {} and await keys(db, "reminder1400") == {}
    assert await tick(db, config, local(DAY, 15, 1)) == {}


async def test_quiet_hours_hold_pushes_until_they_end(make_config, demo, db):
    config = make_config(
        checkin={
            "schedule": {
                "prompt_at": "06:30",
                "reminders": ["22:30"],
                "quiet_hours": ["22:00", "07:00"],
                "summary_at": "23:00",
            }
        }
    )
    await tick(db, config, local(DAY, 6, 30))
    prompts = await keys(db, "prompt")
    assert prompts and all(r.next_attempt_at == local(DAY, 7, 0) for r in prompts.values())
    # A reminder that could only go out tomorrow morning is dropped, not sent late.
    counts = await tick(db, config, local(DAY, 22, 30))
    assert "reminder" not in counts and await keys(db, "reminder2230") == {}
    # The warden's summary waits for the morning instead.
    await tick(db, config, local(DAY, 23, 0))
    summaries = await outbox_rows(db, "checkin:summary-")
    assert summaries
    assert all(r.next_attempt_at == local(DAY + timedelta(days=1), 7, 0) for r in summaries)


async def test_grid_schedule_is_inherited_from_its_community(make_config, demo, db):
    config = make_config()
    g0101, g0102, g0103 = demo.grids[0], demo.grids[1], demo.grids[2]
    async with db.write() as conn:
        await conn.execute(
            update(regions)
            .where(regions.c.id == g0101.parent_id)
            .values(settings={"checkin": {"prompt_at": "09:00"}})
        )
        await conn.execute(
            update(regions)
            .where(regions.c.id == g0102.id)
            .values(settings={"checkin": {"prompt_at": "07:30"}})
        )
        # A broken override is ignored (the inherited schedule applies), not fatal.
        await conn.execute(
            update(regions)
            .where(regions.c.id == g0103.id)
            .values(settings={"checkin": {"prompt_at": 900}})
        )
    await tick(db, config, local(DAY, 8, 0))
    prompted_grids = await _grids_of(db, set(await keys(db, "prompt")))
    assert g0101.id not in prompted_grids
    assert {g0102.id, g0103.id} <= prompted_grids
    await tick(db, config, local(DAY, 9, 0))
    assert g0101.id in await _grids_of(db, set(await keys(db, "prompt")))


async def test_daily_summary_tells_the_warden_who_answered_and_who_did_not(make_config, demo, db):
    config = make_config()
    grid = demo.grids[0]
    residents = [pid for pid in demo.resident_ids if await _grid_of(db, pid) == grid.id]
    await save(db, residents[0], DAY)
    await save(db, residents[1], DAY, risk="high")
    await tick(db, config, local(DAY, 20, 0))
    warden = demo.wardens[grid.code]
    summaries = await outbox_rows(db, f"checkin:summary-g{grid.id}:")
    [row] = [r for r in summaries if r.person_id == warden]
    text = row.payload["text"]
    assert "打卡汇总" in text and "已完成2人" in text and "较高风险1人" in text
    missing_name = await _name(db, residents[2])
    assert missing_name in text


async def test_two_schedulers_at_once_never_prompt_twice(make_config, demo, database_url):
    config = make_config()
    first, second = Database(database_url), Database(database_url)
    try:
        results = await asyncio.gather(
            tick(first, config, local(DAY, 8, 0)), tick(second, config, local(DAY, 8, 0))
        )
        expected = len(await everyone(first))
        assert sum(r["prompt"] for r in results) == expected
        async with first.read() as conn:
            rows = (
                await conn.execute(
                    select(func.count(), func.count(store.outbox.c.key.distinct())).where(
                        store.outbox.c.key.startswith("checkin:prompt:")
                    )
                )
            ).one()
        assert tuple(rows) == (expected, expected)
        # Both again, the batch marks wiped: the outbox keys still hold.
        async with first.write() as conn:
            await conn.execute(delete(store.runs))
        await asyncio.gather(
            tick(first, config, local(DAY, 8, 5)), tick(second, config, local(DAY, 8, 5))
        )
        assert await count(first, store.outbox) == expected
    finally:
        await first.dispose()
        await second.dispose()


async def test_opted_out_residents_get_nothing(make_config, demo, db):
    config = make_config()
    quiet = demo.resident_ids[0]
    async with db.write() as conn:
        await repo.set_opted_out(conn, quiet, True)
    for hour in (8, 10, 14, 20):
        await tick(db, config, local(DAY, hour, 0))
    assert [r for r in await outbox_rows(db) if r.person_id == quiet] == []


async def test_quarantine_from_start_to_release_with_a_missed_answer(
    make_config, start_app, demo, db
):
    config = make_config()
    client, _ = await start_app(config)
    grid = demo.grids[0]
    warden = demo.wardens[grid.code]
    resident = demo.resident_ids[0]
    assert await _grid_of(db, resident) == grid.id
    reply = await send(client, warden, f"隔离 {resident} 明天 2天")
    day1 = today() + timedelta(days=1)
    day2, release_day = day1 + timedelta(days=1), day1 + timedelta(days=2)
    assert "已登记居家隔离" in reply
    assert f"{release_day.month}月{release_day.day}日解除" in reply
    [q] = await quarantine_rows(db)
    assert (q.person_id, q.start_day, q.end_day) == (resident, day1, release_day)
    assert q.status == "active"
    started = await outbox_rows(db, "checkin:qstart:")
    assert [r.person_id for r in started] == [resident]

    # Day 1: the morning slot replaces the grid prompt; it is answered, so no alert.
    await tick(db, config, local(day1, 8, 0))
    assert resident in await keys(db, "qslot0", day1)
    assert resident not in await keys(db, "prompt", day1)
    await save(db, resident, day1, slot=0)
    await tick(db, config, local(day1, 10, 0))
    assert resident not in await keys(db, "reminder1000", day1)
    # The afternoon slot (temperature only) is missed: the warden hears the same day.
    await tick(db, config, local(day1, 15, 0))
    slot1 = (await keys(db, "qslot1", day1))[resident]
    assert "体温" in slot1.payload["text"] and "第1天" in slot1.payload["text"]
    await tick(db, config, local(day1, 16, 59))
    assert await outbox_rows(db, "checkin:qmiss") == []
    await tick(db, config, local(day1, 17, 0))
    [missed] = await outbox_rows(db, "checkin:qmiss")
    assert missed.person_id == warden and missed.key.endswith(day1.isoformat())
    assert "还没有完成" in missed.payload["text"] and "15:00" in missed.payload["text"]

    # Day 2: both slots answered, no alert.
    for hour, slot in ((8, 0), (15, 1)):
        await tick(db, config, local(day2, hour, 0))
        await save(db, resident, day2, slot=slot)
    await tick(db, config, local(day2, 17, 0))
    assert len(await outbox_rows(db, "checkin:qmiss")) == 1

    # Release day: back on the grid's prompt; at 09:00 resident and warden are told.
    await tick(db, config, local(release_day, 8, 0))
    assert resident in await keys(db, "prompt", release_day)
    assert resident not in await keys(db, "qslot0", release_day)
    assert await outbox_rows(db, "checkin:release") == []
    counts = await tick(db, config, local(release_day, 9, 0))
    assert counts["quarantine_release"] == 2
    released = {r.person_id: r for r in await outbox_rows(db, "checkin:release")}
    assert set(released) == {resident, warden}
    assert "期满" in released[resident].payload["text"]
    [q] = await quarantine_rows(db)
    assert q.status == "released"
    assert await tick(db, config, local(release_day, 9, 1)) == {}


async def test_quarantine_release_follows_the_start_date_not_the_calendar(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    resident = demo.resident_ids[0]
    start = today() - timedelta(days=3)
    reply = await send(
        client, demo.wardens["G0101"], f"健康观察 {resident} {start.isoformat()} 十四天"
    )
    assert "已登记健康观察" in reply
    [q] = await quarantine_rows(db)
    assert q.kind == "observation" and q.end_day == start + timedelta(days=14)


async def _grid_of(db, person_id: int) -> int:
    async with db.read() as conn:
        return (
            await conn.execute(select(people.c.region_id).where(people.c.id == person_id))
        ).scalar()


async def _grids_of(db, person_ids: set[int]) -> set[int]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(people.c.region_id).where(people.c.id.in_(person_ids)).distinct()
        )
        return set(rows.scalars())


async def _name(db, person_id: int) -> str:
    async with db.read() as conn:
        return (await conn.execute(select(people.c.name).where(people.c.id == person_id))).scalar()


async def test_prompt_goes_to_the_account_last_seen(make_config, demo, db):
    from storage.models import Identity

    identities = Identity.__table__
    config = make_config()
    moved, never_seen = demo.resident_ids[0], demo.resident_ids[1]
    async with db.write() as conn:
        await repo.bind_identity(conn, moved, "bridge", "wx-moved")  # seen now: the newest
        await repo.bind_identity(conn, never_seen, "bridge", "wx-unseen")
        await conn.execute(
            update(identities)
            .where(identities.c.external_id == "wx-unseen")
            .values(last_seen_at=None)
        )
    await tick(db, config, local(DAY, 8, 0))
    prompts = await keys(db, "prompt")
    assert (prompts[moved].channel, prompts[moved].target) == ("bridge", "wx-moved")
    assert (prompts[never_seen].channel, prompts[never_seen].target) == (
        "sim",
        f"sim-{never_seen}",
    )
    async with db.read() as conn:
        from storage.outbox import person_target

        for pid in (moved, never_seen):
            target = await person_target(conn, pid)
            assert (target.channel, target.address) == (prompts[pid].channel, prompts[pid].target)


async def test_a_city_wide_prompt_walks_people_in_id_slices(make_config, demo, db):
    """More grids than FEW_GRIDS: the statement runs per slice of ids; every resident, on
    either side of a slice boundary, is prompted exactly once."""
    from flows.checkin_schedule import FEW_GRIDS, PEOPLE_PER_TRANSACTION
    from storage.models import Identity

    config = make_config()
    step = PEOPLE_PER_TRANSACTION
    far_ids = [step, step + 1, 2 * step, 2 * step + 1, 3 * step - 1]
    async with db.write() as conn:
        community = await repo.get_region(conn, demo.grids[0].parent_id)
        extra = [
            await repo.create_region(
                conn, code=f"GX{n:02d}", name=f"新网格{n}", level="grid", parent=community
            )
            for n in range(FEW_GRIDS + 1)
        ]
        for n, person_id in enumerate(far_ids):
            grid = extra[n % len(extra)]
            await conn.execute(
                people.insert().values(
                    id=person_id,
                    name=f"远号{n}",
                    region_id=grid.id,
                    opted_out=False,
                    created_at=utcnow(),
                )
            )
            await conn.execute(
                Identity.__table__.insert().values(
                    person_id=person_id,
                    channel="sim",
                    external_id=f"sim-{person_id}",
                    display_name="",
                    created_at=utcnow(),
                    last_seen_at=utcnow(),
                )
            )
    counts = await tick(db, config, local(DAY, 8, 0))
    expected = await everyone(db)
    assert set(far_ids) <= expected
    assert counts["prompt"] == len(expected) == len(await keys(db, "prompt"))
