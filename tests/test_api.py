"""The REST API under /api/v1, through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import func, select, update

from bot.api import PREFIX, create_token
from storage import repo
from storage.models import ApiToken, AuditEntry, Person, Role, utcnow

tokens = ApiToken.__table__
audit = AuditEntry.__table__
people = Person.__table__
MASKED = re.compile(r"^1\d\d\*{4}\d{4}$")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def audit_count(db, action: str | None = None) -> int:
    query = select(func.count()).select_from(audit)
    if action is not None:
        query = query.where(audit.c.action == action)
    async with db.read() as conn:
        return int((await conn.execute(query)).scalar() or 0)


async def phones_of(db, ids) -> dict[int, str]:
    async with db.read() as conn:
        rows = await conn.execute(select(people.c.id, people.c.phone).where(people.c.id.in_(ids)))
        return {r.id: r.phone for r in rows}


async def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body


async def test_missing_unknown_revoked_and_expired_tokens_are_401(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    warden = demo.wardens["G0101"]
    good = await create_token(db, warden, label="good")
    revoked = await create_token(db, warden, label="revoked")
    expired = await create_token(db, warden, label="expired", days=30)
    async with db.write() as conn:
        await conn.execute(update(tokens).where(tokens.c.label == "revoked").values(revoked=True))
        await conn.execute(
            update(tokens)
            .where(tokens.c.label == "expired")
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )

    await assert_error(await client.get(f"{PREFIX}/me"), 401, "unauthorized")
    await assert_error(
        await client.get(f"{PREFIX}/me", headers={"Authorization": f"Basic {good}"}), 401
    )
    await assert_error(await client.get(f"{PREFIX}/me", headers=bearer("gb_nope")), 401)
    await assert_error(await client.get(f"{PREFIX}/people", headers=bearer(revoked)), 401)
    await assert_error(
        await client.get(f"{PREFIX}/regions", headers=bearer(expired)), 401, "token_expired"
    )

    r = await client.get(f"{PREFIX}/me", headers=bearer(good))
    assert r.status == 200
    me = await r.json()
    assert me["id"] == warden
    assert [(s["role"], s["region"]["code"]) for s in me["scopes"]] == [("warden", "G0101")]


async def test_a_token_that_expires_later_still_works(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await create_token(db, demo.admin_id, days=1)
    r = await client.get(f"{PREFIX}/me", headers=bearer(token))
    assert r.status == 200
    assert (await r.json())["id"] == demo.admin_id


async def test_a_residents_token_is_403_and_views_nothing(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await create_token(db, demo.resident_ids[0])
    before = await audit_count(db)
    for path in ("/me", "/regions", "/people", f"/people/{demo.resident_ids[0]}"):
        await assert_error(await client.get(PREFIX + path, headers=bearer(token)), 403, "forbidden")
    assert await audit_count(db) == before


async def test_warden_sees_own_grid_and_is_refused_others(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    token = await create_token(db, demo.wardens["G0101"])
    h = bearer(token)

    r = await client.get(f"{PREFIX}/regions", headers=h)
    assert r.status == 200
    assert [x["code"] for x in (await r.json())["regions"]] == ["G0101"]

    r = await client.get(f"{PREFIX}/regions/G0101", headers=h)
    assert r.status == 200
    region = await r.json()
    assert (region["code"], region["level"], region["children"]) == ("G0101", "grid", [])

    r = await client.get(f"{PREFIX}/people", headers=h)
    assert r.status == 200
    listed = (await r.json())["people"]
    assert listed and {p["region"] for p in listed} == {"G0101"}
    assert demo.wardens["G0101"] in {p["id"] for p in listed}
    assert demo.wardens["G0102"] not in {p["id"] for p in listed}

    await assert_error(await client.get(f"{PREFIX}/regions/G0102", headers=h), 403, "out_of_scope")
    await assert_error(await client.get(f"{PREFIX}/regions/C0101", headers=h), 403, "out_of_scope")
    await assert_error(
        await client.get(f"{PREFIX}/people?region=G0102", headers=h), 403, "out_of_scope"
    )
    other = next(p for p in await _people_in(db, demo.grids[1].id))
    await assert_error(await client.get(f"{PREFIX}/people/{other}", headers=h), 403)
    await assert_error(
        await client.get(f"{PREFIX}/regions/NOWHERE", headers=h), 404, "unknown_region"
    )
    await assert_error(
        await client.get(f"{PREFIX}/people?region=NOWHERE", headers=h), 404, "unknown_region"
    )
    await assert_error(await client.get(f"{PREFIX}/people/99999999", headers=h), 404)


async def _people_in(db, region_id: int) -> list[int]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(people.c.id).where(people.c.region_id == region_id).order_by(people.c.id)
        )
        return [r.id for r in rows]


async def test_admin_sees_the_district_tree(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    h = bearer(await create_token(db, demo.admin_id))
    r = await client.get(f"{PREFIX}/regions?level=grid", headers=h)
    assert sorted(x["code"] for x in (await r.json())["regions"]) == sorted(
        g.code for g in demo.grids
    )
    r = await client.get(f"{PREFIX}/regions/D01", headers=h)
    assert sorted(c["code"] for c in (await r.json())["children"]) == ["S01", "S02"]
    # The city above the admin's district is out of scope.
    await assert_error(await client.get(f"{PREFIX}/regions/C", headers=h), 403, "out_of_scope")


async def test_bad_parameters_are_400(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    h = bearer(await create_token(db, demo.admin_id))
    before = await audit_count(db)
    for query in (
        "limit=0",
        "limit=501",
        "limit=ten",
        "limit=-5",
        "limit=%C2%B2",  # "²" is a digit to str.isdigit() but not to int()
        "after=-1",
        "after=x",
        "after=99999999999999999999999",
    ):
        await assert_error(
            await client.get(f"{PREFIX}/people?{query}", headers=h), 400, "bad_parameter"
        )
    await assert_error(
        await client.get(f"{PREFIX}/regions?level=planet", headers=h), 400, "bad_parameter"
    )
    await assert_error(await client.get(f"{PREFIX}/people/abc", headers=h), 400, "bad_parameter")
    await assert_error(await client.get(f"{PREFIX}/people/%C2%B2", headers=h), 400)
    await assert_error(await client.get(f"{PREFIX}/people/99999999999999999999999", headers=h), 404)
    assert await audit_count(db) == before


async def test_phone_numbers_are_full_for_the_warden_and_masked_for_the_admin(
    make_config, start_app, demo, db
):
    client, _ = await start_app(make_config())
    warden = bearer(await create_token(db, demo.wardens["G0101"]))
    admin = bearer(await create_token(db, demo.admin_id))

    as_warden = (await (await client.get(f"{PREFIX}/people", headers=warden)).json())["people"]
    as_admin = (await (await client.get(f"{PREFIX}/people?region=G0101", headers=admin)).json())[
        "people"
    ]
    stored = await phones_of(db, [p["id"] for p in as_warden])
    assert [p["id"] for p in as_admin] == [p["id"] for p in as_warden]
    for w, a in zip(as_warden, as_admin, strict=True):
        phone = stored[w["id"]]
        assert w["phone"] == phone
        assert MASKED.match(a["phone"])
        assert a["phone"] == phone[:3] + "****" + phone[-4:]
        assert a["name"] == w["name"] and a["roles"] == w["roles"]

    resident = next(p for p in as_warden if p["roles"] == ["resident"])
    one = await (await client.get(f"{PREFIX}/people/{resident['id']}", headers=warden)).json()
    assert one["phone"] == stored[resident["id"]]
    assert one["region"]["code"] == "G0101"
    assert one["household"]
    one = await (await client.get(f"{PREFIX}/people/{resident['id']}", headers=admin)).json()
    assert MASKED.match(one["phone"])


async def test_every_view_of_people_writes_an_audit_entry(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    warden_id = demo.wardens["G0102"]
    h = bearer(await create_token(db, warden_id))
    assert await audit_count(db, "api.people.list") == 0

    r = await client.get(f"{PREFIX}/people?limit=3", headers=h)
    listed = (await r.json())["people"]
    resident = listed[-1]["id"]
    await client.get(f"{PREFIX}/people/{resident}", headers=h)
    await client.get(f"{PREFIX}/people?region=G0101", headers=h)  # refused: not audited as a view

    async with db.read() as conn:
        rows = list(
            await conn.execute(
                select(audit).where(audit.c.action.like("api.people.%")).order_by(audit.c.id)
            )
        )
    assert [(r.action, r.actor_id) for r in rows] == [
        ("api.people.list", warden_id),
        ("api.people.view", warden_id),
    ]
    assert rows[0].target_id == "G0102"
    assert rows[0].region_id == demo.grids[1].id
    assert rows[0].detail == {"count": 3}
    assert rows[1].target_id == str(resident)


async def test_pagination_follows_next_after_to_the_end(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    h = bearer(await create_token(db, demo.admin_id))
    everyone = await (await client.get(f"{PREFIX}/people?limit=500", headers=h)).json()
    assert everyone["next_after"] is None
    expected = [p["id"] for p in everyone["people"]]
    assert len(expected) > 20

    seen: list[int] = []
    after, pages = 0, 0
    while True:
        r = await client.get(f"{PREFIX}/people?region=D01&limit=7&after={after}", headers=h)
        assert r.status == 200
        page = await r.json()
        pages += 1
        seen += [p["id"] for p in page["people"]]
        if page["next_after"] is None:
            break
        assert len(page["people"]) == 7
        assert page["next_after"] == page["people"][-1]["id"]
        after = page["next_after"]
    assert seen == expected
    assert pages == len(expected) // 7 + 1
    assert await audit_count(db, "api.people.list") == pages + 1


async def test_openapi_document_matches_the_registered_routes(make_config, start_app, demo):
    client, _ = await start_app(make_config())
    r = await client.get(f"{PREFIX}/openapi.json")  # public: no token
    assert r.status == 200
    doc = await r.json()

    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["servers"] == [{"url": PREFIX}]
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert "Error" in doc["components"]["schemas"]
    operation_ids = []
    documented = set()
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        declared = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            assert method in {"get", "post", "put", "patch", "delete"}
            documented.add((method.upper(), path))
            operation_ids.append(op["operationId"])
            assert op["summary"]
            assert op["responses"] and all(
                "description" in resp for resp in op["responses"].values()
            )
            for ref in _refs(op):
                name = ref.removeprefix("#/components/schemas/")
                assert name in doc["components"]["schemas"], ref
            path_params = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert path_params == declared, (method, path)
            for p in op["parameters"]:
                assert p["in"] in {"path", "query", "header"}
                assert "schema" in p
                assert p["required"] is True or p["in"] != "path"
    assert len(operation_ids) == len(set(operation_ids))
    assert doc["paths"]["/openapi.json"]["get"]["security"] == []

    registered = {
        (route.method, route.resource.canonical.removeprefix(PREFIX))
        for route in client.server.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith(PREFIX + "/")
        and route.method != "HEAD"
    }
    assert registered == documented


def _refs(value) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if "$ref" in value else []
        return found + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


async def test_unknown_api_path_and_wrong_method_answer_json(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    h = bearer(await create_token(db, demo.admin_id))
    await assert_error(await client.get(f"{PREFIX}/nothing-here", headers=h), 404, "not_found")
    await assert_error(await client.get(f"{PREFIX}/regions/G0101/x", headers=h), 404)
    await assert_error(
        await client.post(f"{PREFIX}/regions", headers=h, json={}), 405, "method_not_allowed"
    )
    # Without a token, an unknown path does not reveal whether it exists.
    await assert_error(await client.get(f"{PREFIX}/nothing-here"), 401, "unauthorized")


async def test_two_roles_on_the_same_region_still_list_it(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    warden = demo.wardens["G0103"]
    async with db.write() as conn:
        await repo.grant_role(conn, warden, Role.DOCTOR, demo.grids[2].id)
        await repo.grant_role(conn, warden, Role.DOCTOR, demo.grids[3].id)
    h = bearer(await create_token(db, warden))
    r = await client.get(f"{PREFIX}/regions", headers=h)
    assert sorted(x["code"] for x in (await r.json())["regions"]) == ["G0103", "G0104"]
