"""Daily check-in at city scale: morning prompts, 10:00 reminders and a warden's "未打卡".

Seeds 25,000, then 50,000, then 100,000 residents (with households and a channel account each)
in 300 grids, with bulk inserts, on SQLite and on PostgreSQL.  At each size it runs the real
scheduler tick (``run_checkin_schedule``) at 08:00 (prompts to everyone) and, after 2 in 7 have
answered, at 10:00 (reminders to the rest), timing each and tracing its peak Python memory: a
streamed job stays flat as the count grows.  The baseline beside it, measured in the same run,
is a plain ``SELECT count(*)`` over the same people and accounts.  At 100,000 it times a warden's
"未打卡" query (count + first page) for a 500-household grid, beside ``SELECT count(*)`` of that
grid's people.

Goals (issue 4): prompts and reminders under 10 s per 100,000, memory flat; "未打卡" under 50 ms.

    python bench/checkin_bench.py [--sizes 25000,50000,100000] [--pg-url URL] [--skip-pg]

PostgreSQL: ``--pg-url`` or $GRIDBOT_CHECKIN_BENCH_PG (default: the local ``test_checkin``
database, whose schema is dropped and rebuilt).  Skipped with a note when it does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as clock
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select, text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from flows.checkin_config import CheckinConfig  # noqa: E402
from flows.checkin_schedule import run_checkin_schedule  # noqa: E402
from flows.texts import Texts  # noqa: E402
from storage import checkin as store  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.migrate import upgrade_database  # noqa: E402
from storage.models import utcnow  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
GRIDS = 300
BIG_GRID_HOUSEHOLDS = 500
BIG_GRID_EVERY = 80  # one resident in 80 lives in the big grid: 1,250 people at 100,000
PER_HOUSEHOLD = 3
BATCH = 10_000
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test_checkin"
FIRST_DAY = date(2031, 5, 1)


@dataclass
class Layout:
    """Where resident ``i`` lives: a grid index and a household id (deterministic)."""

    grid_ids: list[int]
    households: dict[tuple[int, int], int]

    @staticmethod
    def place(i: int) -> tuple[int, int]:
        if i % BIG_GRID_EVERY == 0:
            return 0, (i // BIG_GRID_EVERY) % BIG_GRID_HOUSEHOLDS
        grid = 1 + i % (GRIDS - 1)
        return grid, (i // (GRIDS - 1)) // PER_HOUSEHOLD


async def seed_regions(db: Database, total: int) -> Layout:
    """City > district > 10 streets > 30 communities > 300 grids, and every household."""
    regions = store.regions
    rows: list[dict[str, object]] = []
    rid = 0

    def add(code: str, name: str, level: str, parent: dict[str, object] | None) -> dict:
        nonlocal rid
        rid += 1
        row = {
            "id": rid,
            "code": code,
            "name": name,
            "level": level,
            "parent_id": parent["id"] if parent else None,
            "path": f"{parent['path'] if parent else '/'}{rid}/",
            "settings": {},
        }
        rows.append(row)
        return row

    city = add("BC", "基准市", "city", None)
    district = add("BD", "基准区", "district", city)
    streets = [add(f"BS{s:02d}", f"第{s}街道", "street", district) for s in range(10)]
    communities = [add(f"BC{c:03d}", f"第{c}社区", "community", streets[c % 10]) for c in range(30)]
    grids = [add(f"BG{g:03d}", f"第{g}网格", "grid", communities[g % 30]) for g in range(GRIDS)]
    households: dict[tuple[int, int], int] = {}
    household_rows = []
    for i in range(total):
        key = Layout.place(i)
        if key not in households:
            households[key] = len(households) + 1
            household_rows.append(
                {
                    "id": households[key],
                    "region_id": grids[key[0]]["id"],
                    "building": f"{key[1] // 40 + 1}栋",
                    "door": f"{key[1] % 40 + 101}",
                }
            )
    async with db.write() as conn:
        await conn.execute(insert(regions), rows)
        for start in range(0, len(household_rows), BATCH):
            await conn.execute(insert(store.households), household_rows[start : start + BATCH])
    return Layout([int(g["id"]) for g in grids], households)  # type: ignore[arg-type]


async def seed_people(db: Database, layout: Layout, start: int, stop: int) -> None:
    """Residents ``start .. stop-1`` with one simulator account each, in batches."""
    now = utcnow()
    for lo in range(start, stop, BATCH):
        hi = min(stop, lo + BATCH)
        people_rows, identity_rows = [], []
        for i in range(lo, hi):
            grid, household = Layout.place(i)
            pid = i + 1
            people_rows.append(
                {
                    "id": pid,
                    "name": f"居民{pid}",
                    "phone": None,
                    "region_id": layout.grid_ids[grid],
                    "household_id": layout.households[(grid, household)],
                    "opted_out": i % 200 == 199,
                    "created_at": now,
                }
            )
            identity_rows.append(
                {
                    "id": pid,
                    "person_id": pid,
                    "channel": "sim",
                    "external_id": f"sim-{pid}",
                    "display_name": "",
                    "created_at": now,
                    "last_seen_at": now,
                }
            )
        async with db.write() as conn:
            await conn.execute(insert(store.people), people_rows)
            await conn.execute(insert(store.identities), identity_rows)


async def seed_answers(db: Database, day: date) -> None:
    """Two in seven of everyone answered ``day`` (one INSERT ... SELECT)."""
    source = select(
        store.people.c.id,
        store.people.c.id,
        store.people.c.region_id,
        store.people.c.household_id,
        text(f"'{day.isoformat()}'") if db.is_sqlite else text(f"DATE '{day.isoformat()}'"),
        text("0"),
        text("'complete'"),
        text("'low'"),
        text("'[]'"),
        text("'{\"temperature\": 36.5}'"),
        text("CURRENT_TIMESTAMP"),
    ).where(store.people.c.id % 7 < 2)
    columns = [
        "person_id",
        "reporter_id",
        "region_id",
        "household_id",
        "day",
        "slot",
        "status",
        "risk",
        "reasons",
        "answers",
        "created_at",
    ]
    async with db.write() as conn:
        await conn.execute(insert(store.records).from_select(columns, source))


async def analyze(db: Database) -> None:
    async with db.write() as conn:
        await conn.exec_driver_sql("ANALYZE")


async def timed_tick(db: Database, cfg: CheckinConfig, texts: Texts, when: datetime):
    tracemalloc.start()
    started = time.perf_counter()
    counts = await run_checkin_schedule(db, cfg, TZ, texts, when)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak, counts


async def baseline_count(db: Database) -> tuple[float, int]:
    started = time.perf_counter()
    async with db.read() as conn:
        n = (
            await conn.execute(
                select(func.count()).select_from(
                    store.people.join(
                        store.identities, store.identities.c.person_id == store.people.c.id
                    )
                )
            )
        ).scalar()
    return time.perf_counter() - started, int(n or 0)


async def median_ms(fn, repeat: int = 25) -> float:
    await fn()  # warm the cache and the statement
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def at(day: date, hour: int) -> datetime:
    return datetime.combine(day, clock(hour, 0), tzinfo=TZ)


async def run_backend(name: str, url: str, sizes: list[int]) -> None:
    db = Database(url)
    cfg = CheckinConfig()
    texts = Texts()
    try:
        seed_started = time.perf_counter()
        layout = await seed_regions(db, sizes[-1])
        seeded = 0
        print(f"\n== {name} ==")
        print(
            f"{'residents':>10} {'prompts':>8} {'prompt s':>9} {'peak KiB':>9} "
            f"{'reminders':>9} {'remind s':>9} {'peak KiB':>9} {'baseline count(*) s':>20}"
        )
        for stage, size in enumerate(sizes):
            await seed_people(db, layout, seeded, size)
            seeded = size
            await analyze(db)
            day = FIRST_DAY.replace(day=FIRST_DAY.day + stage)
            base_s, _ = await baseline_count(db)
            prompt_s, prompt_peak, prompt_counts = await timed_tick(db, cfg, texts, at(day, 8))
            await seed_answers(db, day)
            await analyze(db)
            remind_s, remind_peak, remind_counts = await timed_tick(db, cfg, texts, at(day, 10))
            print(
                f"{size:>10,} {prompt_counts['prompt']:>8,} {prompt_s:>9.2f} "
                f"{prompt_peak / 1024:>9.0f} {remind_counts['reminder']:>9,} {remind_s:>9.2f} "
                f"{remind_peak / 1024:>9.0f} {base_s:>20.3f}"
            )
        big_grid = await _region(db, layout.grid_ids[0])

        async def missing() -> None:
            async with db.read() as conn:
                await store.missing_people(conn, [big_grid.path], day, limit=20, offset=0)

        async def grid_count() -> None:
            async with db.read() as conn:
                await conn.execute(
                    select(func.count())
                    .select_from(store.people)
                    .where(store.people.c.region_id == big_grid.id)
                )

        async with db.read() as conn:
            total, _rows = await store.missing_people(
                conn, [big_grid.path], day, limit=20, offset=0
            )
            people_in_grid = (
                await conn.execute(
                    select(func.count())
                    .select_from(store.people)
                    .where(store.people.c.region_id == big_grid.id)
                )
            ).scalar()
        query_ms = await median_ms(missing)
        base_ms = await median_ms(grid_count)
        print(
            f"未打卡 for a {BIG_GRID_HOUSEHOLDS}-household grid ({people_in_grid:,} people, "
            f"{total:,} not checked in), count + first page: median {query_ms:.1f} ms "
            f"(baseline count(*) of the grid's people: {base_ms:.1f} ms)"
        )
        print(f"{name} total incl. seeding: {time.perf_counter() - seed_started:.1f} s")
    finally:
        await db.dispose()


async def _region(db: Database, region_id: int):
    async with db.read() as conn:
        return (
            await conn.execute(select(store.regions).where(store.regions.c.id == region_id))
        ).first()


async def fresh_pg(url: str) -> bool:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    except (OSError, Exception) as exc:  # no server, no database: say so and skip
        print(f"\n== postgresql == skipped ({exc.__class__.__name__}: {exc})")
        return False
    finally:
        await engine.dispose()
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25000,50000,100000")
    parser.add_argument("--pg-url", default=os.environ.get("GRIDBOT_CHECKIN_BENCH_PG", DEFAULT_PG))
    parser.add_argument("--skip-pg", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"check-in benchmark: {GRIDS} grids, residents {', '.join(f'{s:,}' for s in sizes)}; "
        "2 in 7 answer before the 10:00 reminder; 1 in 200 opted out"
    )
    with tempfile.TemporaryDirectory(prefix="gridbot-checkin-bench-") as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        upgrade_database(url)
        asyncio.run(run_backend("sqlite", url, sizes))
    if not args.skip_pg and asyncio.run(fresh_pg(args.pg_url)):
        upgrade_database(args.pg_url)
        asyncio.run(run_backend("postgresql", args.pg_url, sizes))


if __name__ == "__main__":
    main()
