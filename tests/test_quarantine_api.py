"""Quarantine endpoints of /api/v1: list, start, end early; scope, refusals, audit, migration."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from checkin_support import grid_people, outbox_rows, quarantine_rows, send, today
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bot.api import PREFIX, create_token
from storage import checkin as store
from storage.models import AuditEntry, utcnow
from storage.schema import metadata

audit = AuditEntry.__table__
NO_QUIET = {"schedule": {"quiet_hours": ["00:00", "00:00"]}}
URL = f"{PREFIX}/quarantines"


@pytest.fixture
def config(make_config):
    return make_config(checkin=NO_QUIET)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def audit_rows(db, prefix: str) -> list[Any]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(audit).where(audit.c.action.startswith(prefix)).order_by(audit.c.id)
        )
        return list(rows)


async def error_code(response, status: int) -> str:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["error"]["message"]
    return body["error"]["code"]


async def residents_of(db, demo, index: int = 0) -> list[Any]:
    """Residents (not staff) of the demo's grid ``index``."""
    return [r for r in await grid_people(db, demo.grids[index].id) if r.id in demo.resident_ids]


async def test_warden_starts_lists_and_ends_a_quarantine(config, start_app, demo, db):
    client, _ = await start_app(config)
    grid = demo.grids[0]
    headers = bearer(await create_token(db, demo.wardens[grid.code]))
    resident = (await residents_of(db, demo))[0]

    r = await client.get(URL, headers=headers)
    assert r.status == 200, await r.text()
    assert (await r.json())["quarantines"] == []

    r = await client.post(
        URL,
        json={"person": resident.id, "reason": "密切接触者", "days": 7, "kind": "observation"},
        headers=headers,
    )
    assert r.status == 201, await r.text()
    body = await r.json()
    [started] = body["started"]
    assert started["person"] == {"id": resident.id, "name": resident.name}
    assert body["skipped"] == [] and body["kind"] == "observation" and body["days"] == 7
    assert body["start_day"] == today().isoformat()
    assert body["release_day"] == (today() + timedelta(days=7)).isoformat()
    [row] = await quarantine_rows(db)
    assert (row.id, row.person_id, row.kind, row.reason) == (
        started["id"],
        resident.id,
        "observation",
        "密切接触者",
    )
    # The resident is told, as when a warden starts one in chat.
    [told] = await outbox_rows(db, "checkin:qstart:")
    assert told.person_id == resident.id and "健康观察7天" in told.payload["text"]

    r = await client.get(URL, params={"region": grid.code}, headers=headers)
    listed = await r.json()
    [item] = listed["quarantines"]
    assert item["person"] == {"id": resident.id, "name": resident.name}
    assert item["region"] == grid.code and item["reason"] == "密切接触者"
    assert item["day_number"] == 1 and item["days"] == 7
    assert "phone" not in item["person"] and listed["next_after"] is None

    r = await client.post(f"{URL}/{row.id}/end", json={"reason": "核酸阴性"}, headers=headers)
    assert r.status == 200, await r.text()
    ended = await r.json()
    assert ended["status"] == "ended" and ended["person"]["id"] == resident.id
    [row] = await quarantine_rows(db)
    assert row.status == "ended" and row.closed_at is not None
    [told_end] = await outbox_rows(db, "checkin:qend:")
    assert told_end.person_id == resident.id and "已解除" in told_end.payload["text"]
    assert (await (await client.get(URL, headers=headers)).json())["quarantines"] == []

    actions = [(a.action, a.detail) for a in await audit_rows(db, "checkin.quarantine.")]
    assert actions == [
        (
            "checkin.quarantine.start",
            {
                "quarantine_id": row.id,
                "kind": "observation",
                "days": 7,
                "start": today().isoformat(),
                "reason": "密切接触者",
                "via": "api",
            },
        ),
        ("checkin.quarantine.end", {"quarantine_id": row.id, "reason": "核酸阴性", "via": "api"}),
    ]
    assert len(await audit_rows(db, "api.checkin.quarantines")) == 3


async def test_ending_twice_or_an_unknown_period_is_refused(config, start_app, demo, db):
    client, _ = await start_app(config)
    headers = bearer(await create_token(db, demo.wardens["G0101"]))
    resident = (await residents_of(db, demo))[0]
    r = await client.post(URL, json={"person": resident.id, "reason": "入境"}, headers=headers)
    [started] = (await r.json())["started"]
    end_url = f"{URL}/{started['id']}/end"
    assert (await client.post(end_url, headers=headers)).status == 200
    assert await error_code(await client.post(end_url, headers=headers), 409) == "not_open"
    assert await error_code(await client.post(f"{URL}/999999/end", headers=headers), 404) == (
        "not_found"
    )
    for bad in ("abc", "0", "99999999999999999999"):
        r = await client.post(f"{URL}/{bad}/end", headers=headers)
        assert await error_code(r, 400) == "bad_parameter"
    assert len(await outbox_rows(db, "checkin:qend:")) == 1
    assert len(await audit_rows(db, "checkin.quarantine.end")) == 1


async def test_household_start_skips_those_already_in_a_period(config, start_app, demo, db):
    client, _ = await start_app(config)
    headers = bearer(await create_token(db, demo.wardens["G0101"]))
    residents = await grid_people(db, demo.grids[0].id)
    target = next(
        r
        for r in residents
        if r.household_id and sum(o.household_id == r.household_id for o in residents) >= 2
    )
    members = sorted(r.id for r in residents if r.household_id == target.household_id)
    other = next(m for m in members if m != target.id)
    r = await client.post(URL, json={"person": other, "reason": "密接"}, headers=headers)
    assert r.status == 201

    start = (today() - timedelta(days=2)).isoformat()
    r = await client.post(
        URL,
        json={"person": target.id, "reason": "密接", "household": True, "start": start},
        headers=headers,
    )
    assert r.status == 201, await r.text()
    body = await r.json()
    assert sorted(s["person"]["id"] for s in body["started"]) == [m for m in members if m != other]
    assert [s["id"] for s in body["skipped"]] == [other]
    assert body["days"] == 14 and body["start_day"] == start
    listed = (await (await client.get(URL, headers=headers)).json())["quarantines"]
    assert sorted(q["person"]["id"] for q in listed) == members
    assert {q["day_number"] for q in listed if q["person"]["id"] != other} == {3}

    # Everyone is in a period now: nothing to start, nothing stored.
    r = await client.post(
        URL, json={"person": target.id, "reason": "再次", "household": True}, headers=headers
    )
    assert await error_code(r, 409) == "already_open"
    assert len(await quarantine_rows(db)) == len(members)
    assert len(await audit_rows(db, "checkin.quarantine.start")) == len(members)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "bad_body"),
        ({"person": "abc", "reason": "x"}, 400, "bad_body"),
        ({"person": True, "reason": "x"}, 400, "bad_body"),
        ({"person": "RESIDENT"}, 400, "bad_body"),  # no reason
        ({"person": "RESIDENT", "reason": "   "}, 400, "bad_body"),
        ({"person": "RESIDENT", "reason": "长" * 201}, 400, "bad_body"),
        ({"person": "RESIDENT", "reason": 7}, 400, "bad_body"),
        ({"person": "RESIDENT", "reason": "x", "kind": "prison"}, 400, "bad_body"),
        ({"person": "RESIDENT", "reason": "x", "days": "14"}, 400, "bad_body"),
        ({"person": "RESIDENT", "reason": "x", "days": True}, 400, "bad_body"),
        ({"person": "RESIDENT", "reason": "x", "days": 0}, 400, "bad_days"),
        ({"person": "RESIDENT", "reason": "x", "days": 61}, 400, "bad_days"),
        ({"person": "RESIDENT", "reason": "x", "start": "2024-13-01"}, 400, "bad_body"),
        ({"person": "RESIDENT", "reason": "x", "start": "昨天"}, 400, "bad_body"),
        ({"person": "RESIDENT", "reason": "x", "start": "PAST61"}, 400, "bad_start"),
        ({"person": "RESIDENT", "reason": "x", "start": "AHEAD8"}, 400, "bad_start"),
        ({"person": "RESIDENT", "reason": "x", "start": "PAST20", "days": 14}, 400, "already_over"),
        ({"person": "RESIDENT", "reason": "x", "household": "yes"}, 400, "bad_body"),
        ({"person": "RESIDENT", "reason": "x", "note": "?"}, 400, "bad_body"),
        ({"person": 99999999, "reason": "x"}, 404, "unknown_person"),
        ({"person": "OTHER_GRID", "reason": "x"}, 403, "out_of_scope"),
    ],
)
async def test_bad_start_requests_are_refused_and_store_nothing(
    config, start_app, demo, db, body, status, code
):
    client, _ = await start_app(config)
    headers = bearer(await create_token(db, demo.wardens["G0101"]))
    resident = (await residents_of(db, demo, 0))[0]
    stranger = (await residents_of(db, demo, 3))[0]
    days_back = {"PAST61": -61, "AHEAD8": 8, "PAST20": -20}
    for key, value in list(body.items()):
        if value == "RESIDENT":
            body[key] = resident.id
        elif value == "OTHER_GRID":
            body[key] = stranger.id
        elif value in days_back:
            body[key] = (today() + timedelta(days=days_back[value])).isoformat()
    r = await client.post(URL, json=body, headers=headers)
    assert await error_code(r, status) == code
    assert await quarantine_rows(db) == []
    assert await outbox_rows(db, "checkin:q") == []
    assert await audit_rows(db, "checkin.quarantine.") == []


async def test_malformed_bodies_and_tokens_are_refused(config, start_app, demo, db):
    client, _ = await start_app(config)
    headers = bearer(await create_token(db, demo.wardens["G0101"]))
    r = await client.post(URL, data="{not json", headers=headers)
    assert await error_code(r, 400) == "malformed_json"
    r = await client.post(URL, json=[1, 2], headers=headers)
    assert await error_code(r, 400) == "bad_body"
    r = await client.post(URL, json={"person": demo.resident_ids[0], "reason": "x"})
    assert await error_code(r, 401) == "unauthorized"
    resident_token = bearer(await create_token(db, demo.resident_ids[0]))
    r = await client.get(URL, headers=resident_token)
    assert await error_code(r, 403) == "forbidden"
    assert await quarantine_rows(db) == []


async def test_other_grids_periods_are_out_of_scope(config, start_app, demo, db):
    client, _ = await start_app(config)
    own = bearer(await create_token(db, demo.wardens["G0101"]))
    other = bearer(await create_token(db, demo.wardens[demo.grids[3].code]))
    resident = (await residents_of(db, demo))[0]
    r = await client.post(URL, json={"person": resident.id, "reason": "密接"}, headers=own)
    [started] = (await r.json())["started"]

    r = await client.get(URL, headers=other)
    assert (await r.json())["quarantines"] == []
    r = await client.get(URL, params={"region": "G0101"}, headers=other)
    assert await error_code(r, 403) == "out_of_scope"
    r = await client.get(URL, params={"region": "NOPE"}, headers=other)
    assert await error_code(r, 404) == "unknown_region"
    r = await client.post(f"{URL}/{started['id']}/end", headers=other)
    assert await error_code(r, 403) == "out_of_scope"
    [row] = await quarantine_rows(db)
    assert row.status == "active"

    # The district admin and the community doctor see it; the admin can end it.
    for person_id in (demo.admin_id, demo.doctor_id):
        headers = bearer(await create_token(db, person_id))
        r = await client.get(URL, headers=headers)
        assert [q["id"] for q in (await r.json())["quarantines"]] == [started["id"]]
    admin = bearer(await create_token(db, demo.admin_id))
    r = await client.post(f"{URL}/{started['id']}/end", json={"reason": "x" * 201}, headers=admin)
    assert await error_code(r, 400) == "bad_body"
    r = await client.post(f"{URL}/{started['id']}/end", json={"why": "x"}, headers=admin)
    assert await error_code(r, 400) == "bad_body"
    assert (await client.post(f"{URL}/{started['id']}/end", headers=admin)).status == 200


async def test_list_is_paged_by_after(config, start_app, demo, db):
    client, _ = await start_app(config)
    headers = bearer(await create_token(db, demo.admin_id))
    residents = [r.id for r in await residents_of(db, demo)][:5]
    for person_id in residents:
        r = await client.post(URL, json={"person": person_id, "reason": "密接"}, headers=headers)
        assert r.status == 201, await r.text()
    seen: list[int] = []
    after = 0
    while True:
        r = await client.get(URL, params={"limit": "2", "after": str(after)}, headers=headers)
        body = await r.json()
        seen += [q["person"]["id"] for q in body["quarantines"]]
        if body["next_after"] is None:
            break
        after = body["next_after"]
    assert seen == residents
    for bad in ({"limit": "0"}, {"limit": "501"}, {"after": "-1"}):
        r = await client.get(URL, params=bad, headers=headers)
        assert await error_code(r, 400) == "bad_parameter"


async def test_restarting_after_ending_early_tells_the_resident_again(config, start_app, demo, db):
    """Regression: the start message was keyed by person and day, so a period ended early and
    started again the same day went unannounced."""
    client, _ = await start_app(config)
    warden = demo.wardens["G0101"]
    resident = (await residents_of(db, demo))[0]
    assert "已登记居家隔离" in await send(client, warden, f"隔离 {resident.id}")
    assert "已解除" in await send(client, warden, f"解除隔离 {resident.id}")
    assert "已登记居家隔离" in await send(client, warden, f"隔离 {resident.id} 7天")
    started = await outbox_rows(db, "checkin:qstart:")
    assert [r.person_id for r in started] == [resident.id, resident.id]
    assert "7天" in started[1].payload["text"]


async def test_one_open_period_per_person_is_held_by_the_database(db, demo):
    person_id = demo.resident_ids[0]
    values: dict[str, Any] = {
        "person_id": person_id,
        "kind": "quarantine",
        "start_day": today(),
        "end_day": today() + timedelta(days=14),
        "created_by": demo.admin_id,
        "now": utcnow(),
    }
    async with db.write() as conn:
        first = await store.create_quarantine(conn, **values)
    with pytest.raises(IntegrityError):
        async with db.write() as conn:
            await store.create_quarantine(conn, **values)
    async with db.write() as conn:
        assert await store.close_quarantine(conn, first, status="ended", now=utcnow())
        await store.create_quarantine(conn, **values)  # a closed period does not count
    assert [q.status for q in await quarantine_rows(db)] == ["ended", "active"]


async def test_quarantine_table_matches_its_migrations(db):
    async with db.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert [d for d in diff if "checkin_quarantines" in str(d)] == []
