"""Console pages of people and regions through the real app: region tree, people (masked
phones, audited), roster upload -> report -> import, XLSX export, QR posters; scope and CSRF."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from console_support import console_config, csrf_of, logged_in, without_tags
from fakes.wechat_api import FakeWeChat, start_fake_wechat
from openpyxl import load_workbook
from sqlalchemy import func, select
from test_roster import PEOPLE_HEADER, table_counts
from wechat_client import MP_TOKEN

from storage import repo
from storage.models import AuditEntry, Person, Role
from storage.people_models import GridQrCode, RosterUpload

audit = AuditEntry.__table__
people = Person.__table__
uploads = RosterUpload.__table__
FULL_PHONE = re.compile(r"1[3-9]\d{9}")
MASKED = re.compile(r"1\d\d\*{4}\d{4}")


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    server = await start_fake_wechat()
    try:
        yield server
    finally:
        await server.close()


async def audit_entries(db, action: str) -> list[Any]:
    async with db.read() as conn:
        return list(
            await conn.execute(select(audit).where(audit.c.action == action).order_by(audit.c.id))
        )


async def count(db, table) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)


async def data_counts(db) -> dict[str, int]:
    """Rows of the people and region tables (the audit log grows with every view)."""
    counts = await table_counts(db)
    counts.pop("audit_log")
    return counts


async def street_admin(db, street: str) -> int:
    async with db.write() as conn:
        region = await repo.get_region_by_code(conn, street)
        assert region is not None
        person_id = await repo.create_person(
            conn, name="街道管理员", region_id=None, phone="13912345678"
        )
        await repo.grant_role(conn, person_id, Role.ADMIN, region.id)
    return person_id


# -- region tree -----------------------------------------------------------------------------


async def test_the_region_tree_shows_the_users_scope(make_config, start_app, demo, db):
    client, _ = await start_app(console_config(make_config))
    await logged_in(client, db, demo.admin_id)
    page = await client.get("/console/regions")
    assert page.status == 200
    text = without_tags(await page.text())
    for name in (
        "江岸区",
        "东湖街道",
        "南岸街道",
        "桃园社区",
        "桃园社区第1网格",
        "滨江社区第2网格",
    ):
        assert name in text
    async with db.read() as conn:
        total = await conn.execute(select(func.count()).select_from(people))
    assert f"D01 · {total.scalar()} 人" in text  # the district counts everyone below it

    warden_client, _ = await start_app(console_config(make_config))
    await logged_in(warden_client, db, demo.wardens["G0101"])
    text = without_tags(await (await warden_client.get("/console/regions")).text())
    assert "桃园社区第1网格" in text
    assert "桃园社区第2网格" not in text and "东湖街道" not in text


async def test_pages_need_a_login(make_config, start_app, demo, db):
    client, _ = await start_app(console_config(make_config))
    for path in ("/console/regions", "/console/regions/G0101/people", "/console/roster"):
        r = await client.get(path, allow_redirects=False)
        assert r.status == 302 and r.headers["Location"].startswith("/console/login")


# -- people ----------------------------------------------------------------------------------


async def test_the_grids_warden_sees_full_phones_others_masked_every_view_audited(
    make_config, start_app, demo, db
):
    client, _ = await start_app(console_config(make_config))
    await logged_in(client, db, demo.wardens["G0101"])
    html = await (await client.get("/console/regions/G0101/people")).text()
    assert FULL_PHONE.search(html) and not MASKED.search(html)

    admin, _ = await start_app(console_config(make_config))
    await logged_in(admin, db, demo.admin_id)
    html = await (await admin.get("/console/regions/G0101/people")).text()
    assert MASKED.search(html) and not FULL_PHONE.search(html)

    entries = await audit_entries(db, "console.people.list")
    assert [(e.actor_id, e.target_id, e.detail["full_phone"]) for e in entries] == [
        (demo.wardens["G0101"], "G0101", True),
        (demo.admin_id, "G0101", False),
    ]


async def test_people_of_another_grid_are_refused(make_config, start_app, demo, db):
    client, _ = await start_app(console_config(make_config))
    await logged_in(client, db, demo.wardens["G0101"])
    r = await client.get("/console/regions/G0102/people")
    assert r.status == 403
    assert (await client.get("/console/regions/C0101/people")).status == 403
    assert (await client.get("/console/regions/NOPE/people")).status == 404
    assert (await client.get("/console/regions/G0101/people?after=x")).status == 400
    assert await audit_entries(db, "console.people.list") == []


async def test_absurd_codes_and_numbers_are_refused_not_a_500(make_config, start_app, demo, db):
    # A NUL in a region code was a 500 on PostgreSQL (it cannot compare text with a NUL), and
    # a number of thousands of digits was one on both (int() refuses it).
    client, _ = await start_app(console_config(make_config))
    await logged_in(client, db, demo.wardens["G0101"])
    assert (await client.get("/console/regions/G01%00/people")).status == 404
    huge = "9" * 5000
    assert (await client.get(f"/console/regions/G0101/people?after={huge}")).status == 400
    assert await audit_entries(db, "console.people.list") == []


async def test_people_pages_follow_on(make_config, start_app, demo, db):
    client, _ = await start_app(console_config(make_config, page_size=5))
    await logged_in(client, db, demo.admin_id)
    seen: list[str] = []
    url = "/console/regions/G0101/people"
    for _ in range(50):
        html = await (await client.get(url)).text()
        seen += re.findall(r'<td class="name">([^<]+)', html)
        more = re.search(r'href="(/console/regions/G0101/people\?after=\d+)"', html)
        if not more:
            break
        url = more.group(1)
    async with db.read() as conn:
        grid = await repo.get_region_by_code(conn, "G0101")
        assert grid is not None
        names = [r.name for r in await repo.list_people(conn, grid, limit=1000)]
    assert [s.strip() for s in seen] == names


# -- export ----------------------------------------------------------------------------------


async def test_a_day_exports_as_xlsx_within_scope_only(make_config, start_app, demo, db):
    client, _ = await start_app(console_config(make_config))
    await logged_in(client, db, demo.wardens["G0101"])
    r = await client.get("/console/regions/G0101/checkins.xlsx?date=2026-11-29")
    assert r.status == 200
    workbook = load_workbook(io.BytesIO(await r.read()), read_only=True)
    assert next(workbook.worksheets[0].iter_rows(values_only=True))[:2] == ("日期", "姓名")
    workbook.close()
    assert (await client.get("/console/regions/S01/checkins.xlsx")).status == 403
    assert (await client.get("/console/regions/G0101/checkins.xlsx?date=bad")).status == 400
    (entry,) = await audit_entries(db, "checkin.export")
    assert entry.detail == {"date": "2026-11-29", "rows": 0}


# -- posters ---------------------------------------------------------------------------------


def mp_section(fake: FakeWeChat) -> dict[str, Any]:
    return {
        "enabled": True,
        "app_id": fake.app_id,
        "app_secret": fake.app_secret,
        "token": MP_TOKEN,
        "api_base": fake.base_url,
    }


async def test_posters_of_a_community_are_made_once_and_printable(
    make_config, start_app, fake, demo, db
):
    config = console_config(make_config)
    config = config.model_copy(
        update={
            "channels": config.channels.model_copy(
                update={"wechat_mp": config.channels.wechat_mp.model_validate(mp_section(fake))}
            )
        }
    )
    client, _ = await start_app(config)
    csrf = await logged_in(client, db, demo.admin_id)
    page = await client.get("/console/regions/C0101/posters")
    html = await page.text()
    assert page.status == 200 and "<svg" not in html and "生成二维码（2 个网格）" in html

    refused = await client.post("/console/regions/C0101/qrcodes", data={}, allow_redirects=False)
    assert refused.status == 403 and await count(db, GridQrCode.__table__) == 0

    made = await client.post(
        "/console/regions/C0101/qrcodes", data={"csrf_token": csrf}, allow_redirects=False
    )
    assert made.status == 302
    html = await (await client.get(made.headers["Location"])).text()
    assert html.count('<svg viewBox="0 0 ') == 2 and "已生成 2 个网格的二维码" in html
    assert "@media print" not in html and "people.css" in html
    again = await client.post(
        "/console/regions/C0101/qrcodes", data={"csrf_token": csrf}, allow_redirects=False
    )
    assert again.status == 302
    assert [c["scene"] for c in fake.qrcodes] == ["G0101", "G0102"]

    one = await (await client.get("/console/regions/G0102/posters")).text()
    assert one.count("<svg") == 1 and "G0102" in one


async def test_without_the_official_account_posters_say_what_to_configure(
    make_config, start_app, demo, db
):
    client, _ = await start_app(console_config(make_config))
    csrf = await logged_in(client, db, demo.wardens["G0101"])
    html = await (await client.get("/console/regions/G0101/posters")).text()
    assert "需要先配置微信公众号" in html and "生成二维码（" not in html
    r = await client.post("/console/regions/G0101/qrcodes", data={"csrf_token": csrf})
    assert r.status == 409
    assert (await client.get("/console/regions/G0102/posters")).status == 403
    r = await client.post("/console/regions/C0101/qrcodes", data={"csrf_token": csrf})
    assert r.status == 403


# -- roster ----------------------------------------------------------------------------------


def upload_form(csrf: str | None, filename: str, data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if csrf is not None:
        form.add_field("csrf_token", csrf)
    form.add_field("file", io.BytesIO(data), filename=filename, content_type="text/csv")
    return form


ROSTER = (
    "\n".join(
        [
            PEOPLE_HEADER,
            "张小明,13800138000,G0101,居民,1栋,101,",
            "坏电话,12345,G0101,居民,1栋,102,",
            "外街道,13800138001,G0201,居民,1栋,103,",
        ]
    )
    + "\n"
).encode()


async def test_roster_upload_report_then_import_for_a_street_admin(
    make_config, start_app, demo, db
):
    client, _ = await start_app(console_config(make_config))
    csrf = await logged_in(client, db, await street_admin(db, "S01"))
    before = await data_counts(db)
    r = await client.post(
        "/console/roster", data=upload_form(csrf, "名单.csv", ROSTER), allow_redirects=False
    )
    assert r.status == 302, await r.text()
    report_url = r.headers["Location"]
    page = await client.get(report_url)
    text = without_tags(await page.text())
    assert "12345" in text and "不在您的管辖范围内" in text
    assert re.search(r"将新建 1", text) and re.search(r"有问题 2", text)
    assert await data_counts(db) == before  # a report writes nothing

    confirm = report_url + "/import"
    assert (await client.post(confirm, data={"skip_bad": "1"})).status == 403
    assert await data_counts(db) == before
    done = await client.post(
        confirm,
        data={"skip_bad": "1", "csrf_token": csrf_of(await page.text())},
        allow_redirects=False,
    )
    assert done.status == 302
    landing = without_tags(await (await client.get(done.headers["Location"])).text())
    assert "新建 1 条" in landing and "跳过有问题的 2 行" in landing
    assert (await data_counts(db))["people"] == before["people"] + 1
    assert await count(db, uploads) == 0
    assert (await client.get(report_url)).status == 404  # imported: gone


async def test_a_clean_file_needs_no_skipping_and_bad_files_get_their_reason(
    make_config, start_app, demo, db
):
    client, _ = await start_app(console_config(make_config))
    csrf = await logged_in(client, db, demo.admin_id)
    clean = f"{PEOPLE_HEADER}\n李清白,13900139000,G0103,居民,2栋,201,\n".encode()
    r = await client.post("/console/roster", data=upload_form(csrf, "c.csv", clean))
    html = await r.text()
    assert "确认导入" in html and "跳过" not in html
    form_token = csrf_of(html)
    action = re.search(r'action="(/console/roster/\d+/import)"', html)
    assert action
    r = await client.post(action.group(1), data={"csrf_token": form_token})
    assert "新建 1 条" in without_tags(await r.text())

    r = await client.post("/console/roster", data=upload_form(csrf, "people.txt", clean))
    assert r.status == 400 and "只能导入 .csv 或 .xlsx 文件" in await r.text()
    empty = aiohttp.FormData(default_to_multipart=True)
    empty.add_field("csrf_token", csrf)
    r = await client.post("/console/roster", data=empty)
    assert r.status == 400 and "请选择要导入的文件" in await r.text()
    assert await count(db, uploads) == 0


async def test_roster_pages_are_for_admins_and_their_own_uploads(make_config, start_app, demo, db):
    admin, _ = await start_app(console_config(make_config))
    csrf = await logged_in(admin, db, demo.admin_id)
    r = await admin.post(
        "/console/roster", data=upload_form(csrf, "p.csv", ROSTER), allow_redirects=False
    )
    report_url = r.headers["Location"]

    other, _ = await start_app(console_config(make_config))
    other_csrf = await logged_in(other, db, await street_admin(db, "S02"))
    assert (await other.get(report_url)).status == 404
    r = await other.post(report_url + "/import", data={"csrf_token": other_csrf})
    assert r.status == 404

    warden, _ = await start_app(console_config(make_config))
    warden_csrf = await logged_in(warden, db, demo.wardens["G0101"])
    assert (await warden.get("/console/roster")).status == 403
    r = await warden.post("/console/roster", data=upload_form(warden_csrf, "p.csv", ROSTER))
    assert r.status == 403
    assert (await warden.get(report_url)).status == 403

    r = await admin.post("/console/roster", data=upload_form(None, "p.csv", ROSTER))
    assert r.status == 403  # no CSRF token
    assert await count(db, uploads) == 1


async def test_an_upload_over_the_page_limit_is_still_read_up_to_the_roster_limit(
    make_config, start_app, demo, db
):
    """Roster files may be larger than the app's 1 MiB body limit (up to 8 MB)."""
    client, _ = await start_app(console_config(make_config))
    csrf = await logged_in(client, db, demo.admin_id)
    rows = [PEOPLE_HEADER] + [
        f"居民{i:05d}{'备' * 20},,G0101,居民,{i // 100}栋,{i % 100}," for i in range(20000)
    ]
    data = ("\n".join(rows) + "\n").encode()
    assert len(data) > 1024 * 1024
    r = await client.post(
        "/console/roster", data=upload_form(csrf, "big.csv", data), allow_redirects=False
    )
    assert r.status == 302, r.status
    big = data + b"x" * (8 * 1024 * 1024)
    r = await client.post("/console/roster", data=upload_form(csrf, "huge.csv", big))
    assert r.status == 413
