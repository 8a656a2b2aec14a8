"""Check-in API endpoints and data lifecycle: scope, errors, audit, retention, config."""

from __future__ import annotations

from datetime import timedelta

import pytest
from checkin_support import NORMAL, all_records, converse, count, grid_people, send, today
from sqlalchemy import func, select, update

from bot.api import PREFIX, create_token
from bot.config import ConfigError, parse_config
from storage import checkin as store
from storage.models import AuditEntry, utcnow
from storage.retention import purge_expired

audit = AuditEntry.__table__
NO_QUIET = {"schedule": {"quiet_hours": ["00:00", "00:00"]}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def audited(db, action: str) -> int:
    async with db.read() as conn:
        query = select(func.count()).select_from(audit).where(audit.c.action == action)
        return int((await conn.execute(query)).scalar() or 0)


async def error_code(response, status: int) -> str:
    assert response.status == status, await response.text()
    return (await response.json())["error"]["code"]


async def test_records_by_region_and_date_within_scope(make_config, start_app, demo, db):
    client, _ = await start_app(make_config(checkin=NO_QUIET))
    grid = demo.grids[0]
    residents = await grid_people(db, grid.id)
    await converse(client, residents[0].id, "打卡", "37.0", *NORMAL[1:])
    await converse(client, residents[0].id, "打卡", "38.1", *NORMAL[1:])
    await converse(client, residents[1].id, "打卡", *NORMAL)
    other = (await grid_people(db, demo.grids[3].id))[0]
    await converse(client, other.id, "打卡", *NORMAL)
    token = await create_token(db, demo.wardens[grid.code])

    r = await client.get(
        f"{PREFIX}/checkin/records",
        params={"region": grid.code, "date": today().isoformat()},
        headers=bearer(token),
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["date"] == today().isoformat()
    by_person = {item["person"]["id"]: item for item in body["records"]}
    assert set(by_person) == {residents[0].id, residents[1].id}  # the other grid is not here
    first = by_person[residents[0].id]
    assert first["answers"]["temperature"] == 38.1 and first["risk"] == "moderate"
    assert first["reasons"] == ["发热（≥37.3℃）"] and first["replaced_at"] is None
    assert "phone" not in first["person"]
    assert await audited(db, "api.checkin.records") == 1

    r = await client.get(
        f"{PREFIX}/checkin/records",
        params={"region": grid.code, "history": "true", "limit": "2"},
        headers=bearer(token),
    )
    body = await r.json()
    assert len(body["records"]) == 2 and body["next_after"] == body["records"][-1]["id"]
    replaced = body["records"][0]
    assert replaced["answers"]["temperature"] == 37.0 and replaced["replaced_at"]

    r = await client.get(
        f"{PREFIX}/checkin/records",
        params={"region": grid.code, "date": (today() - timedelta(days=1)).isoformat()},
        headers=bearer(token),
    )
    assert (await r.json())["records"] == []


async def test_records_refuse_bad_parameters_and_other_regions(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    headers = bearer(await create_token(db, demo.wardens["G0101"]))
    url = f"{PREFIX}/checkin/records"
    assert (
        await error_code(await client.get(url, params={"region": "G0201"}, headers=headers), 403)
        == "out_of_scope"
    )
    assert (
        await error_code(await client.get(url, params={"region": "NOPE"}, headers=headers), 404)
        == "unknown_region"
    )
    for bad in ({"date": "2024-13-01"}, {"date": "昨天"}, {"limit": "0"}, {"history": "maybe"}):
        assert (
            await error_code(await client.get(url, params=bad, headers=headers), 400)
            == "bad_parameter"
        )
    assert await error_code(await client.get(url), 401) == "unauthorized"
    assert await audited(db, "api.checkin.records") == 0


async def test_summary_per_grid_for_an_admin(make_config, start_app, demo, db):
    client, _ = await start_app(make_config(checkin=NO_QUIET))
    grid = demo.grids[0]
    residents = await grid_people(db, grid.id)
    await converse(client, residents[0].id, "打卡", *NORMAL)
    await converse(client, residents[1].id, "打卡", "38.6", "1 2", "是", "否", "1")
    await converse(client, residents[2].id, "打卡", "36.5", "不知道", "?", "??")  # incomplete
    headers = bearer(await create_token(db, demo.admin_id))
    r = await client.get(f"{PREFIX}/checkin/summary", params={"region": "D01"}, headers=headers)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert [g["grid"] for g in body["grids"]] == [g.code for g in demo.grids]
    first = body["grids"][0]
    assert first["residents"] == len(residents)
    assert (first["complete"], first["incomplete"], first["high"], first["moderate"]) == (
        2,
        1,
        1,
        0,
    )
    assert first["missing"] == len(residents) - 2
    assert first["rate"] == round(2 / len(residents), 4)
    assert body["grids"][1]["complete"] == 0
    assert await audited(db, "api.checkin.summary") == 1
    warden_headers = bearer(await create_token(db, demo.wardens["G0101"]))
    r = await client.get(
        f"{PREFIX}/checkin/summary", params={"region": "D01"}, headers=warden_headers
    )
    assert await error_code(r, 403) == "out_of_scope"


async def test_operations_are_described_in_openapi(make_config, start_app):
    client, _ = await start_app(make_config())
    paths = (await (await client.get(f"{PREFIX}/openapi.json")).json())["paths"]
    assert paths["/checkin/records"]["get"]["operationId"] == "checkin_records"
    assert paths["/checkin/summary"]["get"]["operationId"] == "checkin_summary"


async def test_retention_purge_deletes_old_checkin_answers(make_config, start_app, demo, db):
    client, _ = await start_app(make_config(checkin=NO_QUIET))
    old, recent = demo.resident_ids[0], demo.resident_ids[1]
    await converse(client, old, "打卡", "38.2", *NORMAL[1:])
    await converse(client, recent, "打卡", "38.2", *NORMAL[1:])
    long_ago = utcnow() - timedelta(days=200)
    async with db.write() as conn:
        await conn.execute(
            update(store.records)
            .where(store.records.c.person_id == old)
            .values(created_at=long_ago)
        )
    assert await count(db, store.alerts) == 2
    async with db.write() as conn:
        counts = await purge_expired(conn, older_than=timedelta(days=180))
    assert counts["checkin_records"] == 1 and counts["checkin_alerts"] == 1
    assert await all_records(db, old) == []
    assert len(await all_records(db, recent)) == 1
    assert await count(db, store.alerts) == 1


async def test_retention_purge_clears_answers_of_an_abandoned_checkin(
    make_config, start_app, demo, db
):
    from storage.models import Conversation

    client, _ = await start_app(make_config(checkin=NO_QUIET))
    resident = demo.resident_ids[0]
    await converse(client, resident, "打卡", "38.2", "咳嗽")  # and never came back
    conversations = Conversation.__table__
    long_ago = utcnow() - timedelta(days=200)
    async with db.write() as conn:
        await conn.execute(
            update(conversations)
            .where(conversations.c.flow == "checkin")
            .values(expires_at=long_ago, updated_at=long_ago)
        )
    async with db.write() as conn:
        counts = await purge_expired(conn, older_than=timedelta(days=180))
    assert counts["conversations"] == 1
    async with db.read() as conn:
        left = list(await conn.execute(select(conversations.c.flow, conversations.c.data)))
    assert left and all(row.flow is None and not row.data for row in left)


async def test_a_deployment_changes_the_questions_without_code(make_config, start_app, demo, db):
    checkin = {
        **NO_QUIET,
        "questions": [
            {
                "id": "temperature",
                "label": "体温",
                "prompt": "checkin/q_temperature",
                "type": "number",
                "min": 34,
                "max": 43,
                "unit": "℃",
            },
            {
                "id": "travel",
                "label": "外出",
                "prompt": "checkin/q_travel",
                "type": "yes_no",
                "skippable": True,
            },
        ],
        "risk": {
            "rules": [
                {
                    "level": "high",
                    "label": "高烧",
                    "when": [{"question": "temperature", "at_least": 39}],
                }
            ]
        },
        "quarantine": {"slots": [{"at": "08:00"}]},
    }
    client, _ = await start_app(make_config(checkin=checkin))
    resident = demo.resident_ids[0]
    replies = await converse(client, resident, "打卡", "39.2", "跳过")
    assert "共2个问题" in replies[0]
    assert "打卡已完成" in replies[-1]
    [record] = await all_records(db, resident)
    assert record.answers == {"temperature": 39.2, "travel": None}
    assert (record.risk, record.reasons) == ("high", ["高烧"])
    # A question that may not be skipped says so.
    replies = await converse(client, resident, "打卡", "跳过")
    assert "不能跳过" in replies[-1]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"schedule": {"prompt_at": 480}}, 'write times as "HH:MM" in quotes'),
        ({"schedule": {"reminders": ["07:00"]}}, "reminders must come after prompt_at"),
        (
            {
                "risk": {
                    "rules": [
                        {
                            "level": "high",
                            "label": "x",
                            "when": [{"question": "nope", "at_least": 1}],
                        }
                    ]
                }
            },
            "unknown question 'nope'",
        ),
        (
            {
                "risk": {
                    "rules": [
                        {
                            "level": "high",
                            "label": "x",
                            "when": [{"question": "contact", "at_least": 1}],
                        }
                    ]
                }
            },
            "at_least/at_most need a number question",
        ),
        ({"quarantine": {"slots": [{"at": "08:00", "questions": ["pulse"]}]}}, "unknown questions"),
        ({"max_reasks": 0}, "checkin.max_reasks"),
        (
            {
                "questions": [
                    {"id": "t", "label": "体温", "prompt": "checkin/q_nope", "type": "text"}
                ]
            },
            "no prompt template 'checkin/q_nope'",
        ),
        ({"colour": "red"}, "checkin.colour: unknown key"),
    ],
)
def test_bad_checkin_config_stops_with_a_message_naming_the_key(section, message) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"checkin": section})
    assert str(raised.value).startswith("checkin")
    assert message in str(raised.value)


def test_shipped_default_questionnaire() -> None:
    cfg = parse_config({}).checkin
    assert [q.id for q in cfg.questions] == [
        "temperature",
        "symptoms",
        "contact",
        "travel",
        "status",
    ]
    symptoms = cfg.question("symptoms")
    assert symptoms.none_option == "none" and len(symptoms.options) == 7
    assert [o.id for o in cfg.question("status").options] == ["home", "work", "quarantine"]
    assert cfg.schedule.prompt_at.strftime("%H:%M") == "08:00"
    assert [r.strftime("%H:%M") for r in cfg.schedule.reminders] == ["10:00", "14:00"]
    assert cfg.quarantine.default_days == 14


async def test_checkin_can_be_switched_off(make_config, start_app, demo, db):
    client, _ = await start_app(make_config(checkin={"enabled": False}))
    assert "暂未开启" in await send(client, demo.resident_ids[0], "打卡")


def test_config_yaml_spells_out_the_shipped_defaults() -> None:
    from pathlib import Path

    from bot.config import load_config
    from flows.checkin_config import CheckinConfig

    path = Path(__file__).resolve().parent.parent / "config.yaml"
    assert load_config(path).checkin == CheckinConfig()
