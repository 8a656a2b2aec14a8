"""The notices REST API, through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pytest
from notices_support import (
    audit,
    count,
    deliver_all,
    notice_config,
    notices,
    outbox,
    outbox_of,
    people_in,
    say,
)
from sqlalchemy import select

from bot.api import PREFIX, create_token
from flows.notices import queue_due_notices
from flows.texts import Texts
from storage.models import utcnow

URL = f"{PREFIX}/notices"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def api(client, token, method: str, path: str = "", **kwargs):
    return await client.request(method, URL + path, headers=bearer(token), **kwargs)


async def error_of(response, status: int) -> dict:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["error"]["message"]
    return body["error"]


async def test_create_now_queues_and_get_returns_receipts(make_config, start_app, demo, db):
    client, rt = await start_app(notice_config(make_config))
    warden = demo.wardens["G0101"]
    token = await create_token(db, warden)
    r = await api(
        client,
        token,
        "POST",
        json={"text": "今晚8点全员核酸", "regions": ["G0101"], "ack_required": True},
    )
    assert r.status == 201, await r.text()
    created = await r.json()
    expected = await people_in(db, "G0101", exclude=warden)
    assert created["status"] == "sent"
    assert created["receipts"]["people"]["total"] == len(expected)
    assert created["receipts"]["groups"]["total"] == 1
    assert "今晚8点全员核酸" in created["rendered"]
    assert len(await outbox_of(db, created["id"])) == len(expected) + 1

    await deliver_all(rt)
    member = sorted(expected)[0]
    await say(client, member, "收到")
    await say(client, member, "收到", chat="grid-G0101")
    r = await api(client, token, "GET", f"/{created['id']}")
    receipts = (await r.json())["receipts"]
    assert receipts["people"] == {
        "total": len(expected),
        "delivered": len(expected),
        "failed": 0,
        "pending": 0,
        "acknowledged": 1,
        "not_acknowledged": len(expected) - 1,
    }
    assert receipts["groups"]["acknowledged"] == 1

    r = await api(
        client, token, "GET", f"/{created['id']}/recipients", params={"unacknowledged": "true"}
    )
    listed = (await r.json())["recipients"]
    assert {p["person_id"] for p in listed} == expected - {member}
    assert all(p["delivery"] == "sent" and p["acknowledged_at"] is None for p in listed)
    assert await count(db, audit, audit.c.action == "api.notices.recipients") == 1
    assert await count(db, audit, audit.c.action == "api.notices.view") == 1

    r = await api(client, token, "GET")
    assert [n["id"] for n in (await r.json())["notices"]] == [created["id"]]


async def test_scope_is_enforced(make_config, start_app, demo, db):
    client, _ = await start_app(notice_config(make_config))
    warden = await create_token(db, demo.wardens["G0101"])
    other_warden = await create_token(db, demo.wardens["G0201"])
    admin = await create_token(db, demo.admin_id)
    doctor = await create_token(db, demo.doctor_id)

    r = await api(client, warden, "POST", json={"text": "通知", "regions": ["G0201"]})
    assert (await error_of(r, 403))["code"] == "out_of_scope"
    r = await api(client, warden, "POST", json={"text": "通知", "regions": ["G0101", "S01"]})
    assert (await error_of(r, 403))["code"] == "out_of_scope"
    r = await api(client, doctor, "POST", json={"text": "通知", "regions": ["G0101"]})
    assert (await error_of(r, 403))["code"] == "not_allowed"
    r = await api(client, doctor, "GET")
    assert (await error_of(r, 403))["code"] == "not_allowed"
    assert await count(db, notices) == 0 and await count(db, outbox) == 0

    later = (utcnow() + timedelta(hours=3)).isoformat()
    r = await api(
        client, warden, "POST", json={"text": "通知", "regions": ["G0101"], "send_at": later}
    )
    notice_id = (await r.json())["id"]
    r = await api(client, other_warden, "GET", f"/{notice_id}")
    assert (await error_of(r, 404))["code"] == "not_found"
    r = await api(client, other_warden, "POST", f"/{notice_id}/cancel")
    assert (await error_of(r, 404))["code"] == "not_found"
    r = await api(client, other_warden, "GET")
    assert (await r.json())["notices"] == []
    # The district admin sees and manages everything in the district.
    r = await api(client, admin, "GET")
    assert [n["id"] for n in (await r.json())["notices"]] == [notice_id]
    r = await api(client, admin, "POST", f"/{notice_id}/cancel")
    assert r.status == 200 and (await r.json())["status"] == "cancelled"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"text": "   ", "regions": ["G0101"]}, 400, "empty_text"),
        ({"regions": ["G0101"]}, 400, "empty_text"),
        ({"text": "通知", "regions": ["NOPE"]}, 400, "unknown_region"),
        ({"text": "通知", "regions": []}, 400, "no_regions"),
        (
            {"text": "通知", "regions": ["G0101"], "send_at": "2020-01-01T09:00:00+08:00"},
            400,
            "past_time",
        ),
        ({"text": "通知", "regions": ["G0101"], "send_at": "下周吧"}, 400, "bad_time"),
        ({"text": "通知", "regions": ["G0101"], "send_at": 1700000000}, 400, "bad_field"),
        ({"text": "通知", "regions": "G0101"}, 400, "bad_field"),
        ({"text": "通知", "regions": ["G0101"], "ack_required": "yes"}, 400, "bad_field"),
        (
            {"text": "通知", "regions": ["G0101"], "groups": False, "individuals": False},
            400,
            "nothing_to_send",
        ),
        ({"text": "通知", "regions": ["G0101"], "roles": ["mayor"]}, 400, "unknown_role"),
        ({"text": "通知", "regions": ["G0101"], "person_status": "sick"}, 400, "unknown_status"),
        ({"text": "长" * 1501, "regions": ["G0101"]}, 400, "too_long"),
        # Times past the calendar's end were a 500 (OverflowError) instead of a refusal.
        (
            {"text": "通知", "regions": ["G0101"], "send_at": "9999-12-31T23:59:00-05:00"},
            400,
            "too_far",
        ),
        ({"text": "通知", "regions": ["G0101"], "send_at": "9999-12-31 晚上12点"}, 400, "bad_time"),
        ({"text": "通知", "regions": ["G0101"], "send_at": "9999-12-31 23:59"}, 400, "too_far"),
    ],
)
async def test_bad_input_is_refused_and_nothing_stored(
    make_config, start_app, demo, db, body, status, code
):
    client, _ = await start_app(notice_config(make_config))
    token = await create_token(db, demo.wardens["G0101"])
    r = await api(client, token, "POST", json=body)
    assert (await error_of(r, status))["code"] == code
    assert await count(db, notices) == 0 and await count(db, outbox) == 0


async def test_malformed_body_is_400(make_config, start_app, demo, db):
    client, _ = await start_app(notice_config(make_config))
    token = await create_token(db, demo.wardens["G0101"])
    r = await api(client, token, "POST", data=b"{not json")
    assert (await error_of(r, 400))["code"] == "malformed_json"
    r = await api(client, token, "POST", json=["text"])
    assert (await error_of(r, 400))["code"] == "malformed_json"
    r = await api(client, token, "GET", "/abc")
    assert (await error_of(r, 404))["code"] == "not_found"
    r = await api(client, token, "GET", params={"status": "lost"})
    assert (await error_of(r, 400))["code"] == "bad_field"
    assert await count(db, notices) == 0


async def test_absurd_ids_and_paging_numbers_are_refused_not_a_500(
    make_config, start_app, demo, db
):
    # Thousands of digits made int() raise: a 500 instead of a 404 / 400.
    client, _ = await start_app(notice_config(make_config))
    token = await create_token(db, demo.wardens["G0101"])
    huge = "9" * 5000
    r = await api(client, token, "GET", f"/{huge}")
    assert (await error_of(r, 404))["code"] == "not_found"
    r = await api(client, token, "GET", params={"before": huge})
    assert (await error_of(r, 400))["code"] == "bad_parameter"
    r = await api(client, token, "GET", "/1/recipients", params={"after": huge})
    assert (await error_of(r, 400))["code"] == "bad_parameter"


async def test_control_characters_never_reach_the_database_or_the_recipients(
    make_config, start_app, demo, db
):
    # A NUL in the text or a region code was a 500 on PostgreSQL and went out as is on SQLite.
    client, _ = await start_app(notice_config(make_config))
    token = await create_token(db, demo.wardens["G0101"])
    r = await api(client, token, "POST", json={"text": "\x00\x07", "regions": ["G0101"]})
    assert (await error_of(r, 400))["code"] == "empty_text"
    r = await api(client, token, "POST", json={"text": "通知", "regions": ["G01\x00"]})
    assert (await error_of(r, 400))["code"] == "unknown_region"
    assert await count(db, notices) == 0 and await count(db, outbox) == 0
    r = await api(
        client, token, "POST", json={"text": "今晚\x00核酸\r\n请带好\t身份证", "regions": ["G0101"]}
    )
    assert r.status == 201, await r.text()
    created = await r.json()
    assert created["text"] == "今晚核酸\n请带好\t身份证"
    assert "\x00" not in created["rendered"] and "\r" not in created["rendered"]


async def test_edit_and_cancel_a_scheduled_notice(make_config, start_app, demo, db):
    config = notice_config(make_config)
    client, _ = await start_app(config)
    token = await create_token(db, demo.wardens["G0101"])
    first_time = utcnow() + timedelta(hours=2)
    r = await api(
        client,
        token,
        "POST",
        json={"text": "旧内容", "regions": ["G0101"], "send_at": first_time.isoformat()},
    )
    notice = await r.json()
    assert notice["status"] == "scheduled" and notice["receipts"]["people"]["total"] == 0

    new_time = utcnow() + timedelta(hours=5)
    r = await api(
        client,
        token,
        "PATCH",
        f"/{notice['id']}",
        json={"text": "新内容", "send_at": new_time.isoformat(), "individuals": False},
    )
    edited = await r.json()
    assert r.status == 200, edited
    assert edited["text"] == "新内容" and edited["audience"]["individuals"] is False
    r = await api(client, token, "PATCH", f"/{notice['id']}", json={"send_at": "2020-01-01 08:00"})
    assert (await error_of(r, 400))["code"] == "past_time"
    assert await count(db, audit, audit.c.action == "notice.edit") == 1

    texts = Texts()
    at_old = first_time + timedelta(minutes=1)
    assert await queue_due_notices(db, texts=texts, settings=config, now=at_old) == 0
    at_new = new_time + timedelta(seconds=1)
    assert await queue_due_notices(db, texts=texts, settings=config, now=at_new) == 1
    rows = await outbox_of(db, notice["id"])
    assert [r.target for r in rows] == ["grid-G0101"]
    assert "新内容" in rows[0].payload["text"]

    r = await api(client, token, "PATCH", f"/{notice['id']}", json={"text": "太晚了"})
    assert (await error_of(r, 409))["code"] == "not_editable"
    r = await api(client, token, "POST", f"/{notice['id']}/cancel")
    assert (await error_of(r, 409))["code"] == "not_editable"

    later = (utcnow() + timedelta(days=1)).isoformat()
    r = await api(
        client, token, "POST", json={"text": "取消我", "regions": ["G0101"], "send_at": later}
    )
    second = await r.json()
    r = await api(client, token, "POST", f"/{second['id']}/cancel")
    assert (await r.json())["status"] == "cancelled"
    far = utcnow() + timedelta(days=2)
    assert await queue_due_notices(db, texts=texts, settings=config, now=far) == 0
    assert await outbox_of(db, second["id"]) == []


async def test_resend_reaches_non_acknowledgers_only(make_config, start_app, demo, db):
    client, rt = await start_app(notice_config(make_config))
    warden = demo.wardens["G0101"]
    token = await create_token(db, warden)
    r = await api(
        client, token, "POST", json={"text": "请确认", "regions": ["G0101"], "ack_required": True}
    )
    notice = await r.json()
    await deliver_all(rt)
    members = sorted(await people_in(db, "G0101", exclude=warden))
    for member in members[:3]:
        await say(client, member, "收到")

    r = await api(client, token, "POST", f"/{notice['id']}/resend")
    assert r.status == 200, await r.text()
    body = await r.json()
    assert (body["round"], body["targets"]) == (1, len(members) - 3 + 1)
    reminded = await outbox_of(db, notice["id"], "notice+")
    assert {r.person_id for r in reminded if r.person_id} == set(members[3:])
    assert len([r for r in reminded if r.group_id]) == 1

    r = await api(client, token, "POST", f"/{notice['id']}/resend")
    assert (await error_of(r, 409))["code"] == "resend_too_soon"
    later = (utcnow() + timedelta(hours=1)).isoformat()
    r = await api(
        client,
        token,
        "POST",
        json={"text": "定时", "regions": ["G0101"], "ack_required": True, "send_at": later},
    )
    r = await api(client, token, "POST", f"/{(await r.json())['id']}/resend")
    assert (await error_of(r, 409))["code"] == "not_sent_yet"


async def test_a_scheduled_notice_due_in_quiet_hours_waits_scheduled_until_they_end(
    make_config, start_app, demo, db
):
    config = make_config(
        notices={"quiet_hours": True, "quiet_start": "22:00", "quiet_end": "07:00"}
    )
    client, _ = await start_app(config)
    token = await create_token(db, demo.wardens["G0101"])
    tomorrow = (utcnow().astimezone(config.tz) + timedelta(days=1)).date()
    night = datetime.combine(tomorrow, time(23, 0), tzinfo=config.tz)
    morning = datetime.combine(tomorrow + timedelta(days=1), time(7, 0), tzinfo=config.tz)
    created = {}
    for text, urgent in (("明早停水", False), ("紧急疏散", True)):
        r = await api(
            client,
            token,
            "POST",
            json={
                "text": text,
                "regions": ["G0101"],
                "urgent": urgent,
                "send_at": night.isoformat(),
            },
        )
        assert r.status == 201, await r.text()
        created[urgent] = await r.json()
    calm, urgent = created[False], created[True]
    texts = Texts()

    # at its time, in the quiet hours: only the urgent one goes
    at_night = night + timedelta(minutes=1)
    assert await queue_due_notices(db, texts=texts, settings=config, now=at_night) == 1
    assert {r.next_attempt_at for r in await outbox_of(db, urgent["id"])} == {at_night}
    assert await outbox_of(db, calm["id"]) == []
    r = await api(client, token, "GET", f"/{calm['id']}")
    assert (await r.json())["status"] == "scheduled"
    # still the sender's to change during the night
    r = await api(client, token, "PATCH", f"/{calm['id']}", json={"text": "明早八点到十点停水"})
    assert r.status == 200, await r.text()
    just_before = morning - timedelta(minutes=1)
    assert await queue_due_notices(db, texts=texts, settings=config, now=just_before) == 0

    # the first run after the quiet hours queues it, due then, with the edited text
    after = morning + timedelta(seconds=5)
    assert await queue_due_notices(db, texts=texts, settings=config, now=after) == 1
    rows = await outbox_of(db, calm["id"])
    assert rows and {r.next_attempt_at for r in rows} == {after}
    assert all("明早八点到十点停水" in r.payload["text"] for r in rows)
    r = await api(client, token, "GET", f"/{calm['id']}")
    assert (await r.json())["status"] == "sent"


async def test_a_notice_held_past_its_time_by_the_quiet_hours_can_still_be_edited(
    make_config, start_app, demo, db
):
    # Held by the quiet hours, a notice stays scheduled "so it can still be edited", but an
    # edit without a new send_at re-checked the stored time and refused it as past.
    config = notice_config(make_config)
    client, _ = await start_app(config)
    token = await create_token(db, demo.wardens["G0101"])
    later = (utcnow() + timedelta(hours=2)).isoformat()
    r = await api(
        client, token, "POST", json={"text": "明早停水", "regions": ["G0101"], "send_at": later}
    )
    assert r.status == 201, await r.text()
    notice_id = (await r.json())["id"]
    held_since = utcnow() - timedelta(minutes=30)
    async with db.write() as conn:
        await conn.execute(
            notices.update().where(notices.c.id == notice_id).values(send_at=held_since)
        )

    r = await api(client, token, "PATCH", f"/{notice_id}", json={"text": "明早八点到十点停水"})

    assert r.status == 200, await r.text()
    edited = await r.json()
    assert edited["status"] == "scheduled" and edited["text"] == "明早八点到十点停水"
    assert datetime.fromisoformat(edited["send_at"]) == held_since
    assert await count(db, outbox) == 0


async def test_openapi_lists_the_notice_operations(make_config, start_app):
    client, _ = await start_app(notice_config(make_config))
    document = await (await client.get(f"{PREFIX}/openapi.json")).json()
    paths = document["paths"]
    assert set(paths["/notices"]) == {"get", "post"}
    assert set(paths["/notices/{id}"]) == {"get", "patch"}
    assert "post" in paths["/notices/{id}/cancel"] and "post" in paths["/notices/{id}/resend"]
    assert "get" in paths["/notices/{id}/recipients"]


async def test_every_action_is_audited(make_config, start_app, demo, db):
    client, _ = await start_app(notice_config(make_config))
    token = await create_token(db, demo.wardens["G0101"])
    later = (utcnow() + timedelta(hours=1)).isoformat()
    r = await api(
        client, token, "POST", json={"text": "审计", "regions": ["G0101"], "send_at": later}
    )
    notice_id = (await r.json())["id"]
    await api(client, token, "PATCH", f"/{notice_id}", json={"text": "审计2"})
    await api(client, token, "POST", f"/{notice_id}/cancel")
    async with db.read() as conn:
        actions = [
            r.action
            for r in await conn.execute(
                select(audit.c.action)
                .where(audit.c.target_type == "notice", audit.c.target_id == str(notice_id))
                .order_by(audit.c.id)
            )
        ]
    assert actions == ["notice.create", "notice.edit", "notice.cancel"]
