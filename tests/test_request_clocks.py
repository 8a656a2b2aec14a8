"""Escalation clocks of residents' requests, on SQLite and PostgreSQL: the clock follows every
change of the request, the sweep moves it in set-based pages that are safe to run many at once,
to repeat after a crash, and alongside a handler who holds the request; the migrations that
introduced the clocks and their copies of the request's columns move existing requests onto
them (and back)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from datetime import datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from test_requests import (
    file_direct,
    file_in_chat,
    new_staff,
    pushed,
    request_row,
    resident_in,
    say,
)

from bot.config import RequestsConfig
from flows.requests import Desk, local_time, sweep_deadlines
from flows.texts import Texts
from storage import repo
from storage import requests_repo as rq
from storage.db import Database
from storage.migrate import alembic_config
from storage.models import OutboxMessage, Role, utcnow
from storage.requests_models import RequestClock, RequestEvent
from storage.schema import metadata

clocks_t = RequestClock.__table__
events_t = RequestEvent.__table__
outbox_t = OutboxMessage.__table__


async def clock(db, number: str):
    async with db.read() as conn:
        req = await rq.get_request(conn, number=number)
        assert req is not None
        return (await conn.execute(select(clocks_t).where(clocks_t.c.request_id == req.id))).one()


async def handler_list(db, person_id: int) -> list[str]:
    async with db.read() as conn:
        return [r.number for r in await rq.list_for_handler(conn, person_id, limit=50)]


async def kinds_by_request(db) -> dict[int, list[str]]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(events_t.c.request_id, events_t.c.kind).order_by(events_t.c.id)
        )
        found: dict[int, list[str]] = {}
        for row in rows:
            found.setdefault(row.request_id, []).append(row.kind)
        return found


# -- the clock follows the request ---------------------------------------------------------


async def test_clock_follows_accept_transfer_resolve_reopen_and_close(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    resident = await resident_in(db, demo, "G0101")
    warden, other_warden = demo.wardens["G0101"], demo.wardens["G0102"]
    number = await file_in_chat(client, resident, "6", "楼道灯坏了", "2")
    req = await request_row(db, number)
    c = await clock(db, number)
    assert (c.level, c.handler_id, c.stage, c.escalate_at, c.escalations) == (
        "grid",
        warden,
        "accept",
        req.accept_due_at,
        0,
    )
    assert number in await handler_list(db, warden)

    await say(client, warden, f"{number} 受理")
    req, c = await request_row(db, number), await clock(db, number)
    assert (c.stage, c.handler_id, c.escalate_at) == ("resolve", warden, req.resolve_due_at)

    await say(client, warden, f"{number} 转交 G0102")
    req, c = await request_row(db, number), await clock(db, number)
    assert (c.level, c.handler_id, c.stage, c.escalate_at) == (
        "grid",
        other_warden,
        "accept",
        req.accept_due_at,
    )
    assert number not in await handler_list(db, warden)
    assert number in await handler_list(db, other_warden)

    await say(client, other_warden, f"{number} 办结 已换灯泡")
    c = await clock(db, number)
    assert (c.stage, c.escalate_at, c.handler_id) == (None, None, other_warden)
    # a stopped clock is out of the handler's list and out of every sweep
    assert number not in await handler_list(db, other_warden)
    report = await sweep_deadlines(db, Texts(), make_config(), now=utcnow() + timedelta(days=3))
    assert (report.escalated, report.exhausted) == (0, 0)

    await say(client, resident, "重新处理")
    req, c = await request_row(db, number), await clock(db, number)
    assert (c.stage, c.escalate_at, c.handler_id) == ("resolve", req.resolve_due_at, other_warden)
    assert number in await handler_list(db, other_warden)

    await say(client, other_warden, f"{number} 办结 已换灯座")
    await say(client, resident, "满意")
    req, c = await request_row(db, number), await clock(db, number)
    assert req.status == "closed"
    assert (c.stage, c.escalate_at, c.level, c.handler_id) == (None, None, "grid", other_warden)


async def test_clock_copies_follow_a_transfer_and_the_sweep_climbs_the_new_chain(
    make_config, start_app, demo, db
):
    """The clock's copies of category, urgency and place move with the request, so that a
    request transferred to another street escalates to that street's admin."""
    client, _ = await start_app(make_config())
    east_admin = await new_staff(db, "东湖街道管理员", Role.ADMIN, "S01")
    south_admin = await new_staff(db, "南岸街道管理员", Role.ADMIN, "S02")
    resident = await resident_in(db, demo, "G0101")
    number = await file_direct(db, resident, category="medical", urgency="normal")
    req, c = await request_row(db, number), await clock(db, number)
    assert (c.category, c.urgency, c.place_id) == ("medical", "normal", req.community_id)

    assert "已转交" in await say(client, demo.admin_id, f"{number} 转交 G0201")
    req, c = await request_row(db, number), await clock(db, number)
    async with db.read() as conn:
        community = await repo.get_region_by_code(conn, "C0201")
    assert community is not None and req.community_id == community.id
    assert (c.category, c.urgency, c.place_id) == ("medical", "normal", community.id)

    # nobody answers for C0201: the grid's request goes up to its street, S02
    late = req.accept_due_at + timedelta(minutes=1)
    report = await sweep_deadlines(db, Texts(), make_config(), now=late)
    assert (report.escalated, report.exhausted) == (1, 0)
    c = await clock(db, number)
    assert (c.level, c.handler_id) == ("street", south_admin)
    assert c.handler_id != east_admin


async def test_volunteer_delivery_stops_the_clock(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    resident = await resident_in(db, demo, "G0102")
    warden = demo.wardens["G0102"]
    number = await file_in_chat(client, resident, "1", "需要买菜", "蔬菜", "两斤", "1")
    await say(client, warden, f"{number} 派给志愿者 {demo.volunteer_id}")
    assert (await clock(db, number)).stage == "resolve"
    await say(client, demo.volunteer_id, f"{number} 已送达")
    c = await clock(db, number)
    assert (c.stage, c.escalate_at) == (None, None)


async def test_an_escalated_request_accepted_upstairs_keeps_its_level_and_resolve_clock(
    make_config, start_app, demo, db
):
    config = make_config()
    client, _ = await start_app(config)
    community_admin = await new_staff(db, "社区书记", Role.ADMIN, "C0101")
    t0 = utcnow()
    number = await file_direct(db, await resident_in(db, demo, "G0101"), now=t0, config=config)
    report = await sweep_deadlines(db, Texts(), config, now=t0 + timedelta(minutes=61))
    assert report.escalated == 1
    assert number in await handler_list(db, community_admin)
    assert number not in await handler_list(db, demo.wardens["G0101"])
    assert "已受理" in await say(client, community_admin, f"{number} 受理")
    req, c = await request_row(db, number), await clock(db, number)
    assert (c.level, c.handler_id, c.stage, c.escalations) == (
        "community",
        community_admin,
        "resolve",
        1,
    )
    assert c.escalate_at == req.resolve_due_at


# -- the sweep -----------------------------------------------------------------------------


async def test_many_sweeps_with_several_workers_each_move_every_request_once_per_deadline(
    make_config, start_app, demo, db
):
    config = make_config(requests={"sweep_batch": 5, "sweep_workers": 3})
    await start_app(config)
    # somebody responsible at every level, so that every request climbs the same way
    async with db.read() as conn:
        codes = (
            await conn.execute(
                select(repo.regions.c.code).where(repo.regions.c.level.in_(["community", "street"]))
            )
        ).scalars()
    admins = {code: await new_staff(db, f"管理员{code}", Role.ADMIN, code) for code in codes}
    t0 = utcnow()
    residents = demo.resident_ids[:36]
    for resident in residents:
        await file_direct(db, resident, now=t0, config=config)
    others = [Database(config.database.url) for _ in range(2)]
    try:
        for minutes in (61, 122):
            now = t0 + timedelta(minutes=minutes)
            reports = await asyncio.gather(
                *(sweep_deadlines(d, Texts(), config, now=now) for d in [db, *others])
            )
            assert sum(r.escalated + r.exhausted for r in reports) == len(residents)
    finally:
        for other in others:
            await other.dispose()
    kinds = await kinds_by_request(db)
    assert len(kinds) == len(residents)
    for history in kinds.values():
        assert history.count("escalated") == 2, history
    async with db.read() as conn:
        moved = list(await conn.execute(select(clocks_t.c.escalations, clocks_t.c.level)))
        keys = [
            r.key
            for r in await conn.execute(
                select(outbox_t.c.key).where(outbox_t.c.key.like("request-escalated:%"))
            )
        ]
    assert Counter(moved) == Counter({(2, "street"): len(residents)})
    # alerts: unique keys, each to one of the new handlers, every escalation in exactly one
    assert len(keys) == len(set(keys))
    alerted = {int(k.split(":")[1]) for k in keys}
    assert alerted <= set(admins.values()) and len(alerted) > 2
    async with db.read() as conn:
        texts = [
            r.payload["text"]
            for r in await conn.execute(
                select(outbox_t.c.payload).where(outbox_t.c.key.like("request-escalated:%"))
            )
        ]
    assert sum(int(re.search(r"(\d+)件", t).group(1)) for t in texts) == 2 * len(residents)


async def test_a_run_that_died_after_its_pages_is_alerted_by_the_next_run(
    make_config, start_app, demo, db
):
    config = make_config()
    _, rt = await start_app(config)
    community_admin = await new_staff(db, "社区书记", Role.ADMIN, "C0101")
    t0 = utcnow()
    numbers = [
        await file_direct(db, await resident_in(db, demo, "G0101", n), now=t0, config=config)
        for n in range(3)
    ]
    now = t0 + timedelta(minutes=61)
    windows = {("accept", "supplies", "urgent"): now + timedelta(minutes=60)}
    async with db.write() as conn:  # the pages commit; the process dies before its alerts
        await rq.hold_alert_mark(conn)
        moved = await rq.escalate_due(conn, now=now, windows=windows, default_due=now, batch=100)
    assert (moved.count, moved.exhausted) == (3, 0)
    assert [t for t in await pushed(rt, community_admin) if "超期升级" in t] == []

    report = await sweep_deadlines(db, Texts(), config, now=now + timedelta(seconds=30))
    assert (report.escalated, report.alerts) == (0, 1)
    [alert] = [t for t in await pushed(rt, community_admin) if "超期升级" in t]
    assert "3件" in alert and all(n in alert for n in numbers)
    assert (await sweep_deadlines(db, Texts(), config, now=now)).alerts == 0


async def test_a_page_walks_the_due_clocks_from_where_the_pages_before_it_stopped(demo, db):
    """A page starts at ``due_from`` and, on PostgreSQL, reports the latest escalation time
    it claimed (where the sweep's next page starts); clocks before ``due_from`` wait for the
    next sweep.  SQLite pages report none: its one worker always walks from the start."""
    t0 = utcnow()
    ids = []
    for n in range(4):
        number = await file_direct(db, await resident_in(db, demo, "G0101", n), now=t0)
        ids.append((await request_row(db, number)).id)
    async with db.write() as conn:  # clock n due at t0 + n minutes
        for n, request_id in enumerate(ids):
            await conn.execute(
                clocks_t.update()
                .where(clocks_t.c.request_id == request_id)
                .values(escalate_at=t0 + timedelta(minutes=n))
            )
    now = t0 + timedelta(hours=1)
    page = rq.EscalationPage(
        postgres=not db.is_sqlite, now=now, windows={}, default_due=now, batch=2
    )
    async with db.write() as conn:
        moved = await page.run(conn, due_from=t0 + timedelta(minutes=1))
    assert moved.count == 2
    assert moved.last_due == (None if db.is_sqlite else t0 + timedelta(minutes=2))
    async with db.read() as conn:
        rows = await conn.execute(select(clocks_t.c.request_id, clocks_t.c.escalations))
        escalations = {r.request_id: r.escalations for r in rows}
    assert [escalations[i] for i in ids] == [0, 1, 1, 0]
    async with db.write() as conn:
        assert (await page.run(conn)).count == 2  # from the start: the first and the last


async def test_more_due_than_counts_only_clocks_whose_time_has_come(demo, db):
    t0 = utcnow()
    for n in range(5):
        await file_direct(db, await resident_in(db, demo, "G0101", n), now=t0 + timedelta(hours=n))
    # each is due an hour after filing: at t0 + 4h30, the first four are due, the fifth is not
    now = t0 + timedelta(hours=4, minutes=30)
    async with db.read() as conn:
        assert await rq.more_due_than(conn, now=now, count=3)
        assert not await rq.more_due_than(conn, now=now, count=4)
        assert not await rq.more_due_than(conn, now=t0, count=0)


async def test_one_alert_per_handler_names_the_first_requests_in_timeline_order(
    make_config, start_app, demo, db
):
    """The alert counts every escalation to its handler, lists the request numbers of the
    first few escalation events in timeline order ("等" when there are more), and the next
    escalation time of the first."""
    config = make_config(requests={"sweep_batch": 3})
    await start_app(config)
    admin = await new_staff(db, "社区书记", Role.ADMIN, "C0101")
    t0 = utcnow()
    numbers = {}
    for n in range(8):
        number = await file_direct(
            db, await resident_in(db, demo, "G0101", n % 2), now=t0 + timedelta(seconds=n)
        )
        numbers[(await request_row(db, number)).id] = number
    report = await sweep_deadlines(db, Texts(), config, now=t0 + timedelta(minutes=61))
    assert (report.escalated, report.alerts) == (8, 1)
    async with db.read() as conn:
        timeline = list(
            await conn.execute(
                select(events_t.c.id, events_t.c.request_id)
                .where(events_t.c.kind == "escalated")
                .order_by(events_t.c.id)
            )
        )
        (key, payload), *others = list(
            await conn.execute(
                select(outbox_t.c.key, outbox_t.c.payload).where(
                    outbox_t.c.key.like("request-escalated:%")
                )
            )
        )
    assert others == []
    assert key == f"request-escalated:{admin}:e{timeline[0].id}"
    first = [numbers[e.request_id] for e in timeline[:5]]
    assert "8件诉求" in payload["text"]
    assert f"{'、'.join(first)}等。" in payload["text"]
    first_clock = await clock(db, first[0])
    assert local_time(first_clock.escalate_at, config.tz) in payload["text"]


async def test_a_page_rolled_back_by_a_crash_leaves_everything_due_for_the_next_sweep(
    make_config, start_app, demo, db
):
    config = make_config()
    _, rt = await start_app(config)
    community_admin = await new_staff(db, "社区书记", Role.ADMIN, "C0101")
    t0 = utcnow()
    numbers = [
        await file_direct(db, resident, now=t0, config=config) for resident in demo.resident_ids[:4]
    ]
    now = t0 + timedelta(minutes=61)
    windows = {
        (stage, category, urgency): now + timedelta(minutes=60)
        for stage in ("accept", "resolve")
        for category in ("supplies", "other")
        for urgency in ("urgent", "normal")
    }

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        async with db.write() as conn:
            await rq.hold_alert_mark(conn)
            moved = await rq.escalate_due(
                conn, now=now, windows=windows, default_due=now, batch=100
            )
            assert moved.count == len(numbers)
            raise Crash  # the process dies before the page commits
    for number in numbers:
        c = await clock(db, number)
        assert (c.level, c.escalations, c.escalate_at) == ("grid", 0, t0 + timedelta(minutes=60))
    assert await kinds_by_request(db) == {
        (await request_row(db, n)).id: ["created", "assigned"] for n in numbers
    }
    # the next sweep (another process after a restart) does the whole page once
    restarted = Database(config.database.url)
    try:
        report = await sweep_deadlines(restarted, Texts(), config, now=now)
    finally:
        await restarted.dispose()
    assert report.escalated == len(numbers)
    alerts = [t for t in await pushed(rt, community_admin) if "超期升级" in t]
    assert len(alerts) == 1 and all(n in alerts[0] for n in numbers)
    assert (await sweep_deadlines(db, Texts(), config, now=now)).escalated == 0


async def test_the_sweep_skips_a_request_a_handler_holds_and_sees_what_they_did(
    make_config, start_app, demo, db
):
    if db.is_sqlite:
        pytest.skip("SQLite has one writer at a time: the sweep waits instead of skipping")
    config = make_config()
    await start_app(config)
    await new_staff(db, "社区书记", Role.ADMIN, "C0101")
    t0 = utcnow()
    held = await file_direct(db, await resident_in(db, demo, "G0101"), now=t0, config=config)
    free = await file_direct(db, await resident_in(db, demo, "G0101", 1), now=t0, config=config)
    warden = demo.wardens["G0101"]
    late = t0 + timedelta(minutes=61)
    async with db.write() as conn:
        # the warden accepts, late, while the sweep runs: the desk holds the request's rows
        actor = await repo.load_person(conn, warden)
        desk = Desk(conn, RequestsConfig(), config.tz, late, row_lock=True)
        await desk.accept(actor, held)
        report = await sweep_deadlines(db, Texts(), config, now=late)
        assert (report.escalated, report.exhausted) == (1, 0)
    assert (await clock(db, free)).level == "community"
    c = await clock(db, held)
    req = await request_row(db, held)
    assert (c.level, c.handler_id, c.stage, c.escalations) == ("grid", warden, "resolve", 0)
    assert c.escalate_at == req.resolve_due_at
    assert (await sweep_deadlines(db, Texts(), config, now=late)).escalated == 0


# -- schema and migration ------------------------------------------------------------------


async def test_request_tables_match_their_migration(db):
    async with db.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert [d for d in diff if "request" in str(d)] == []


OLD_REQUESTS = [
    # number, status, level, handler, escalate_at (minutes from now), escalations
    ("Q20261128-0001", "pending", "grid", 3, 30, 0),
    ("Q20261128-0002", "accepted", "street", 5, 90, 2),
    ("Q20261128-0003", "resolved", "community", 4, None, 1),
    ("Q20261128-0004", "closed", "city", 7, None, 4),
]
# category, urgency, community, street of each old request (and what its clock copies)
OLD_PLACES = [
    ("medical", "urgent", 40, 30),
    ("supplies", "normal", None, 30),
    ("other", "normal", 41, 30),
    ("daily", "urgent", None, None),
]
INSERT_OLD_REQUEST = text(
    "INSERT INTO requests (id, number, resident_id, region_id, community_id, street_id, "
    "category, urgency, description, attachments, channel, status, level, handler_id, "
    "accept_due_at, resolve_due_at, escalate_at, escalations, reopen_count, created_at) "
    "VALUES (:id, :number, 1, 1, :community, :street, :category, :urgency, 'x', '[]', 'sim', "
    ":status, :level, :handler, :now, :now, :escalate_at, :escalations, 0, :now)"
)


async def _file_old_requests(url: str, now: datetime) -> None:
    """Requests as the schema before the clocks stored them."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO regions (id, code, name, level, parent_id, path, settings) "
                    "VALUES (1, 'G', 'G', 'grid', NULL, '/1/', '{}')"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO people (id, name, region_id, opted_out, created_at) "
                    "VALUES (1, 'r', 1, false, :now)"
                ),
                {"now": now},
            )
            for i, (number, status, level, handler, minutes, escalations) in enumerate(
                OLD_REQUESTS, start=1
            ):
                due = None if minutes is None else now + timedelta(minutes=minutes)
                category, urgency, community, street = OLD_PLACES[i - 1]
                await conn.execute(
                    INSERT_OLD_REQUEST,
                    {
                        "id": i,
                        "category": category,
                        "urgency": urgency,
                        "community": community,
                        "street": street,
                        "number": number,
                        "status": status,
                        "level": level,
                        "handler": handler,
                        "now": now,
                        "escalate_at": due,
                        "escalations": escalations,
                    },
                )
                await conn.execute(
                    text(
                        "INSERT INTO request_events (id, request_id, at, kind, detail) "
                        "VALUES (:event_id, :id, :now, 'escalated', '{}')"
                    ),
                    {"event_id": 10 * i, "id": i, "now": now},
                )
    finally:
        await engine.dispose()


async def _read(url: str, sql: str) -> tuple[list[tuple], set[str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text(sql))
            # raw SQLite hands times back as text: compare both engines' times as text
            rows = [tuple(str(v) if isinstance(v, datetime) else v for v in r) for r in result]
            return rows, set(result.keys())
    finally:
        await engine.dispose()


async def _check_migration(url: str) -> None:
    cfg = alembic_config(url)
    await asyncio.to_thread(command.upgrade, cfg, "0004")
    now = utcnow().replace(tzinfo=None, microsecond=0)
    await _file_old_requests(url, now)

    await asyncio.to_thread(command.upgrade, cfg, "heads")
    rows, _ = await _read(
        url,
        "SELECT request_id, level, handler_id, stage, escalate_at, escalations "
        "FROM request_clocks ORDER BY request_id",
    )
    assert rows == [
        (1, "grid", 3, "accept", str(now + timedelta(minutes=30)), 0),
        (2, "street", 5, "resolve", str(now + timedelta(minutes=90)), 2),
        (3, "community", 4, None, None, 1),
        (4, "city", 7, None, None, 4),
    ]
    # escalations already in the timeline were alerted when they happened
    rows, _ = await _read(url, "SELECT id, alerted_event_id FROM request_sweep_state")
    assert rows == [(1, 10 * len(OLD_REQUESTS))]
    _, columns = await _read(url, "SELECT * FROM requests WHERE 1 = 0")
    assert not columns & {"level", "handler_id", "escalate_at", "escalations"}
    # the clock's copies of what the sweep needs: category, urgency, lowest ancestor
    rows, _ = await _read(
        url, "SELECT category, urgency, place_id FROM request_clocks ORDER BY request_id"
    )
    assert rows == [
        (cat, urgency, community or street) for cat, urgency, community, street in OLD_PLACES
    ]

    await asyncio.to_thread(command.downgrade, cfg, "0006_request_clocks")
    _, columns = await _read(url, "SELECT * FROM request_clocks WHERE 1 = 0")
    assert not columns & {"category", "urgency", "place_id"}
    rows, _ = await _read(url, "SELECT request_id, level FROM request_clocks ORDER BY request_id")
    assert rows == [(i, old[2]) for i, old in enumerate(OLD_REQUESTS, start=1)]

    await asyncio.to_thread(command.downgrade, cfg, "request_clocks@-1")
    rows, _ = await _read(
        url,
        "SELECT number, status, level, handler_id, escalate_at, escalations FROM requests "
        "ORDER BY id",
    )
    assert rows == [
        (
            number,
            status,
            level,
            handler,
            None if minutes is None or status not in ("pending", "accepted")
            else str(now + timedelta(minutes=minutes)),
            escalations,
        )
        for number, status, level, handler, minutes, escalations in OLD_REQUESTS
    ]  # fmt: skip


async def test_migration_moves_existing_requests_onto_clocks_and_back(database_url, tmp_path):
    if database_url.startswith("sqlite"):
        await _check_migration(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
        return
    # PostgreSQL: a database of its own beside the test database, dropped afterwards
    url = make_url(database_url)
    name = f"{url.database}_clocks_migration"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            await _check_migration(url.set(database=name).render_as_string(hide_password=False))
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
