"""Repositories and group commit on both SQLite (a real file) and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from storage import repo
from storage.db import Database, GroupCommitter
from storage.models import Conversation, Role


async def test_region_tree_paths_and_scope(db):
    async with db.write() as conn:
        city = await repo.create_region(conn, code="C", name="市", level="city", parent=None)
        district = await repo.create_region(
            conn, code="D", name="区", level="district", parent=city
        )
        street = await repo.create_region(
            conn, code="S", name="街道", level="street", parent=district
        )
        other = await repo.create_region(
            conn, code="D2", name="另一区", level="district", parent=city
        )
        with pytest.raises(ValueError, match="cannot sit under"):
            await repo.create_region(conn, code="G", name="网格", level="grid", parent=street)
    assert street.path == f"/{city.id}/{district.id}/{street.id}/"
    assert district.contains(street) and city.contains(street)
    assert not other.contains(street)
    async with db.read() as conn:
        chain = await repo.region_chain(conn, street)
        below = await repo.list_subregions(conn, district)
    assert [r.code for r in chain] == ["S", "D", "C"]
    assert [r.code for r in below] == ["D", "S"]


async def test_person_roles_identity_and_scope(db, demo):
    grid = demo.grids[0]
    async with db.write() as conn:
        warden = await repo.load_person(conn, demo.wardens[grid.code])
        await repo.bind_identity(conn, warden.id, "bridge", "w-1")
        found = await repo.person_by_identity(conn, "bridge", "w-1")
    assert warden.has_role(Role.WARDEN)
    assert warden.can_act_on(grid, Role.WARDEN)
    assert not warden.can_act_on(demo.grids[1], Role.WARDEN)
    assert found is not None and found[2].id == warden.id and found[2].region.code == grid.code
    with pytest.raises(IntegrityError):
        async with db.write() as conn:
            await repo.bind_identity(conn, demo.resident_ids[0], "bridge", "w-1")


async def test_people_read_for_a_batch_are_the_people_read_one_by_one(db, demo):
    # Rows of the batch read are taken by position and regions shared between people: the
    # result must still be exactly what the one-account read and load_person give.
    accounts = {
        "warden": demo.wardens[demo.grids[0].code],
        "warden-2": demo.wardens[demo.grids[1].code],
        "doctor": demo.doctor_id,
        "resident": demo.resident_ids[0],
        "neighbour": demo.resident_ids[1],
    }
    async with db.write() as conn:
        await repo.grant_role(conn, demo.doctor_id, Role.VOLUNTEER, demo.grids[1].id)
        for account, person_id in accounts.items():
            await repo.bind_identity(conn, person_id, "bridge", account)
        batch = await repo.people_by_identities(conn, "bridge", [*accounts, "nobody"])
        one_by_one = {a: await repo.person_by_identity(conn, "bridge", a) for a in accounts}
        loaded = {a: await repo.load_person(conn, pid) for a, pid in accounts.items()}
    assert batch == one_by_one
    assert {a: found[2] for a, found in batch.items()} == loaded
    assert [s.role for s in batch["doctor"][2].scopes] == [Role.DOCTOR, Role.VOLUNTEER]


async def test_conversation_state_round_trip(db):
    async with db.write() as conn:
        state = await repo.lock_conversation(
            conn,
            "p:1",
            row_lock=not db.is_sqlite,
            insert_ignore=db.insert_ignore(repo.conversations),
        )
        assert state.flow is None
        state.flow, state.state, state.data = "registration", "code_or_phone", {"a": [1, "二"]}
        await repo.save_conversation(
            conn,
            state,
            upsert=db.upsert(
                repo.conversations, ["key"], ["flow", "state", "data", "expires_at", "updated_at"]
            ),
        )
    async with db.write() as conn:
        again = await repo.lock_conversation(
            conn,
            "p:1",
            row_lock=not db.is_sqlite,
            insert_ignore=db.insert_ignore(repo.conversations),
        )
    assert (again.flow, again.state, again.data) == (
        "registration",
        "code_or_phone",
        {"a": [1, "二"]},
    )


def test_mask_phone():
    assert repo.mask_phone("13812345678") == "138****5678"
    assert repo.mask_phone(None) == ""


async def test_group_commit_isolates_a_failing_job(db):
    committer = GroupCommitter(db, max_batch=50)
    committer.start()
    table = Conversation.__table__

    def job(i: int):
        async def run(conn):
            await conn.execute(insert(table).values(key=f"k{i}", data={}))
            if i == 7:  # fails after writing: its write must not survive
                raise RuntimeError("job 7 fails")
            return i

        return run

    try:
        results = await asyncio.gather(
            *(committer.run(job(i)) for i in range(20)), return_exceptions=True
        )
    finally:
        await committer.stop()
    assert next(r for r in results if isinstance(r, Exception)).args == ("job 7 fails",)
    assert [r for r in results if not isinstance(r, Exception)] == [i for i in range(20) if i != 7]
    async with db.read() as conn:
        keys = set((await conn.execute(select(table.c.key))).scalars())
        count = (await conn.execute(select(func.count()).select_from(table))).scalar()
    assert "k7" not in keys and count == 19


async def test_group_commit_shares_transactions(db):
    committer = GroupCommitter(db, max_batch=64)
    committer.start()
    table = Conversation.__table__

    def job(i: int):
        async def run(conn):
            await conn.execute(insert(table).values(key=f"g{i}", data={}))
            return i

        return run

    try:
        await asyncio.gather(*(committer.run(job(i), lane_key="one-lane") for i in range(200)))
    finally:
        await committer.stop()
    assert committer.jobs == 200
    assert committer.batches < 200


async def test_group_commit_waits_for_another_sqlite_writer_without_blocking_the_loop(
    sqlite_url,
):
    """The committer's SQLite transactions run on the event loop; waiting for a write lock that
    another connection (or process) holds must still happen off the loop."""
    db = Database(sqlite_url)
    committer = GroupCommitter(db)
    committer.start()
    table = Conversation.__table__
    locked, release = threading.Event(), threading.Event()

    async def nothing(conn):
        return None

    await committer.run(nothing)  # the committer's connection is open (and the file in WAL)

    released_by_the_loop = []

    def hold_the_write_lock() -> None:
        other = sqlite3.connect(make_url(sqlite_url).database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        locked.set()
        # Only a running event loop can say "release": a loop stuck waiting for this lock
        # could not, and the lock is then released after a while anyway (the test fails).
        released_by_the_loop.append(release.wait(10))
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    try:
        await asyncio.to_thread(locked.wait, 30)

        async def job(conn):
            await conn.execute(insert(table).values(key="after-the-lock", data={}))
            return "done"

        queued = asyncio.ensure_future(committer.run(job))
        for _ in range(5):  # the loop keeps running while the job waits for the lock
            await asyncio.sleep(0.01)
        assert not queued.done()
        release.set()
        assert await queued == "done"
        assert released_by_the_loop == [True]
        async with db.read() as conn:
            keys = (await conn.execute(select(table.c.key))).scalars().all()
        assert keys == ["after-the-lock"]
    finally:
        release.set()
        holder.join()
        await committer.stop()
        await db.dispose()
