"""Console pages through the real app on both databases: the overview, the check-in board and
its reminder, the audit log, scope, masking and the error pages."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

from sqlalchemy import select

from bot.config import parse_config
from storage.checkin import people
from storage.db import Database
from storage.repo import audit
from storage.seed import seed_demo
from tests.checkin_support import NORMAL, converse, outbox_rows, today
from tests.console_support import (
    SESSION_KEY,
    chart_data,
    logged_in,
    start_console,
    without_tags,
)

FEVER = ["38.6", "发烧 咳嗽", "是", "否", "1"]  # high risk: symptoms and contact
ROOT = Path(__file__).resolve().parent.parent


async def audit_rows(db, action: str) -> list:
    async with db.read() as conn:
        return list(
            await conn.execute(select(audit).where(audit.c.action == action).order_by(audit.c.id))
        )


async def residents_of(db, demo, code: str) -> list[int]:
    grid = next(g for g in demo.grids if g.code == code)
    return [pid for pid in demo.resident_ids if pid in await _living_in(db, grid.id)]


async def _living_in(db, region_id: int) -> set[int]:
    async with db.read() as conn:
        rows = await conn.execute(select(people.c.id).where(people.c.region_id == region_id))
        return {r.id for r in rows}


async def test_overview_shows_rates_trend_and_abnormal_answers(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    g1 = await residents_of(db, demo, "G0101")
    await converse(client, g1[0], "打卡", *NORMAL)
    await converse(client, g1[1], "打卡", *FEVER)
    await logged_in(client, db, demo.admin_id)
    page = await client.get("/console/")
    html = await page.text()
    assert page.status == 200
    data = chart_data(html)
    counts = {g.code: len(await _living_in(db, g.id)) for g in demo.grids}
    assert data["rate"]["codes"] == [g.code for g in demo.grids]
    expected = [
        round(100 * (2 if g.code == "G0101" else 0) / counts[g.code], 1) for g in demo.grids
    ]
    assert data["rate"]["rates"] == expected
    assert len(data["trend"]["days"]) == 14
    total = sum(counts.values())
    assert data["trend"]["rates"][-1] == round(100 * 2 / total, 1)
    assert data["trend"]["rates"][:-1] == [0.0] * 13
    text = without_tags(html)
    assert "高风险" in text and "待确认" in text  # the fever answer and its open alert
    # The echarts bundle and the chart script are served from the app, not a CDN.
    assert "/console/static/vendor/echarts/echarts.min.js" in html
    assert "http://" not in html.split("<main>")[0] and "https://" not in html
    views = await audit_rows(db, "console.overview")
    assert len(views) == 2  # the page after login, and this one
    assert views[-1].actor_id == demo.admin_id and views[-1].detail["abnormal"] == 1


async def test_a_warden_sees_only_their_grid(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    warden = demo.wardens["G0101"]
    await logged_in(client, db, warden)
    data = chart_data(await (await client.get("/console/")).text())
    assert data["rate"]["codes"] == ["G0101"]
    own = await client.get("/console/grids/G0101/checkin")
    assert own.status == 200
    other = await client.get("/console/grids/G0102/checkin")
    assert other.status == 403
    assert "不在您的管辖范围内" in await other.text()
    community = await client.get("/console/grids/C0101/checkin")
    assert community.status == 403  # above the warden's grid: out of scope too
    # "打卡看板" in the menu leads a one-grid warden straight to their board.
    mine = await client.get("/console/checkin", allow_redirects=False)
    assert mine.headers["Location"] == "/console/grids/G0101/checkin"
    # Nothing of another grid was read: only the own board was audited.
    assert [r.target_id for r in await audit_rows(db, "console.checkin.board")] == ["G0101"]


async def test_unknown_region_is_404_and_a_non_grid_is_400(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    await logged_in(client, db, demo.admin_id)
    unknown = await client.get("/console/grids/NOPE/checkin")
    assert unknown.status == 404 and "没有编号为 NOPE 的区域" in await unknown.text()
    street = await client.get("/console/grids/S01/checkin")
    assert street.status == 400 and "不是网格" in await street.text()
    bad_page = await client.get("/console/grids/G0101/checkin?missing_page=abc")
    assert bad_page.status == 400 and "missing_page" in await bad_page.text()


async def test_board_lists_who_answered_and_who_not_with_phones_for_the_warden_only(
    db, demo, start_app, make_config
):
    client, _ = await start_console(start_app, make_config)
    g1 = await residents_of(db, demo, "G0101")
    await converse(client, g1[0], "打卡", *NORMAL)
    await converse(client, g1[1], "打卡", *FEVER)
    async with db.read() as conn:
        rows = {r.id: r for r in await conn.execute(select(people).where(people.c.id.in_(g1)))}
    missing = rows[g1[2]]

    await logged_in(client, db, demo.wardens["G0101"])
    warden_view = await (await client.get("/console/grids/G0101/checkin")).text()
    assert f'href="tel:{missing.phone}"' in warden_view
    answered = warden_view.split("已打卡</h2>")[1]
    assert rows[g1[0]].name in answered and rows[g1[1]].name in answered
    assert missing.name not in answered
    assert "高风险" in warden_view and "待确认" in warden_view

    admin_client, _ = await start_console(start_app, make_config)
    await logged_in(admin_client, db, demo.admin_id)
    admin_view = await (await admin_client.get("/console/grids/G0101/checkin")).text()
    assert missing.phone not in admin_view
    assert missing.phone[:3] + "****" + missing.phone[-4:] in admin_view
    assert "仅对本网格网格员完整显示" in admin_view
    boards = await audit_rows(db, "console.checkin.board")
    assert [(r.actor_id, r.detail["full_phone"]) for r in boards] == [
        (demo.wardens["G0101"], True),
        (demo.admin_id, False),
    ]


async def test_reminder_reaches_each_non_responder_once(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config, page_size=5)
    g1 = await residents_of(db, demo, "G0101")
    await converse(client, g1[0], "打卡", *NORMAL)
    everyone = await _living_in(db, demo.grids[0].id)
    token = await logged_in(client, db, demo.wardens["G0101"])
    response = await client.post(
        "/console/grids/G0101/checkin/remind", data={"csrf_token": token}, allow_redirects=False
    )
    assert response.status == 302
    assert response.headers["Location"] == "/console/grids/G0101/checkin"
    queued = [r for r in await outbox_rows(db) if ":remind" in r.key]
    # Everyone living in the grid without a complete check-in today, and nobody else.
    assert sorted(r.person_id for r in queued) == sorted(everyone - {g1[0]})
    assert all(r.key.endswith(today().isoformat()) for r in queued)
    page = await (await client.get(response.headers["Location"])).text()
    flashes = re.findall(r'<div class="flash[^>]*>(.*?)</div>', page)
    assert flashes and ("已向" in flashes[0] or "免打扰" in flashes[0])

    again = await client.post(
        "/console/grids/G0101/checkin/remind", data={"csrf_token": token}, allow_redirects=False
    )
    assert again.status == 302
    assert len([r for r in await outbox_rows(db) if ":remind" in r.key]) == len(queued)
    events = await audit_rows(db, "console.checkin.remind")
    assert [e.detail["queued"] for e in events] in ([len(queued), 0], [0, 0])


async def test_reminder_needs_csrf_scope_and_a_warden_or_admin(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    token = await logged_in(client, db, demo.wardens["G0101"])
    no_token = await client.post("/console/grids/G0101/checkin/remind")
    assert no_token.status == 403 and "已拒绝这次提交" in await no_token.text()
    other = await client.post("/console/grids/G0102/checkin/remind", data={"csrf_token": token})
    assert other.status == 403 and "不在您的管辖范围内" in await other.text()
    doctor_client, _ = await start_console(start_app, make_config)
    doctor_token = await logged_in(doctor_client, db, demo.doctor_id)
    board = await doctor_client.get("/console/grids/G0101/checkin")
    assert board.status == 200 and "提醒未打卡居民" not in await board.text()
    refused = await doctor_client.post(
        "/console/grids/G0101/checkin/remind", data={"csrf_token": doctor_token}
    )
    assert refused.status == 403
    assert await outbox_rows(db) == []
    assert await audit_rows(db, "console.checkin.remind") == []


async def test_audit_log_is_for_admins_and_filters(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    await logged_in(client, db, demo.admin_id)
    warden_client, _ = await start_console(start_app, make_config)
    await logged_in(warden_client, db, demo.wardens["G0101"])
    await warden_client.get("/console/grids/G0101/checkin")
    refused = await warden_client.get("/console/audit")
    assert refused.status == 403 and "没有查看此页面的权限" in await refused.text()

    everything = without_tags(await (await client.get("/console/audit")).text())
    assert "console.checkin.board" in everything and "console.login" in everything
    by_action = await (await client.get("/console/audit?action=console.checkin")).text()
    assert "console.checkin.board" in by_action and "console.login<" not in by_action
    warden = str(demo.wardens["G0101"])
    by_actor = without_tags(await (await client.get(f"/console/audit?actor={warden}")).text())
    assert f"#{demo.admin_id} " not in by_actor and f"#{warden}" in by_actor
    day = today().isoformat()
    in_range = await client.get(f"/console/audit?from={day}&to={day}")
    assert "console.checkin.board" in await in_range.text()
    past = await (await client.get("/console/audit?from=2020-01-01&to=2020-01-31")).text()
    assert "没有符合条件的记录" in past
    for bad in ("from=2024-13-01", "from=2024-03-02&to=2024-03-01", "page=0"):
        response = await client.get(f"/console/audit?{bad}")
        assert response.status == 400, bad
    assert len(await audit_rows(db, "console.audit.view")) == 5


async def test_audit_log_refuses_absurd_filters_instead_of_a_500(db, demo, start_app, make_config):
    # The day after 9999-12-31 overflowed on both databases, the first day of year 1 in UTC
    # too, and a NUL in a filter made PostgreSQL raise: 500 pages instead of "bad request".
    client, _ = await start_console(start_app, make_config)
    await logged_in(client, db, demo.admin_id)
    for bad in (
        "from=9999-12-31&to=9999-12-31",
        "from=0001-01-01&to=0001-01-01",
        "to=9999-12-31",
        "actor=a%00",
        "action=console%00",
    ):
        response = await client.get(f"/console/audit?{bad}")
        assert response.status == 400, bad
    assert await audit_rows(db, "console.audit.view") == []


async def test_error_pages_are_friendly(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    await logged_in(client, db, demo.admin_id)
    missing = await client.get("/console/no/such/page")
    text = await missing.text()
    assert missing.status == 404 and "页面不存在" in text and "Traceback" not in text
    wrong_method = await client.delete("/console/audit", headers={"X-CSRF-Token": "x"})
    assert wrong_method.status == 403  # the CSRF check comes first for unsafe methods
    assert (await client.get("/console", allow_redirects=False)).headers["Location"] == (
        "/console/"
    )


async def test_a_failing_page_shows_the_500_page_without_internals(sqlite_url, tmp_path, start_app):
    # The database file is swapped for an empty one under the running app: every query then
    # fails for real ("no such table"), and the console must still answer with its own page.
    db = Database(sqlite_url)
    async with db.write() as conn:
        demo = await seed_demo(conn, residents=12)
    config = parse_config(
        {
            "database": {"url": sqlite_url},
            "scheduler": {"enabled": False},
            "console": {"session_key": SESSION_KEY},
        }
    )
    client, rt = await start_app(config)
    await logged_in(client, db, demo.admin_id)
    await db.dispose()
    await rt.db.dispose()
    path = Path(sqlite_url.split("///", 1)[1])
    shutil.move(path, tmp_path / "moved.db")
    await asyncio.to_thread(path.touch)  # an empty file where the database was
    response = await client.get("/console/")
    text = await response.text()
    assert response.status == 500
    assert "系统出了点问题" in text
    assert "Traceback" not in text and "no such table" not in text
