"""The console's requests pages through the real app: the board (tabs, filters, paging, scope),
a request's timeline, and every action (accept, note, transfer, resolve, volunteer, press) with
CSRF, scope, refusals that store nothing, notices to the people concerned and audit entries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from console_support import csrf_of, logged_in, start_console, without_tags
from sqlalchemy import select

from bot.config import RequestsConfig
from flows.requests import Desk, sweep_deadlines
from flows.texts import Texts
from storage import repo, requests_repo
from storage.models import AuditEntry, OutboxMessage, utcnow
from storage.requests_models import RequestEvent, ResidentRequest

requests_t = ResidentRequest.__table__
events_t = RequestEvent.__table__
outbox_t = OutboxMessage.__table__
audit_t = AuditEntry.__table__
TZ = ZoneInfo("Asia/Shanghai")
BOARD = "/console/requests"


# -- helpers -------------------------------------------------------------------------------


async def file_request(
    db,
    resident_id: int,
    *,
    hours_ago: float = 0,
    category: str = "supplies",
    urgency: str = "normal",
    description: str = "家里没米了，想请人帮忙买一袋",
) -> str:
    """File a request through the desk, ``hours_ago`` in the past (past its deadlines)."""
    async with db.write() as conn:
        person = await repo.load_person(conn, resident_id)
        assert person is not None
        now = utcnow() - timedelta(hours=hours_ago)
        desk = Desk(conn, RequestsConfig(), TZ, now, row_lock=not db.is_sqlite)
        req = await desk.file(person, category=category, urgency=urgency, description=description)
    return str(req.number)


async def act(db, actor_id: int, verb: str, number: str, *args: Any) -> None:
    """Do an action through the desk directly (to set the scene)."""
    async with db.write() as conn:
        actor = await repo.load_person(conn, actor_id)
        desk = Desk(conn, RequestsConfig(), TZ, utcnow(), row_lock=not db.is_sqlite)
        await getattr(desk, verb)(actor, number, *args)


async def residents_of(db, demo, grid_code: str) -> list[int]:
    grid = next(g for g in demo.grids if g.code == grid_code)
    async with db.read() as conn:
        rows = await conn.execute(
            select(repo.people.c.id)
            .where(repo.people.c.region_id == grid.id)
            .order_by(repo.people.c.id)
        )
        return [r.id for r in rows if r.id in demo.resident_ids]


async def request_row(db, number: str) -> Any:
    """The request as the repository reads it (with its current level and handler)."""
    async with db.read() as conn:
        row = await requests_repo.get_request(conn, number=number)
    assert row is not None
    return row


async def event_kinds(db, number: str) -> list[str]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(events_t.c.kind)
            .join(requests_t, requests_t.c.id == events_t.c.request_id)
            .where(requests_t.c.number == number)
            .order_by(events_t.c.id)
        )
        return [r.kind for r in rows]


async def outbox_for(db, person_id: int) -> list[str]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(outbox_t.c.payload)
            .where(outbox_t.c.person_id == person_id, outbox_t.c.ref_type == "request")
            .order_by(outbox_t.c.id)
        )
        return [r.payload["text"] for r in rows]


async def audited(db, action: str) -> list[Any]:
    async with db.read() as conn:
        query = select(audit_t).where(audit_t.c.action == action).order_by(audit_t.c.id)
        return list(await conn.execute(query))


async def page(client, url: str, status: int = 200) -> str:
    r = await client.get(url)
    html = await r.text()
    assert r.status == status, html
    return html


async def post(client, url: str, token: str | None, status: int = 302, **fields: str) -> Any:
    data = dict(fields)
    if token is not None:
        data["csrf_token"] = token
    r = await client.post(url, data=data, allow_redirects=False)
    assert r.status == status, await r.text()
    return r


@pytest.fixture
async def console(start_app, make_config):
    client, rt = await start_console(start_app, make_config, page_size=5)
    return client, rt


# -- the board -----------------------------------------------------------------------------


async def test_board_splits_requests_into_tabs_with_filters(console, demo, db):
    client, _ = console
    warden = demo.wardens["G0101"]
    mine = await residents_of(db, demo, "G0101")
    fresh = await file_request(db, mine[0], category="medical", urgency="urgent")
    taken = await file_request(db, mine[1])
    await act(db, warden, "accept", taken)
    late = await file_request(db, mine[2], hours_ago=30)
    done = await file_request(db, mine[3], category="daily")
    await act(db, warden, "resolve", done, "已经帮您买好")
    elsewhere = await file_request(db, (await residents_of(db, demo, "G0201"))[0])
    await logged_in(client, db, warden)

    html = await page(client, BOARD)
    text = without_tags(html)
    assert fresh in html and taken not in html and late not in html and elsewhere not in html
    assert "待受理 1" in text and "办理中 1" in text and "已超期 1" in text and "已办结 1" in text
    assert "就医" in text and "紧急" in text

    assert taken in await page(client, f"{BOARD}?tab=accepted")
    overdue = await page(client, f"{BOARD}?tab=overdue")
    assert late in overdue and "已超期" in without_tags(overdue)
    resolved = await page(client, f"{BOARD}?tab=resolved")
    assert done in resolved and fresh not in resolved

    filtered = await page(client, f"{BOARD}?tab=new&category=supplies")
    assert fresh not in filtered and "待受理 0" in without_tags(filtered)
    assert fresh in await page(client, f"{BOARD}?tab=new&urgency=urgent&category=medical")
    assert fresh in await page(client, f"{BOARD}?tab=new&level=grid")
    assert fresh not in await page(client, f"{BOARD}?tab=new&level=street")

    [entry, *_] = await audited(db, "console.requests.board")
    assert entry.actor_id == warden and entry.detail["tab"] == "new"


async def test_board_pages_and_refuses_bad_parameters(console, demo, db):
    client, _ = console
    mine = await residents_of(db, demo, "G0101")
    numbers = [await file_request(db, mine[i % len(mine)]) for i in range(11)]
    await logged_in(client, db, demo.wardens["G0101"])
    seen: list[str] = []
    for n in (1, 2, 3):
        html = await page(client, f"{BOARD}?page={n}")
        seen += [x for x in numbers if f">{x}<" in html]
        assert f"第 {n} / 3 页" in html
    assert sorted(seen) == sorted(numbers)
    assert "这一页没有诉求了" in await page(client, f"{BOARD}?page=9")
    for bad in ("tab=all", "category=food", "urgency=now", "level=planet", "page=0", "page=x"):
        html = await page(client, f"{BOARD}?{bad}", 400)
        assert "请求有误" in html


async def test_board_is_limited_to_the_users_scope(console, demo, db):
    client, _ = console
    await file_request(db, (await residents_of(db, demo, "G0201"))[0])
    await logged_in(client, db, demo.wardens["G0101"])
    assert "不在您的管辖范围内" in await page(client, f"{BOARD}?region=G0201", 403)
    assert "不在您的管辖范围内" in await page(client, f"{BOARD}?region=D01", 403)
    await page(client, f"{BOARD}?region=NOPE", 404)
    # A NUL in the code was a 500 on PostgreSQL.
    await page(client, f"{BOARD}?region=G01%00", 404)
    assert await audited(db, "console.requests.board") == []


async def test_admin_walks_the_tree_and_doctors_have_no_requests_pages(console, demo, db):
    client, _ = console
    number = await file_request(db, (await residents_of(db, demo, "G0201"))[0])
    await logged_in(client, db, demo.admin_id)
    html = await page(client, BOARD)
    assert number in html and "东湖街道" in html and "南岸街道" in html  # children of D01
    assert number not in await page(client, f"{BOARD}?region=S01")
    street = await page(client, f"{BOARD}?region=S02")
    assert number in street and "江岸区" in street  # the trail back up

    await client.post("/console/logout", data={"csrf_token": csrf_of(html)})
    await logged_in(client, db, demo.doctor_id)
    overview = await page(client, "/console/")
    assert f'href="{BOARD}"' not in overview
    await page(client, BOARD, 403)


# -- one request ---------------------------------------------------------------------------


async def test_timeline_shows_every_step_and_escalation_with_time_and_person(
    console, demo, db, make_config
):
    client, _ = console
    warden = demo.wardens["G0101"]
    number = await file_request(db, (await residents_of(db, demo, "G0101"))[0], hours_ago=30)
    await act(db, warden, "note", number, "已电话联系居民")
    await sweep_deadlines(db, Texts(), make_config(), now=utcnow())
    row = await request_row(db, number)
    assert row.level == "district" and row.handler_id == demo.admin_id
    await logged_in(client, db, demo.admin_id)

    html = await page(client, f"{BOARD}/{number}")
    text = without_tags(html)
    assert "提交诉求" in text and "分派" in text and "备注" in text and "超期升级至区" in text
    assert "已电话联系居民" in text and "区管理员" in text
    created = row.created_at.astimezone(TZ)
    assert f"{created.month}月{created.day}日 {created:%H:%M}" in text
    # The admin handles it now: nobody to press.
    assert f"{BOARD}/{number}/press" not in html
    # The admin sees the phone masked; the grid's warden in full.
    assert "****" in text
    [view] = await audited(db, "request.view")
    assert view.actor_id == demo.admin_id and view.target_id == number


async def test_another_grids_request_is_403_to_view_and_to_act_on(console, demo, db):
    client, _ = console
    number = await file_request(db, (await residents_of(db, demo, "G0101"))[0])
    token = await logged_in(client, db, demo.wardens["G0201"])
    assert "不在您负责的范围内" in await page(client, f"{BOARD}/{number}", 403)
    for verb, fields in (
        ("accept", {}),
        ("note", {"text": "看看"}),
        ("resolve", {"reply": "好"}),
        ("press", {}),
        ("transfer", {"grid": "G0201"}),
    ):
        await post(client, f"{BOARD}/{number}/{verb}", token, 403, **fields)
    assert await event_kinds(db, number) == ["created", "assigned"]
    assert (await request_row(db, number)).status == "pending"
    assert await audited(db, "request.view") == []


async def test_unknown_and_malformed_numbers_are_404(console, demo, db):
    client, _ = console
    token = await logged_in(client, db, demo.wardens["G0101"])
    assert "没有找到" in await page(client, f"{BOARD}/Q20200101-9999", 404)
    assert "没有找到" in await page(client, f"{BOARD}/nonsense", 404)
    await post(client, f"{BOARD}/Q20200101-9999/accept", token, 404)


# -- actions -------------------------------------------------------------------------------


async def test_accept_note_and_resolve_tell_the_resident_and_are_audited(console, demo, db):
    client, _ = console
    warden = demo.wardens["G0101"]
    resident = (await residents_of(db, demo, "G0101"))[0]
    number = await file_request(db, resident)
    token = await logged_in(client, db, warden)
    url = f"{BOARD}/{number}"

    r = await post(client, f"{url}/accept", token)
    assert r.headers["Location"] == url
    html = await page(client, url)
    assert "已受理" in html and "办理中" in html
    assert (await request_row(db, number)).status == "accepted"
    assert any("受理" in t for t in await outbox_for(db, resident))

    html = await (await post(client, f"{url}/note", token, 400, text="  ")).text()
    assert "请填写备注内容" in html
    await post(client, f"{url}/note", token, text="明天上午送到")
    assert "明天上午送到" in await page(client, url)

    before = await outbox_for(db, resident)
    html = await (await post(client, f"{url}/resolve", token, 400, reply="   ")).text()
    assert "请填写给居民的答复" in html and "诉求内容" in html  # the page again, with the reason
    assert (await request_row(db, number)).status == "accepted"
    assert await outbox_for(db, resident) == before

    await post(client, f"{url}/resolve", token, reply="大米已送到，请查收")
    row = await request_row(db, number)
    assert row.status == "resolved" and row.reply == "大米已送到，请查收"
    assert any("大米已送到" in t for t in await outbox_for(db, resident))
    assert await event_kinds(db, number) == ["created", "assigned", "accepted", "note", "resolved"]
    for verb in ("accept", "note", "resolve"):
        [entry] = await audited(db, f"console.requests.{verb}")
        assert entry.actor_id == warden and entry.target_id == number

    # Accepting again is refused with the reason, and changes nothing.
    html = await (await post(client, f"{url}/accept", token, 409)).text()
    assert "正在等待居民确认，不能再受理" in html
    assert len(await audited(db, "console.requests.accept")) == 1


async def test_actions_without_the_csrf_token_are_refused(console, demo, db):
    client, _ = console
    number = await file_request(db, (await residents_of(db, demo, "G0101"))[0])
    await logged_in(client, db, demo.wardens["G0101"])
    await post(client, f"{BOARD}/{number}/accept", None, 403)
    await post(client, f"{BOARD}/{number}/accept", "forged-token", 403)
    assert (await request_row(db, number)).status == "pending"


async def test_transfer_within_scope_only(console, demo, db):
    client, _ = console
    number = await file_request(db, (await residents_of(db, demo, "G0101"))[0])
    token = await logged_in(client, db, demo.wardens["G0101"])
    html = await page(client, f"{BOARD}/{number}")
    assert 'value="G0102"' in html and 'value="G0201"' not in html  # the community's grids

    await post(client, f"{BOARD}/{number}/transfer", token, 403, grid="G0201")
    html = await (await post(client, f"{BOARD}/{number}/transfer", token, 400, grid="ZZZ")).text()
    assert "没有编码为 ZZZ 的网格" in html and 'value="ZZZ"' not in html
    html = await (await post(client, f"{BOARD}/{number}/transfer", token, 400, grid="")).text()
    assert "请选择要转交到的网格" in html
    assert (await request_row(db, number)).handler_id == demo.wardens["G0101"]

    await post(client, f"{BOARD}/{number}/transfer", token, grid="G0102")
    row = await request_row(db, number)
    assert row.handler_id == demo.wardens["G0102"] and row.status == "pending"
    assert any(number in t for t in await outbox_for(db, demo.wardens["G0102"]))
    [entry] = await audited(db, "console.requests.transfer")
    assert entry.detail["grid"] == "G0102"
    # It has left the warden's grid: now out of scope.
    await page(client, f"{BOARD}/{number}", 403)


async def test_hand_to_a_volunteer_of_the_community(console, demo, db):
    client, _ = console
    resident = (await residents_of(db, demo, "G0101"))[0]
    number = await file_request(db, resident, category="supplies")
    medical = await file_request(db, resident, category="medical")
    token = await logged_in(client, db, demo.wardens["G0101"])
    html = await page(client, f"{BOARD}/{number}")
    assert f'value="{demo.volunteer_id}"' in html
    assert f'value="{demo.volunteer_id}"' not in await page(client, f"{BOARD}/{medical}")

    await post(client, f"{BOARD}/{number}/volunteer", token, volunteer=str(demo.volunteer_id))
    row = await request_row(db, number)
    assert row.volunteer_id == demo.volunteer_id and row.volunteer_status == "handed"
    assert row.status == "accepted"
    assert any(number in t for t in await outbox_for(db, demo.volunteer_id))
    html = await (
        await post(
            client, f"{BOARD}/{medical}/volunteer", token, 400, volunteer=str(demo.volunteer_id)
        )
    ).text()
    assert "只有物资和生活类诉求可以派给志愿者" in html
    assert (await request_row(db, medical)).volunteer_id is None


async def test_press_an_overdue_request(console, demo, db, make_config):
    client, _ = console
    warden = demo.wardens["G0101"]
    number = await file_request(db, (await residents_of(db, demo, "G0101"))[0], hours_ago=5)
    token = await logged_in(client, db, demo.admin_id)
    overview = await page(client, "/console/")
    assert f'href="{BOARD}/{number}"' in overview and "tab=overdue" in overview
    html = await page(client, f"{BOARD}/{number}")
    assert "已超期" in without_tags(html) and f"{BOARD}/{number}/press" in html
    assert number in await page(client, f"{BOARD}?tab=overdue&region=G0101")

    await post(client, f"{BOARD}/{number}/press", token, text="请今天内处理")
    assert await event_kinds(db, number) == ["created", "assigned", "pressed"]
    assert any("请今天内处理" in t for t in await outbox_for(db, warden))
    assert "督办" in without_tags(await page(client, f"{BOARD}/{number}"))
    [entry] = await audited(db, "console.requests.press")
    assert entry.actor_id == demo.admin_id

    # The warden cannot press themselves: the reason, and nothing stored.
    await client.post("/console/logout", data={"csrf_token": token})
    token = await logged_in(client, db, warden)
    assert f"{BOARD}/{number}/press" not in await page(client, f"{BOARD}/{number}")
    html = await (await post(client, f"{BOARD}/{number}/press", token, 409)).text()
    assert "不需要督办" in without_tags(html)
    assert await event_kinds(db, number) == ["created", "assigned", "pressed"]


async def test_a_warden_of_two_grids_switches_between_them(console, demo, db):
    client, _ = console
    warden = demo.wardens["G0101"]
    other = next(g for g in demo.grids if g.code == "G0201")
    async with db.write() as conn:
        await repo.grant_role(conn, warden, "warden", other.id)
    number = await file_request(db, (await residents_of(db, demo, "G0201"))[0])
    await logged_in(client, db, warden)
    html = await page(client, BOARD)
    assert "我的范围" in html and "region=G0201" in html and number not in html
    assert number in await page(client, f"{BOARD}?region=G0201")
    assert number in await page(client, f"{BOARD}/{number}")
