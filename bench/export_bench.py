"""The day's check-ins of a district as XLSX: time and peak memory as the district grows.

Seeds a district of 300 grids with N residents who all answered today (bulk inserts), then runs
the real export (``write_checkins_xlsx``: pages of 2,000 records appended to an openpyxl
write-only workbook in a worker thread) and, beside it in the same run, two baselines:

- ``query only``: the same paged query with nothing written (what the database costs);
- ``in memory``: every row fetched at once into an ordinary (not write-only) workbook, the way
  an export is usually first written; only up to ``--naive-max`` rows (it grows without bound).

Peak memory is tracemalloc's peak of Python allocations during one run (every thread), measured
in a second run of each so the timing run is not slowed by tracing.  A bounded export stays flat
as N grows.

    python bench/export_bench.py [--sizes 20000,100000,200000] [--skip-pg] [--naive-max 100000]

PostgreSQL: the database named by $GRIDBOT_BENCH_PG_DB (default gridbot_bench) is dropped and
recreated through $GRIDBOT_BENCH_PG_ADMIN; skipped with a note when no server answers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from datetime import date
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import fresh_postgres, sqlite_url  # noqa: E402
from openpyxl import Workbook  # noqa: E402
from sqlalchemy import insert, select, text  # noqa: E402

from bot.config import Config  # noqa: E402
from flows.checkin_export import ExportLabels, write_checkins_xlsx  # noqa: E402
from storage import checkin as store  # noqa: E402
from storage import repo  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.migrate import upgrade_database  # noqa: E402
from storage.models import utcnow  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
GRIDS = 300
BATCH = 10_000
DAY = date(2031, 5, 1)
ANSWERS = (
    '{"temperature": 36.5, "symptoms": ["none"], "contact": false, "travel": false, '
    '"status": "home"}'
)


async def seed(db: Database, total: int) -> repo.RegionInfo:
    """A city > district > 10 streets > 30 communities > 300 grids, ``total`` residents, and
    one complete record each for ``DAY``."""
    rows: list[dict[str, object]] = []

    def add(code: str, level: str, parent: dict[str, object] | None) -> dict[str, object]:
        rid = len(rows) + 1
        row = {
            "id": rid,
            "code": code,
            "name": f"{code}名",
            "level": level,
            "parent_id": parent["id"] if parent else None,
            "path": f"{parent['path'] if parent else '/'}{rid}/",
            "settings": {},
        }
        rows.append(row)
        return row

    city = add("XC", "city", None)
    district = add("XD", "district", city)
    streets = [add(f"XS{s:02d}", "street", district) for s in range(10)]
    communities = [add(f"XC{c:03d}", "community", streets[c % 10]) for c in range(30)]
    grids = [add(f"XG{g:03d}", "grid", communities[g % 30]) for g in range(GRIDS)]
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(insert(store.regions), rows)
    for lo in range(0, total, BATCH):
        people = [
            {
                "id": i + 1,
                "name": f"居民{i + 1}",
                "phone": None,
                "region_id": grids[i % GRIDS]["id"],
                "household_id": None,
                "opted_out": False,
                "created_at": now,
            }
            for i in range(lo, min(total, lo + BATCH))
        ]
        async with db.write() as conn:
            await conn.execute(insert(store.people), people)
    day = f"'{DAY.isoformat()}'" if db.is_sqlite else f"DATE '{DAY.isoformat()}'"
    source = select(
        store.people.c.id,
        store.people.c.id,
        store.people.c.region_id,
        text(day),
        text("0"),
        text("'complete'"),
        text("'low'"),
        text("'[]'"),
        text(f"'{ANSWERS}'"),
        text("CURRENT_TIMESTAMP"),
    )
    columns = [
        "person_id",
        "reporter_id",
        "region_id",
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
        await conn.exec_driver_sql("ANALYZE")
    async with db.read() as conn:
        region = await repo.get_region_by_code(conn, "XD")
    assert region is not None
    return region


async def query_only(db: Database, region: repo.RegionInfo, path: Path) -> int:
    count, after = 0, 0
    while True:
        async with db.read() as conn:
            rows = await store.records_in_scope(
                conn, [region.path], DAY, limit=2000, after_id=after
            )
        if not rows:
            return count
        count += len(rows)
        after = rows[-1].id


async def in_memory(db: Database, region: repo.RegionInfo, path: Path) -> int:
    async with db.read() as conn:
        rows = await store.records_in_scope(conn, [region.path], DAY, limit=10**9)
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    for row in rows:
        sheet.append([row.day.isoformat(), row.name, row.region_code, row.status, row.risk])
    await asyncio.to_thread(workbook.save, str(path))
    return len(rows)


async def measure(
    run: Callable[[Path], Awaitable[int]], folder: Path
) -> tuple[int, float, float, float]:
    """(rows, seconds, peak MiB, file MiB): one timed run, then one traced run."""
    path = folder / f"timed-{id(run)}.xlsx"
    started = time.perf_counter()
    rows = await run(path)
    elapsed = time.perf_counter() - started
    size = path.stat().st_size / 2**20 if path.exists() else 0.0
    tracemalloc.start()
    await run(folder / "traced.xlsx")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return rows, elapsed, peak / 2**20, size


async def bench(url: str, label: str, sizes: list[int], naive_max: int) -> None:
    for total in sizes:
        await asyncio.to_thread(upgrade_database, url)
        db = Database(url)
        try:
            if not db.is_sqlite:
                async with db.write() as conn:
                    await conn.exec_driver_sql(
                        "TRUNCATE checkin_records, people, regions RESTART IDENTITY CASCADE"
                    )
            region = await seed(db, total)
            await bench_size(db, region, label, total, naive_max)
        finally:
            await db.dispose()
        if db.is_sqlite:
            path = Path(url.removeprefix("sqlite+aiosqlite:///"))
            await asyncio.to_thread(path.unlink, missing_ok=True)


async def bench_size(
    db: Database, region: repo.RegionInfo, label: str, total: int, naive_max: int
) -> None:
    config = Config()
    labels = ExportLabels.load()

    async def export(path: Path) -> int:
        return await write_checkins_xlsx(
            db, config.checkin, region, DAY, path, tz=TZ, labels=labels
        )

    runs: list[tuple[str, Callable[[Path], Awaitable[int]]]] = [
        ("export (write-only, paged)", export),
        ("baseline: query only", partial(query_only, db, region)),
    ]
    if total <= naive_max:
        runs.append(("baseline: in memory", partial(in_memory, db, region)))
    with tempfile.TemporaryDirectory(prefix="gridbot-export-") as tmp:
        for name, run in runs:
            rows, seconds, peak, size = await measure(run, Path(tmp))
            print(
                f"{label:10} {total:>8,} residents  {name:28} rows {rows:>8,}  "
                f"{seconds:7.2f} s  {rows / seconds:>9,.0f} rows/s  "
                f"peak {peak:7.1f} MiB  file {size:6.1f} MiB",
                flush=True,
            )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,100000,200000")
    parser.add_argument("--naive-max", type=int, default=100_000)
    parser.add_argument("--skip-pg", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with sqlite_url() as url:
        await bench(url, "sqlite", sizes, args.naive_max)
    if args.skip_pg:
        return
    pg = await fresh_postgres()
    if pg is None:
        print("postgres   skipped: no server answered")
        return
    await bench(pg, "postgres", sizes, args.naive_max)


if __name__ == "__main__":
    asyncio.run(main())
