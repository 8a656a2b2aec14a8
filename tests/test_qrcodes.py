"""Grid QR posters: created once through the fake WeChat API, drawn locally, scanned back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakes.wechat_api import FakeWeChat, start_fake_wechat
from sqlalchemy import func, select
from test_api import assert_error, audit_count, bearer
from wechat_client import MP_TOKEN, event_message, signed_query

from bot.api import PREFIX, create_token
from bot.app import page_environment
from flows.posters import grid_code_from_scene, grid_posters, scene_for_grid
from storage import repo
from storage.models import RegionLevel
from storage.people_models import GridQrCode

QR_CREATE = "/cgi-bin/qrcode/create"


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    server = await start_fake_wechat()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def mp_config(make_config, fake):
    """The official account on, in plaintext mode, against the fake."""

    def build(**mp: Any):
        section = {
            "enabled": True,
            "app_id": fake.app_id,
            "app_secret": fake.app_secret,
            "token": MP_TOKEN,
            "api_base": fake.base_url,
            **mp,
        }
        return make_config(channels={"wechat_mp": section})

    return build


async def stored_rows(db) -> int:
    table = GridQrCode.__table__
    async with db.read() as conn:
        query = select(func.count()).select_from(table).where(table.c.ticket.is_not(None))
        return int((await conn.execute(query)).scalar() or 0)


async def test_a_grid_qrcode_is_created_once_and_drawn_without_the_platform(
    mp_config, start_app, fake, demo, db
):
    client, _ = await start_app(mp_config())
    h = bearer(await create_token(db, demo.admin_id))

    first = await client.post(f"{PREFIX}/regions/G0101/qrcode", headers=h)
    assert first.status == 200, await first.text()
    made = await first.json()
    again = await client.post(f"{PREFIX}/regions/G0101/qrcode", headers=h)
    assert await again.json() == made
    read = await client.get(f"{PREFIX}/regions/G0101/qrcode", headers=h)
    assert await read.json() == made

    (call,) = fake.calls_to(QR_CREATE)
    assert call.json == {
        "action_name": "QR_LIMIT_STR_SCENE",
        "action_info": {"scene": {"scene_str": "G0101"}},
    }
    (code,) = fake.qrcodes
    assert (made["region"], made["scene"], made["ticket"], made["url"]) == (
        "G0101",
        "G0101",
        code["ticket"],
        code["url"],
    )

    svg = await client.get(made["svg"], headers=h)
    assert svg.status == 200 and svg.content_type == "image/svg+xml"
    assert (await svg.text()).startswith("<svg")
    # Only the token and the one creation reached Tencent: never showqrcode.
    assert {c.path for c in fake.calls} == {"/cgi-bin/stable_token", QR_CREATE}
    assert await audit_count(db, "region.qrcode.create") == 1


async def test_concurrent_requests_for_one_grid_make_one_code(mp_config, start_app, fake, demo, db):
    client, _ = await start_app(mp_config())
    h = bearer(await create_token(db, demo.admin_id))
    fake.script(QR_CREATE, [{"delay": 0.3}])
    answers = await asyncio.gather(
        *(client.post(f"{PREFIX}/regions/G0102/qrcode", headers=h) for _ in range(4))
    )
    bodies = [await r.json() for r in answers]
    assert all(r.status == 200 for r in answers)
    assert len({b["ticket"] for b in bodies}) == 1
    assert len(fake.calls_to(QR_CREATE)) == 1
    assert await stored_rows(db) == 1


async def test_a_failed_creation_stores_nothing_and_the_next_try_succeeds(
    mp_config, start_app, fake, demo, db
):
    client, _ = await start_app(mp_config())
    h = bearer(await create_token(db, demo.wardens["G0103"]))
    fake.script(QR_CREATE, [{"status": 503}])
    await assert_error(await client.post(f"{PREFIX}/regions/G0103/qrcode", headers=h), 502)
    assert await stored_rows(db) == 0
    await assert_error(
        await client.get(f"{PREFIX}/regions/G0103/qrcode", headers=h), 404, "no_qrcode"
    )
    await assert_error(
        await client.get(f"{PREFIX}/regions/G0103/qrcode.svg", headers=h), 404, "no_qrcode"
    )
    r = await client.post(f"{PREFIX}/regions/G0103/qrcode", headers=h)
    assert r.status == 200
    assert len(fake.calls_to(QR_CREATE)) == 2 and len(fake.qrcodes) == 1


async def test_qrcodes_are_scoped_to_grids_the_caller_covers(mp_config, start_app, fake, demo, db):
    client, _ = await start_app(mp_config())
    warden = bearer(await create_token(db, demo.wardens["G0101"]))
    admin = bearer(await create_token(db, demo.admin_id))
    await assert_error(
        await client.post(f"{PREFIX}/regions/G0102/qrcode", headers=warden), 403, "out_of_scope"
    )
    await assert_error(await client.get(f"{PREFIX}/regions/G0102/qrcode.svg", headers=warden), 403)
    await assert_error(
        await client.post(f"{PREFIX}/regions/C0101/qrcode", headers=admin), 400, "not_a_grid"
    )
    await assert_error(
        await client.post(f"{PREFIX}/regions/NOPE/qrcode", headers=admin), 404, "unknown_region"
    )
    await assert_error(await client.post(f"{PREFIX}/regions/G0101/qrcode"), 401)
    assert fake.calls_to(QR_CREATE) == []


async def test_a_grid_code_that_cannot_survive_a_scan_gets_no_code(
    mp_config, start_app, fake, demo, db
):
    async with db.write() as conn:
        community = await repo.get_region_by_code(conn, "C0101")
        await repo.create_region(
            conn, code="g0109", name="小写网格", level=RegionLevel.GRID, parent=community
        )
    client, _ = await start_app(mp_config())
    h = bearer(await create_token(db, demo.admin_id))
    await assert_error(
        await client.post(f"{PREFIX}/regions/g0109/qrcode", headers=h), 409, "bad_scene"
    )
    assert fake.calls_to(QR_CREATE) == []


async def test_without_the_official_account_the_poster_says_what_to_configure(
    make_config, start_app, demo, db
):
    client, rt = await start_app(make_config())
    assert not rt.qrcodes.enabled
    h = bearer(await create_token(db, demo.admin_id))
    await assert_error(
        await client.post(f"{PREFIX}/regions/G0101/qrcode", headers=h), 409, "channel_disabled"
    )
    async with db.read() as conn:
        community = await repo.get_region_by_code(conn, "C0101")
        assert community is not None
        posters = await grid_posters(conn, community)
    assert [p.grid.code for p in posters] == ["G0101", "G0102"]
    assert all(p.svg is None for p in posters)
    macro = page_environment().get_template("console/_poster.html").module.poster
    html = str(macro(posters[0], False))
    assert "需要先配置微信公众号" in html and "channels.wechat_mp" in html
    assert "G0101" in html and "<svg" not in html


async def test_a_poster_shows_the_code_its_warden_and_a_scannable_scene(
    mp_config, start_app, fake, demo, db
):
    _client, rt = await start_app(mp_config())
    async with db.read() as conn:
        grid = await repo.get_region_by_code(conn, "G0201")
        assert grid is not None
        warden = await repo.load_person(conn, demo.wardens["G0201"])
    assert warden is not None
    await rt.qrcodes.ensure(grid, actor_id=demo.admin_id)
    async with db.read() as conn:
        (poster,) = await grid_posters(conn, grid)
    assert poster.community == "滨江社区" and poster.wardens == (warden.name,)
    assert poster.svg is not None and poster.svg.startswith("<svg")
    macro = page_environment().get_template("console/_poster.html").module.poster
    html = str(macro(poster, True))
    assert "微信扫一扫" in html and warden.name in html and "<svg" in html


async def test_scanning_the_created_code_registers_the_newcomer_in_that_grid(
    mp_config, start_app, fake, demo, db
):
    """The scene qrcode/create was given comes back as ``qrscene_<scene>`` on subscribe."""
    client, rt = await start_app(mp_config())
    async with db.read() as conn:
        grid = await repo.get_region_by_code(conn, "G0104")
    assert grid is not None
    await rt.qrcodes.ensure(grid, actor_id=demo.admin_id)
    scene = fake.qrcodes[0]["scene"]
    document = event_message("o_scanner", "subscribe", key=f"qrscene_{scene}", Ticket="T")
    r = await client.post("/wechat/mp", params=signed_query(), data=document.encode())
    assert r.status == 200
    assert grid.name in await r.text()


def test_scene_and_grid_code_round_trip():
    for code in ("G0101", "C-01_GRID-7", "G" * 64):
        scene = scene_for_grid(code)
        assert scene is not None and grid_code_from_scene(scene) == code
        assert grid_code_from_scene(f" {scene.lower()} ") == code
    assert scene_for_grid("g0101") is None
    assert scene_for_grid("G" * 65) is None
    assert scene_for_grid("") is None
    assert grid_code_from_scene(None) is None and grid_code_from_scene("  ") is None
