"""The day's check-ins of a region as XLSX: scoped, audited, paged, labelled from templates."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

from checkin_support import TZ, local, today
from openpyxl import load_workbook
from sqlalchemy import select, update
from test_api import assert_error, bearer

from bot.api import PREFIX, create_token
from bot.config import Config
from flows.checkin_export import ExportLabels, write_checkins_xlsx
from storage import checkin as store
from storage import repo
from storage.models import AuditEntry, Person

audit = AuditEntry.__table__
people = Person.__table__

NORMAL = {
    "temperature": 36.5,
    "symptoms": ["none"],
    "contact": False,
    "travel": False,
    "status": "home",
}
FEVER = {"temperature": 38.2, "symptoms": ["fever", "cough"], "contact": True, "travel": False}


async def record(db, person_id: int, answers: dict, *, risk="low", reasons=(), reporter=None):
    async with db.write() as conn:
        person = await repo.load_person(conn, person_id)
        assert person is not None and person.region is not None
        status = "complete" if len(answers) == 5 else "incomplete"
        return await store.save_record(
            conn,
            store.NewRecord(
                person_id=person_id,
                reporter_id=reporter or person_id,
                region_id=person.region.id,
                household_id=person.household_id,
                day=today(),
                slot=0,
                status=status,
                risk=risk,
                reasons=list(reasons),
                answers=answers,
            ),
            now=local(today(), 8, 5),
        )


async def residents_of(db, code: str) -> list[int]:
    async with db.read() as conn:
        grid = await repo.get_region_by_code(conn, code)
        assert grid is not None
        rows = await conn.execute(
            select(people.c.id).where(people.c.region_id == grid.id).order_by(people.c.id)
        )
        return [r.id for r in rows]


def sheet_rows(data: bytes) -> list[list]:
    workbook = load_workbook(io.BytesIO(data), read_only=True)
    rows = [list(r) for ws in workbook.worksheets for r in ws.iter_rows(values_only=True)]
    workbook.close()
    return rows


async def test_an_admin_exports_the_days_checkins_of_a_street(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    east = await residents_of(db, "G0101")
    south = await residents_of(db, "G0201")
    await record(db, east[0], NORMAL)
    await record(db, east[1], FEVER, risk="moderate", reasons=["发热（≥37.3℃）"], reporter=east[0])
    await record(db, south[0], NORMAL)  # another street: not in S01's export
    h = bearer(await create_token(db, demo.admin_id))

    r = await client.get(
        f"{PREFIX}/checkin/export", params={"region": "S01", "date": str(today())}, headers=h
    )
    assert r.status == 200, await r.text()
    assert r.content_type == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert r.headers["Content-Disposition"] == (
        f'attachment; filename="checkins-S01-{today().isoformat()}.xlsx"'
    )
    rows = sheet_rows(await r.read())
    labels = ExportLabels.load()
    assert rows[0] == [
        "日期",
        "姓名",
        "网格",
        "楼栋门牌",
        "代报人",
        "填报状态",
        "风险等级",
        "异常原因",
        "体温",
        "症状",
        "14天内接触确诊或疑似病例",
        "14天内离开本市",
        "目前状态",
        "提交时间",
    ]
    assert rows[0][1] == labels.columns["name"]
    names = await names_of(db, east[:2])
    body = {row[1]: row for row in rows[1:]}
    assert set(body) == set(names.values())
    normal, fever = body[names[east[0]]], body[names[east[1]]]
    assert normal[0] == today().isoformat() and normal[2] == "G0101"
    assert normal[4:8] == [None, "已完成", "正常", None]
    assert normal[8:13] == ["36.5℃", "以上都没有", "否", "否", "在家"]
    assert normal[13] == f"{today().isoformat()} 08:05"
    assert fever[4:8] == [names[east[0]], "未完成", "中风险", "发热（≥37.3℃）"]
    assert fever[8:13] == ["38.2℃", "发热、咳嗽", "是", "否", "未回答"]

    async with db.read() as conn:
        entry = (await conn.execute(select(audit).where(audit.c.action == "checkin.export"))).one()
    assert (entry.actor_id, entry.target_id) == (demo.admin_id, "S01")
    assert entry.detail == {"date": today().isoformat(), "rows": 2}


async def names_of(db, ids: list[int]) -> dict[int, str]:
    async with db.read() as conn:
        rows = await conn.execute(select(people.c.id, people.c.name).where(people.c.id.in_(ids)))
        return {r.id: r.name for r in rows}


async def test_exports_are_scoped_and_checked(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    warden = bearer(await create_token(db, demo.wardens["G0101"]))
    url = f"{PREFIX}/checkin/export"
    await assert_error(await client.get(url, params={"region": "G0102"}, headers=warden), 403)
    await assert_error(await client.get(url, params={"region": "S01"}, headers=warden), 403)
    await assert_error(
        await client.get(url, params={"date": "2024-13-01"}, headers=warden), 400, "bad_parameter"
    )
    await assert_error(await client.get(url, params={"region": "NOPE"}, headers=warden), 404)
    await assert_error(await client.get(url), 401)
    async with db.read() as conn:
        assert (
            await conn.execute(select(audit).where(audit.c.action == "checkin.export"))
        ).first() is None

    # The warden's own grid, with the default day (today) and region (their scope).
    r = await client.get(url, headers=warden)
    assert r.status == 200
    assert sheet_rows(await r.read()) == [sheet_rows_header()]


def sheet_rows_header() -> list[str]:
    labels = ExportLabels.load()
    questions = Config().checkin.questions
    return [
        *(labels.columns[c] for c in ("date", "name", "grid", "household", "reported_by")),
        *(labels.columns[c] for c in ("status", "risk", "reasons")),
        *(q.label for q in questions),
        labels.columns["answered_at"],
    ]


async def test_pages_and_sheets_cover_every_current_record_once(demo, db, tmp_path: Path):
    ids = (await residents_of(db, "G0103")) + (await residents_of(db, "G0104"))
    for person_id in ids:
        await record(db, person_id, NORMAL)
    await record(db, ids[0], FEVER, risk="moderate")  # replaces the first answer
    async with db.write() as conn:
        await conn.execute(
            update(people).where(people.c.id == ids[1]).values(name='=HYPERLINK("x")\x01')
        )
        community = await repo.get_region_by_code(conn, "C0102")
    assert community is not None
    path = tmp_path / "out.xlsx"
    count = await write_checkins_xlsx(
        db,
        Config().checkin,
        community,
        today(),
        path,
        tz=TZ,
        labels=ExportLabels.load(),
        page_size=3,
        sheet_rows=4,
    )
    assert count == len(ids)
    workbook = load_workbook(path)
    sheets = workbook.worksheets
    assert [ws.title for ws in sheets][:2] == ["健康打卡", "健康打卡 (2)"]
    assert all(ws.max_row <= 4 and ws.cell(1, 1).value == "日期" for ws in sheets)
    data = [row for ws in sheets for row in ws.iter_rows(min_row=2)]
    assert len(data) == len(ids)
    names = [row[1] for row in data]
    injected = next(cell for cell in names if str(cell.value).startswith("="))
    assert injected.data_type == "s" and injected.value == '=HYPERLINK("x")'
    assert sum(1 for row in data if row[6].value == "中风险") == 1
    workbook.close()


async def test_an_empty_day_exports_its_headers(demo, db, tmp_path: Path):
    path = tmp_path / "empty.xlsx"
    count = await write_checkins_xlsx(
        db,
        Config().checkin,
        demo.district,
        today() - timedelta(days=400),
        path,
        tz=TZ,
        labels=ExportLabels.load(),
    )
    assert count == 0
    assert sheet_rows(path.read_bytes()) == [sheet_rows_header()]
