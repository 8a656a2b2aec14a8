"""Residents' requests at city scale: the deadline sweep and a street's overdue list.

100,000 open requests spread over a city of 10 districts, 80 streets, 800 communities and
4,800 grids, each level with its responsible people.  Measured, beside baselines from the same
run on the same table:

* the deadline sweep with nothing due (the every-minute tick), with 10% due, and with every
  request due at once (after an outage), with ``requests.sweep_workers`` pages at a time and
  with one; goal: under 2 s on PostgreSQL, done in bulk;
* the sweep with 25,000, 50,000 and 100,000 due, timed and with its Python memory peak traced
  (tracemalloc): flat means the peak does not grow with the number of requests escalated
  (each page of ``requests.sweep_batch`` is one statement returning one row; the alerts are
  read back from the timeline a few rows per handler);
* one street's overdue list (first page of 50 and the total); goal: under 50 ms.

Usage: ``python bench/requests_bench.py [--sqlite] [--requests N]``.  PostgreSQL: the database
named by ``GRIDBOT_BENCH_REQUESTS_PG`` (default ``test_requests`` on 127.0.0.1), whose schema
is dropped and rebuilt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, insert, select, text, update

from bot.config import parse_config
from flows.requests import sweep_deadlines
from flows.texts import Texts
from storage import repo
from storage import requests_repo as rq
from storage.db import Database
from storage.migrate import upgrade_database
from storage.models import Identity, Person, PersonRole, Region, utcnow
from storage.requests_models import RequestClock, ResidentRequest

PG_URL = os.environ.get(
    "GRIDBOT_BENCH_REQUESTS_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test_requests"
)
DISTRICTS, STREETS, COMMUNITIES, GRIDS = 10, 8, 10, 6
CATEGORIES = ["supplies", "medical", "daily", "complaint", "suggestion", "other"]
CHUNK = 5000

requests_t = ResidentRequest.__table__
clocks_t = RequestClock.__table__
MEMORY_SIZES = (25_000, 50_000, 100_000)


async def reset_postgres(url: str) -> None:
    db = Database(url)
    async with db.engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await db.dispose()


async def build_city(db: Database) -> dict:
    """Regions with paths, one responsible person per region, identities for all of them."""
    regions = Region.__table__
    people = Person.__table__
    roles = PersonRole.__table__
    identities = Identity.__table__
    now = utcnow()
    next_id = 0
    rows, staff = [], []

    def region(code: str, level: str, parent: dict | None) -> dict:
        nonlocal next_id
        next_id += 1
        path = f"{parent['path'] if parent else '/'}{next_id}/"
        row = {
            "id": next_id,
            "code": code,
            "name": code,
            "level": level,
            "parent_id": parent["id"] if parent else None,
            "path": path,
            "settings": {},
        }
        rows.append(row)
        staff.append((row, "warden" if level == "grid" else "admin"))
        return row

    city = region("C", "city", None)
    streets, grids = [], []
    for d in range(DISTRICTS):
        district = region(f"D{d:02d}", "district", city)
        for s in range(STREETS):
            street = region(f"S{d:02d}{s:02d}", "street", district)
            streets.append(street)
            for c in range(COMMUNITIES):
                community = region(f"C{d:02d}{s:02d}{c:02d}", "community", street)
                for g in range(GRIDS):
                    grids.append(region(f"G{d:02d}{s:02d}{c:02d}{g}", "grid", community))
    async with db.write() as conn:
        for i in range(0, len(rows), CHUNK):
            await conn.execute(insert(regions), rows[i : i + CHUNK])
        person_rows = [
            {
                "id": i + 1,
                "name": f"staff{i}",
                "phone": "13800000000",
                "region_id": r["id"],
                "household_id": None,
                "opted_out": False,
                "created_at": now,
            }
            for i, (r, _) in enumerate(staff)
        ]
        for i in range(0, len(person_rows), CHUNK):
            await conn.execute(insert(people), person_rows[i : i + CHUNK])
            await conn.execute(
                insert(roles),
                [
                    {
                        "person_id": p["id"],
                        "role": staff[p["id"] - 1][1],
                        "scope_region_id": p["region_id"],
                    }
                    for p in person_rows[i : i + CHUNK]
                ],
            )
            await conn.execute(
                insert(identities),
                [
                    {
                        "person_id": p["id"],
                        "channel": "sim",
                        "external_id": f"sim-{p['id']}",
                        "display_name": "",
                        "created_at": now,
                        "last_seen_at": now,
                    }
                    for p in person_rows[i : i + CHUNK]
                ],
            )
    if db.engine.dialect.name == "postgresql":
        async with db.write() as conn:
            # explicit ids were inserted: move the sequences past them
            for table in ("regions", "people"):
                await conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
    wardens = {r["id"]: i + 1 for i, (r, _) in enumerate(staff) if r["level"] == "grid"}
    return {
        "grids": grids,
        "streets": streets,
        "wardens": wardens,
        "first_resident": len(staff) + 1,
    }


async def load_requests(db: Database, city: dict, count: int, now) -> None:
    """``count`` open requests; 10% past their escalation time, the rest due later."""
    rng = random.Random(7)
    people = Person.__table__
    residents = count // 2
    first = city["first_resident"]
    grids = city["grids"]
    ancestors = {}
    for grid in grids:
        ids = [int(p) for p in grid["path"].strip("/").split("/")]
        ancestors[grid["id"]] = {
            "city_id": ids[0],
            "district_id": ids[1],
            "street_id": ids[2],
            "community_id": ids[3],
        }
    async with db.write() as conn:
        for i in range(0, residents, CHUNK):
            await conn.execute(
                insert(people),
                [
                    {
                        "id": first + j,
                        "name": f"resident{j}",
                        "phone": "13900000000",
                        "region_id": grids[j % len(grids)]["id"],
                        "household_id": None,
                        "opted_out": False,
                        "created_at": now,
                    }
                    for j in range(i, min(i + CHUNK, residents))
                ],
            )
    for i in range(0, count, CHUNK):
        batch, clocks = [], []
        for j in range(i, min(i + CHUNK, count)):
            grid = grids[(j % residents) % len(grids)]
            due = now + (
                timedelta(minutes=-rng.randint(1, 60))
                if j % 10 == 0
                else timedelta(minutes=rng.randint(5, 600))
            )
            clocks.append(
                {
                    "request_id": j + 1,
                    "level": "grid",
                    "handler_id": city["wardens"][grid["id"]],
                    "stage": "accept",
                    "escalate_at": due,
                    "escalations": 0,
                    "category": CATEGORIES[j % len(CATEGORIES)],
                    "urgency": "urgent" if j % 3 == 0 else "normal",
                    "place_id": ancestors[grid["id"]]["community_id"],
                }
            )
            batch.append(
                {
                    "id": j + 1,
                    "number": f"Q20261128-{j:06d}",
                    "resident_id": first + (j % residents),
                    "region_id": grid["id"],
                    **ancestors[grid["id"]],
                    "category": CATEGORIES[j % len(CATEGORIES)],
                    "urgency": "urgent" if j % 3 == 0 else "normal",
                    "description": "家里需要帮助",
                    "items": None,
                    "quantity": None,
                    "attachments": [],
                    "channel": "sim",
                    "status": "pending",
                    "accept_due_at": due,
                    "resolve_due_at": due + timedelta(hours=12),
                    "sla_due_at": due,
                    "reopen_count": 0,
                    "created_at": due - timedelta(hours=1),
                }
            )
        async with db.write() as conn:
            await conn.execute(insert(requests_t), batch)
            await conn.execute(insert(clocks_t), clocks)
    if db.engine.dialect.name == "postgresql":
        async with db.write() as conn:
            await conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('requests', 'id'), "
                    "(SELECT max(id) FROM requests))"
                )
            )


async def analyze(db: Database) -> None:
    if db.engine.dialect.name == "postgresql":
        async with db.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE"))
    else:
        async with db.write() as conn:
            await conn.execute(text("ANALYZE"))


async def reset_all_due(db: Database, now, due: int | None = None) -> None:
    """Every request back at grid level and due (as after an outage), or only the first
    ``due`` of them (the rest due in an hour); timeline and outbox cleared so each scenario
    starts alike."""
    async with db.write() as conn:
        await conn.execute(
            update(clocks_t).values(
                level="grid",
                escalate_at=now - timedelta(minutes=1),
                escalations=0,
            )
        )
        if due is not None:
            await conn.execute(
                update(clocks_t)
                .where(clocks_t.c.request_id > due)
                .values(escalate_at=now + timedelta(hours=1))
            )
        await conn.execute(text("DELETE FROM request_events"))
        await conn.execute(text("DELETE FROM outbox"))
        # SQLite hands out the emptied timeline's ids again: alerts start from its start
        await conn.execute(text("UPDATE request_sweep_state SET alerted_event_id = 0"))
    await analyze(db)


async def timed(coro_factory, *, memory: bool = False):
    if memory:
        tracemalloc.start()
    start = time.perf_counter()
    result = await coro_factory()
    elapsed = time.perf_counter() - start
    peak = 0
    if memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return elapsed, peak, result


async def run(url: str, label: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool:
        await loop.run_in_executor(pool, upgrade_database, url)
    db = Database(url)
    config = parse_config({"database": {"url": url}})
    texts = Texts()
    now = utcnow()
    try:
        t = time.perf_counter()
        city = await build_city(db)
        await load_requests(db, city, count, now)
        await analyze(db)
        print(
            f"[{label}] loaded {count:,} open requests over {len(city['grids']):,} grids "
            f"in {time.perf_counter() - t:.1f} s (sweep batch {config.requests.sweep_batch})"
        )

        async def plain_count():
            async with db.read() as conn:
                return (await conn.execute(select(func.count()).select_from(requests_t))).scalar()

        async def due_count():
            async with db.read() as conn:
                return (
                    await conn.execute(select(func.count()).where(clocks_t.c.escalate_at <= now))
                ).scalar()

        baseline = min([(await timed(plain_count))[0] for _ in range(5)])
        due_baseline = min([(await timed(due_count))[0] for _ in range(5)])
        print(f"[{label}] baseline: plain count(*) over requests      {baseline * 1000:8.1f} ms")
        print(f"[{label}] baseline: count of due requests           {due_baseline * 1000:8.1f} ms")

        def sweep():
            return sweep_deadlines(db, texts, config, now=now)

        elapsed, _, report = await timed(sweep)
        print(
            f"[{label}] sweep, 10% due: {report.escalated + report.exhausted:,} escalated "
            f"in {elapsed:.2f} s ({report.batches} batches)"
        )
        elapsed, _, report = await timed(sweep)
        print(
            f"[{label}] sweep, nothing due (every-minute tick):    {elapsed * 1000:8.1f} ms "
            f"({report.escalated} escalated)"
        )
        await reset_all_due(db, now)
        elapsed, _, report = await timed(sweep)
        workers = 1 if db.is_sqlite else config.requests.sweep_workers
        print(
            f"[{label}] sweep, ALL due: {report.escalated + report.exhausted:,} escalated "
            f"in {elapsed:.2f} s ({report.batches} pages, {workers} at a time)   goal < 2 s"
        )
        async with db.read() as conn:
            events = (await conn.execute(text("SELECT count(*) FROM request_events"))).scalar()
            alerts = (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar()
        print(
            f"[{label}]   -> {events:,} timeline rows, {alerts:,} alerts (one per handler per run)"
        )
        if workers > 1:
            one_config = parse_config({"database": {"url": url}, "requests": {"sweep_workers": 1}})
            await reset_all_due(db, now)
            elapsed, _, report = await timed(
                lambda: sweep_deadlines(db, texts, one_config, now=now)
            )
            print(
                f"[{label}] sweep, ALL due, one page at a time: "
                f"{report.escalated + report.exhausted:,} escalated in {elapsed:.2f} s"
            )

        # time and memory as the number due grows, traced (slower under tracemalloc)
        for size in MEMORY_SIZES:
            if size > count:
                continue
            await reset_all_due(db, now, due=size)
            elapsed, peak, report = await timed(sweep, memory=True)
            print(
                f"[{label}] sweep, {report.escalated + report.exhausted:>7,} due, traced: "
                f"{elapsed:6.2f} s, memory peak (tracemalloc) {peak / 2**20:5.1f} MiB"
            )

        # a street's overdue list
        street_row = city["streets"][len(city["streets"]) // 2]
        async with db.read() as conn:
            street = await repo.get_region(conn, street_row["id"])
        assert street is not None
        list_now = now + timedelta(minutes=120)

        async def overdue():
            async with db.read() as conn:
                return await rq.overdue_in_region(conn, street, now=list_now, limit=50)

        async def street_count():
            async with db.read() as conn:
                return (
                    await conn.execute(
                        select(func.count()).where(requests_t.c.street_id == street.id)
                    )
                ).scalar()

        await overdue()
        samples = [(await timed(overdue))[0] for _ in range(30)]
        base_samples = [(await timed(street_count))[0] for _ in range(30)]
        total = (await overdue())[0]
        print(
            f"[{label}] baseline: count of the street's requests   "
            f"{statistics.median(base_samples) * 1000:8.1f} ms (median of 30)"
        )
        print(
            f"[{label}] street overdue list (50 of {total:,} overdue + total): "
            f"{statistics.median(samples) * 1000:.1f} ms median, "
            f"{max(samples) * 1000:.1f} ms max   goal < 50 ms"
        )
    finally:
        await db.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--sqlite", action="store_true", help="also run on SQLite")
    args = parser.parse_args()
    try:
        await reset_postgres(PG_URL)
    except OSError as exc:
        print(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    else:
        await run(PG_URL, "postgres", args.requests)
    if args.sqlite:
        with tempfile.TemporaryDirectory(prefix="gridbot-requests-bench-") as tmp:
            await run(f"sqlite+aiosqlite:///{tmp}/bench.db", "sqlite", args.requests)


if __name__ == "__main__":
    asyncio.run(main())
