"""Roster uploads (API and the console's staged import): full report first, scoped, one write."""

from __future__ import annotations

import io
from datetime import timedelta

import aiohttp
import pytest
from openpyxl import Workbook
from sqlalchemy import select, update
from test_api import assert_error, audit_count, bearer
from test_roster import PEOPLE_HEADER, REGIONS_HEADER, scopes_of, table_counts

from bot.api import PREFIX, create_token
from flows import roster
from flows.texts import Texts
from storage import repo
from storage.models import Role, utcnow
from storage.people_models import RosterUpload
from storage.retention import purge_expired

uploads = RosterUpload.__table__


def csv_bytes(*lines: str, encoding: str = "utf-8") -> bytes:
    return ("\n".join(lines) + "\n").encode(encoding)


def form(filename: str, data: bytes, content_type: str = "text/csv") -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field("file", io.BytesIO(data), filename=filename, content_type=content_type)
    return body


async def street_admin(db, street: str = "S01") -> int:
    """A new admin of one street (the demo's admin covers the whole district)."""
    async with db.write() as conn:
        region = await repo.get_region_by_code(conn, street)
        assert region is not None
        person_id = await repo.create_person(conn, name="街道管理员", region_id=None)
        await repo.grant_role(conn, person_id, Role.ADMIN, region.id)
    return person_id


async def load(db, person_id: int) -> repo.PersonInfo:
    async with db.read() as conn:
        person = await repo.load_person(conn, person_id)
    assert person is not None
    return person


MIXED = csv_bytes(
    PEOPLE_HEADER,
    "张小明,13800138000,G0101,居民,1栋,101,",
    "坏电话,12345,G0101,居民,1栋,102,",
    "无网格,13800138001,G9999,居民,1栋,103,",
    "怪角色,13800138002,G0101,厨师,1栋,104,",
    "王医生,13700137000,G0102,医生,,,",
)


async def test_check_reports_every_bad_row_and_writes_nothing(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    h = bearer(await create_token(db, demo.admin_id))
    before = await table_counts(db)
    r = await client.post(f"{PREFIX}/roster/check", headers=h, data=form("名单.csv", MIXED))
    assert r.status == 200, await r.text()
    report = await r.json()
    assert (report["file"], report["kind"], report["rows"], report["written"]) == (
        "名单.csv",
        "people",
        5,
        False,
    )
    assert (report["created"], report["unchanged"]) == (2, 0)  # what an import would do
    assert [(e["line"], e["code"]) for e in report["errors"]] == [
        (3, "bad_phone"),
        (4, "grid_unknown"),
        (5, "bad_role"),
    ]
    assert "12345" in report["errors"][0]["reason"]
    assert "G9999" in report["errors"][1]["reason"]
    assert "厨师" in report["errors"][2]["reason"]
    assert await table_counts(db) == before


async def test_import_refuses_a_file_with_bad_rows_unless_told_to_skip_them(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    h = bearer(await create_token(db, demo.admin_id))
    before = await table_counts(db)
    r = await client.post(f"{PREFIX}/roster/import", headers=h, data=form("p.csv", MIXED))
    assert r.status == 422
    error = (await r.json())["error"]
    assert error["code"] == "bad_rows" and len(error["report"]["errors"]) == 3
    assert not error["report"]["written"] and error["report"]["created"] == 0
    assert await table_counts(db) == before
    assert await audit_count(db, "roster.import.people") == 0

    r = await client.post(
        f"{PREFIX}/roster/import?skip_bad=true", headers=h, data=form("p.csv", MIXED)
    )
    assert r.status == 200, await r.text()
    report = await r.json()
    assert (report["written"], report["created"], len(report["errors"])) == (True, 2, 3)
    assert await scopes_of(db, "王医生") == [("doctor", "C0101")]
    assert await audit_count(db, "roster.import.people") == 1

    clean = csv_bytes(PEOPLE_HEADER, "李清白,13900139000,G0103,居民,2栋,201,")
    r = await client.post(f"{PREFIX}/roster/import", headers=h, data=form("clean.csv", clean))
    assert r.status == 200
    assert (await r.json())["created"] == 1
    await assert_error(
        await client.post(
            f"{PREFIX}/roster/import?skip_bad=maybe", headers=h, data=form("c.csv", clean)
        ),
        400,
        "bad_parameter",
    )


async def test_a_street_admin_imports_only_into_their_street(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    h = bearer(await create_token(db, await street_admin(db, "S01")))
    people = csv_bytes(
        PEOPLE_HEADER,
        "本街道,13800000001,G0101,居民,,,",
        "外街道,13800000002,G0201,居民,,,",
        "越权管,13800000003,G0101,管理员,,,D01",
        "别处管,13800000004,G0101,网格员,,,G0202",
    )
    r = await client.post(f"{PREFIX}/roster/check", headers=h, data=form("p.csv", people))
    report = await r.json()
    assert [(e["line"], e["code"]) for e in report["errors"]] == [
        (3, "grid_out_of_scope"),
        (4, "scope_out_of_scope"),
        (5, "scope_out_of_scope"),
    ]
    assert "不在您的管辖范围内" in report["errors"][0]["reason"]

    regions = csv_bytes(
        REGIONS_HEADER,
        "C0103,新社区,社区,S01",
        "G0105,新社区第1网格,网格,C0103",
        "C0202,外街社区,社区,S02",
        "S09,新街道,街道,D01",
        "C2,新城市,市,",
        "G0201,外街网格改名,网格,C0201",
    )
    before = await table_counts(db)
    r = await client.post(f"{PREFIX}/roster/import", headers=h, data=form("r.csv", regions))
    assert r.status == 422
    report = (await r.json())["error"]["report"]
    assert [(e["line"], e["code"]) for e in report["errors"]] == [
        (4, "parent_out_of_scope"),
        (5, "parent_out_of_scope"),
        (6, "city_needs_operator"),
        (7, "region_out_of_scope"),
    ]
    assert await table_counts(db) == before
    r = await client.post(
        f"{PREFIX}/roster/import?skip_bad=1", headers=h, data=form("r.csv", regions)
    )
    assert (await r.json())["created"] == 2
    async with db.read() as conn:
        street = await repo.get_region_by_code(conn, "S01")
        grid = await repo.get_region_by_code(conn, "G0105")
    assert street is not None and grid is not None and street.contains(grid)


async def test_only_admins_import(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    h = bearer(await create_token(db, demo.wardens["G0101"]))
    for path in ("check", "import"):
        await assert_error(
            await client.post(f"{PREFIX}/roster/{path}", headers=h, data=form("p.csv", MIXED)),
            403,
            "forbidden",
        )


async def test_unusable_uploads_get_a_clear_reason(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    h = bearer(await create_token(db, demo.admin_id))
    url = f"{PREFIX}/roster/check"
    before = await table_counts(db)

    body = await assert_error(
        await client.post(url, headers=h, data=form("people.txt", MIXED)), 415, "not_csv_or_xlsx"
    )
    assert ".csv" in body["error"]["message"] and "people.txt" in body["error"]["message"]
    big = MIXED + b"x" * roster.MAX_UPLOAD_BYTES
    await assert_error(await client.post(url, headers=h, data=form("big.csv", big)), 413)
    await assert_error(
        await client.post(url, headers=h, json={"file": "x"}), 415, "unsupported_media_type"
    )
    other = aiohttp.FormData(default_to_multipart=True)
    other.add_field("note", "no file here")
    await assert_error(await client.post(url, headers=h, data=other), 400, "no_file")
    await assert_error(await client.post(url, headers=h, data=form("e.csv", b"")), 400, "no_file")
    zipped = io.BytesIO()
    Workbook().save(zipped)
    await assert_error(
        await client.post(url, headers=h, data=form("renamed.csv", zipped.getvalue())),
        400,
        "not_text",
    )
    await assert_error(
        await client.post(url, headers=h, data=form("broken.xlsx", b"not a zip")), 400, "bad_xlsx"
    )
    await assert_error(
        await client.post(url, headers=h, data=form("h.csv", csv_bytes("名字,号码", "a,b"))),
        400,
        "bad_headers",
    )
    await assert_error(
        await client.post(url, headers=h, data=form("only.csv", csv_bytes(PEOPLE_HEADER))),
        400,
        "no_rows",
    )
    assert await table_counts(db) == before


async def test_an_xlsx_upload_with_numeric_phones_imports(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    h = bearer(await create_token(db, demo.admin_id))
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["姓名", "手机号", "网格编码", "角色", "楼栋", "门牌"])
    sheet.append(["赵表格", 13600136000, "G0201", "居民", "3栋", "201"])
    data = io.BytesIO()
    workbook.save(data)
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    r = await client.post(
        f"{PREFIX}/roster/import", headers=h, data=form("p.xlsx", data.getvalue(), xlsx)
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["created"] == 1


def test_too_many_rows_are_refused_before_checking():
    lines = [PEOPLE_HEADER] + ["某人,,G0101,居民,,,"] * (roster.MAX_ROWS + 1)
    with pytest.raises(roster.RosterError) as raised:
        roster.read_upload("huge.csv", csv_bytes(*lines))
    assert raised.value.code == "too_many_rows"
    assert str(roster.MAX_ROWS) in roster.describe_error(Texts(), raised.value)


async def test_a_staged_upload_is_imported_once_by_its_uploader_only(demo, db):
    admin = await load(db, demo.admin_id)
    other = await load(db, await street_admin(db, "S01"))
    upload_id, report = await roster.stage_file(db, admin, "名单.csv", MIXED)
    assert [p.line for p in report.errors] == [3, 4, 5] and not report.written
    name, again = await roster.check_staged(db, admin, upload_id)
    assert name == "名单.csv" and again == report
    with pytest.raises(LookupError):
        await roster.check_staged(db, other, upload_id)
    before = await table_counts(db)

    with pytest.raises(LookupError):
        await roster.import_staged(db, other, upload_id, skip_bad=True)
    name, refused = await roster.import_staged(db, admin, upload_id, skip_bad=False)
    assert name == "名单.csv" and not refused.written and refused.created == 0
    assert await table_counts(db) == before

    name, done = await roster.import_staged(db, admin, upload_id, skip_bad=True)
    assert done.written and done.created == 2
    async with db.read() as conn:
        assert (await conn.execute(select(uploads))).first() is None
    with pytest.raises(LookupError):
        await roster.import_staged(db, admin, upload_id, skip_bad=True)


async def test_stale_staged_uploads_are_refused_and_purged(demo, db):
    admin = await load(db, demo.admin_id)
    upload_id, _ = await roster.stage_file(db, admin, "p.csv", MIXED)
    fresh_id, _ = await roster.stage_file(db, admin, "q.csv", MIXED)
    async with db.write() as conn:
        await conn.execute(
            update(uploads)
            .where(uploads.c.id == upload_id)
            .values(created_at=utcnow() - timedelta(days=2))
        )
    with pytest.raises(LookupError):
        await roster.import_staged(db, admin, upload_id, skip_bad=True)
    async with db.write() as conn:
        counts = await purge_expired(conn, older_than=timedelta(days=180))
    assert counts["roster_uploads"] == 1
    async with db.read() as conn:
        assert [r.id for r in await conn.execute(select(uploads.c.id))] == [fresh_id]


async def test_an_unreadable_file_is_not_staged(demo, db):
    admin = await load(db, demo.admin_id)
    with pytest.raises(roster.RosterError) as raised:
        await roster.stage_file(db, admin, "people.txt", MIXED)
    assert raised.value.code == "not_csv_or_xlsx"
    async with db.read() as conn:
        assert (await conn.execute(select(uploads))).first() is None
