"""The web simulator at /sim, through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import func, select

from storage.models import Identity, InboundMessage, Person, SimMessage
from storage.outbox import Target, enqueue, outbox, outbox_row

SIM = "/sim"


async def count(db, table) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)


async def send(client, address: str, text: str, **extra):
    r = await client.post(f"{SIM}/api/send", json={"address": address, "text": text, **extra})
    assert r.status == 200, await r.text()
    return (await r.json())["replies"]


async def messages(client, address: str, group: str = "", after: int = 0) -> list[dict]:
    r = await client.get(
        f"{SIM}/api/messages", params={"address": address, "group": group, "after": str(after)}
    )
    assert r.status == 200
    return (await r.json())["messages"]


async def test_page_renders(make_config, start_app):
    client, _ = await start_app(make_config())
    r = await client.get(SIM)
    assert r.status == 200
    assert r.content_type == "text/html"
    html = await r.text()
    assert "<title>网格助手 · 模拟器</title>" in html
    assert f'const BASE = "{SIM}";' in html
    r = await client.get("/", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == SIM


async def test_people_lists_demo_people_with_roles_staff_first(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    r = await client.get(f"{SIM}/api/people")
    assert r.status == 200
    listed = (await r.json())["people"]
    assert len(listed) == len(demo.resident_ids) + len(demo.wardens) + 3
    by_id = {p["id"]: p for p in listed}
    warden = by_id[demo.wardens["G0102"]]
    assert warden["roles"] == ["warden"]
    assert warden["address"] == f"sim-{warden['id']}"
    assert (warden["grid"], warden["group"]) == ("G0102", "grid-G0102")
    assert by_id[demo.doctor_id]["roles"] == ["doctor"]
    assert by_id[demo.admin_id]["roles"] == ["admin"]
    assert by_id[demo.resident_ids[0]]["roles"] == ["resident"]

    staff_flags = [p["roles"] != ["resident"] for p in listed]
    assert staff_flags == sorted(staff_flags, reverse=True)
    residents = [p for p in listed if p["roles"] == ["resident"]]
    assert [p["grid"] for p in residents] == sorted(p["grid"] for p in residents)


async def test_staff_added_after_residents_still_come_first(make_config, start_app, demo, db):
    from storage import repo
    from storage.models import Role

    async with db.write() as conn:
        late = await repo.create_person(conn, name="新来网格员", region_id=demo.grids[5].id)
        await repo.grant_role(conn, late, Role.WARDEN, demo.grids[5].id)
        await repo.bind_identity(conn, late, "sim", f"sim-{late}", "新来网格员")
    client, _ = await start_app(make_config())
    listed = (await (await client.get(f"{SIM}/api/people")).json())["people"]
    first_resident = next(i for i, p in enumerate(listed) if p["roles"] == ["resident"])
    assert late in [p["id"] for p in listed[:first_resident]]


async def test_send_replies_and_keeps_the_conversation(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    address = f"sim-{demo.resident_ids[0]}"
    replies = await send(client, address, "帮助")
    assert replies and all(isinstance(t, str) and t for t in replies)
    shown = await messages(client, address)
    assert [(m["sender"], m["text"]) for m in shown] == [(address, "帮助")] + [
        ("bot", t) for t in replies
    ]
    assert all(m["where"] == "user" for m in shown)
    # Polling after the last id returns nothing new.
    assert await messages(client, address, after=shown[-1]["id"]) == []


async def test_a_newcomer_registers_through_the_chat(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    r = await client.post(f"{SIM}/api/newcomer")
    address = (await r.json())["address"]
    assert address.startswith("sim-new-")

    assert "网格编码" in "".join(await send(client, address, "你好"))
    assert "桃园社区第1网格" in "".join(await send(client, address, "G0101"))
    assert "登记好了，李新来" in "".join(await send(client, address, "李新来"))

    identities, people = Identity.__table__, Person.__table__
    async with db.read() as conn:
        person = (
            await conn.execute(
                select(people)
                .join(identities, identities.c.person_id == people.c.id)
                .where(identities.c.channel == "sim", identities.c.external_id == address)
            )
        ).one()
    assert person.name == "李新来"
    assert person.region_id == demo.grids[0].id


async def test_outbox_pushes_appear_in_messages(make_config, start_app, demo, db):
    client, rt = await start_app(make_config())
    resident = demo.resident_ids[3]
    address = f"sim-{resident}"
    rows = [
        outbox_row(
            key=f"test-push:{resident}",
            target=Target("sim", "user", address),
            payload={"text": "明天上午停水，请提前储水。"},
            person_id=resident,
        ),
        outbox_row(
            key="test-push:group:G0101",
            target=Target("sim", "chat", "grid-G0101"),
            payload={"text": "本周六社区义诊。"},
        ),
    ]
    async with db.write() as conn:
        await enqueue(conn, rows, rt.db.insert_ignore(outbox))
    await rt.delivery.run_once()

    mine = await messages(client, address)
    assert [(m["where"], m["sender"], m["text"]) for m in mine] == [
        ("user", "bot", "明天上午停水，请提前储水。")
    ]
    with_group = await messages(client, address, group="grid-G0101")
    # The two rows are delivered independently, so either may arrive first.
    assert sorted((m["where"], m["text"]) for m in with_group) == [
        ("chat", "本周六社区义诊。"),
        ("user", "明天上午停水，请提前储水。"),
    ]
    # Another person sees neither the personal push nor, without asking, the group.
    assert await messages(client, f"sim-{demo.resident_ids[4]}") == []

    # Delivering again (or the same key enqueued again) shows nothing twice.
    async with db.write() as conn:
        await enqueue(conn, rows[:1], rt.db.insert_ignore(outbox))
    await rt.delivery.run_once()
    assert len(await messages(client, address, group="grid-G0101")) == 2


async def test_bad_input_is_400_and_stores_nothing(make_config, start_app, demo, db):
    client, _ = await start_app(make_config())
    address = f"sim-{demo.resident_ids[0]}"
    bad_bodies = [
        {"text": "你好"},
        {"address": address},
        {"address": address, "text": "   "},
        {"address": address, "text": 42},
        {"address": address, "text": "长" * 10_001},
        {"address": "wx-someone", "text": "你好"},
        {"address": "sim-", "text": "你好"},
        {"address": "sim-" + "x" * 300, "text": "你好"},
        {"address": "sim-a b", "text": "你好"},
        {"address": address, "text": "你好", "chat": 7},
        {"address": address, "text": "你好", "chat": "grid-" + "G" * 300},
        {"address": address, "text": "你好", "message_id": "m" * 300},
        {"address": address, "text": "你好", "name": "名" * 300},
    ]
    for body in bad_bodies:
        r = await client.post(f"{SIM}/api/send", json=body)
        assert r.status == 400, body
        error = (await r.json())["error"]
        assert error["code"] == "bad_request" and error["message"]
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        r = await client.post(
            f"{SIM}/api/send", data=raw, headers={"Content-Type": "application/json"}
        )
        assert r.status == 400, raw
    for query in ({"address": "wx-1"}, {"address": address, "after": "x"}, {}):
        r = await client.get(f"{SIM}/api/messages", params=query)
        assert r.status == 400
    assert await count(db, SimMessage.__table__) == 0
    assert await count(db, InboundMessage.__table__) == 0
