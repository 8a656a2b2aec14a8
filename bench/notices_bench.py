"""A district-wide notice: 100,000 residents and 1,000 group chats, on SQLite and PostgreSQL.

Measured, each beside a baseline from the same run:

* **queue**: time to write every outbox row of the notice (``flows.notices.queue_notice``:
  ``INSERT ... SELECT`` in pages, each person's current channel chosen in SQL), goal < 5 s;
  baselines: a bare ``INSERT ... SELECT`` of the same number of rows into the outbox (no
  audience, no identity lookup) and the naive way, ``executemany`` of rows built in Python;
* **delivery**: messages a second through the bridge channel to a local aiohttp gateway on
  127.0.0.1 (a child process that checks each signature), via the real delivery worker
  (claim, rate limits, send, record), with one worker and with two (as two app processes
  share the queue), goal >= 1,000 msg/s; baseline: raw signed POSTs to the same gateway with
  the same concurrency; and the cost of one 500-row claim with the whole notice due;
* **memory**: Python heap peak (tracemalloc) while queuing and while delivering, and the
  process RSS sampled along the delivery run: flat means it does not grow with the audience.

Delivery runs for at most ``--deliver-seconds`` per database (the rate is what matters).
Usage: ``python bench/notices_bench.py [--people N] [--groups N] [--sqlite-only]``.
PostgreSQL: ``GRIDBOT_BENCH_NOTICES_PG`` (default: the ``test_notices`` database on
127.0.0.1), whose public schema is dropped and rebuilt.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from sqlalchemy import delete, func, insert, select, text

from bot.app import build_runtime
from bot.channels.bridge import sign
from bot.config import Config, parse_config
from flows import notices
from flows.texts import Texts
from storage import repo
from storage.db import Database
from storage.migrate import upgrade_database
from storage.models import (
    ChatGroup,
    Identity,
    OutboxMessage,
    OutboxStatus,
    Person,
    PersonRole,
    Region,
    utcnow,
)
from storage.outbox import claim_due

PG_URL = os.environ.get(
    "GRIDBOT_BENCH_NOTICES_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test_notices"
)
SECRET = "bench-secret"
STREETS, COMMUNITIES_PER_STREET = 10, 5
CONCURRENCY = 64

outbox = OutboxMessage.__table__
people = Person.__table__
identities = Identity.__table__
regions = Region.__table__
groups = ChatGroup.__table__
roles = PersonRole.__table__


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the gateway (child process) -----------------------------------------------------------


def run_gateway(port: int, received: Any) -> None:
    """A bridge gateway: verifies the signature, counts the message, answers 200."""
    import hmac

    from aiohttp import web

    async def outbound(request: web.Request) -> web.Response:
        body = await request.read()
        expected = sign(SECRET, request.headers["X-Bridge-Timestamp"], body)
        if not hmac.compare_digest(expected, request.headers["X-Bridge-Signature"]):
            return web.Response(status=401)
        json.loads(body)
        with received.get_lock():
            received.value += 1
        return web.Response(text='{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/outbound", outbound)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def wait_for_port(port: int) -> None:
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"gateway not listening on {port}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the district --------------------------------------------------------------------------


async def build_district(url: str, n_people: int, n_groups: int) -> int:
    """Migrate an empty database and load a district; returns the admin's person id."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool:
        # Only this feature's branch (0001 -> 0005): other features' migrations in progress
        # must not decide whether this benchmark runs.
        await loop.run_in_executor(pool, upgrade_database, url, "0005")
    db = Database(url)
    now = utcnow()
    try:
        async with db.write() as conn:
            rows: list[dict[str, Any]] = [
                {
                    "id": 1,
                    "code": "C",
                    "name": "江城市",
                    "level": "city",
                    "parent_id": None,
                    "path": "/1/",
                },
                {
                    "id": 2,
                    "code": "D01",
                    "name": "江岸区",
                    "level": "district",
                    "parent_id": 1,
                    "path": "/1/2/",
                },
            ]
            next_id = 3
            grid_ids: list[int] = []
            communities = STREETS * COMMUNITIES_PER_STREET
            per_community = max(1, n_groups // communities)
            for s in range(STREETS):
                street = next_id
                rows.append(
                    {
                        "id": street,
                        "code": f"S{s:02d}",
                        "name": f"第{s + 1}街道",
                        "level": "street",
                        "parent_id": 2,
                        "path": f"/1/2/{street}/",
                    }
                )
                next_id += 1
                for c in range(COMMUNITIES_PER_STREET):
                    community = next_id
                    rows.append(
                        {
                            "id": community,
                            "code": f"C{s:02d}{c}",
                            "name": f"社区{s}-{c}",
                            "level": "community",
                            "parent_id": street,
                            "path": f"/1/2/{street}/{community}/",
                        }
                    )
                    next_id += 1
                    for g in range(per_community):
                        grid = next_id
                        rows.append(
                            {
                                "id": grid,
                                "code": f"G{s:02d}{c}{g:02d}",
                                "name": f"网格{grid}",
                                "level": "grid",
                                "parent_id": community,
                                "path": f"/1/2/{street}/{community}/{grid}/",
                            }
                        )
                        grid_ids.append(grid)
                        next_id += 1
            await conn.execute(insert(regions), [{**r, "settings": {}} for r in rows])
            await conn.execute(
                insert(people).values(
                    id=1, name="区管理员", region_id=2, opted_out=False, created_at=now
                )
            )
            await conn.execute(insert(roles).values(person_id=1, role="admin", scope_region_id=2))
            first_grid, grid_count = grid_ids[0], len(grid_ids)
            numbers = (
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL "
                f"SELECT x + 1 FROM n WHERE x < {n_people}) SELECT x FROM n"
                if db.is_sqlite
                else f"SELECT generate_series(1, {n_people}) AS x"
            )
            stamp = now.replace(tzinfo=None).isoformat(sep=" ")
            await conn.execute(
                text(
                    "INSERT INTO people (id, name, region_id, opted_out, created_at) "
                    f"SELECT x + 1, '居民' || x, {first_grid} + (x % {grid_count}), false, "
                    f"CAST('{stamp}' AS TIMESTAMP) FROM ({numbers}) AS numbers"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO identities (person_id, channel, external_id, display_name, "
                    "created_at, last_seen_at) "
                    "SELECT id, 'bridge', 'wx-' || id, '', created_at, created_at FROM people "
                    "WHERE id > 1"
                )
            )
            await conn.execute(
                insert(groups),
                [
                    {
                        "region_id": grid,
                        "channel": "bridge",
                        "external_id": f"room-{grid}",
                        "name": f"网格{grid}居民群",
                        "purpose": "residents",
                        "robot_key": None,
                    }
                    for grid in grid_ids
                ],
            )
        if not db.is_sqlite:
            async with db.engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text("ANALYZE"))
    finally:
        await db.dispose()
    return 1


async def reset_postgres(url: str) -> bool:
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        return True
    except OSError:
        return False
    finally:
        await db.dispose()


# -- measurements --------------------------------------------------------------------------


async def baseline_insert_select(db: Database, n_rows: int) -> float:
    """The same number of outbox rows by one bare INSERT ... SELECT (then removed)."""
    stamp = utcnow().replace(tzinfo=None).isoformat(sep=" ")
    start = time.perf_counter()
    async with db.write() as conn:
        await conn.execute(
            text(
                "INSERT INTO outbox (key, channel, target_kind, target, rate_key, person_id, "
                "payload, status, attempts, next_attempt_at, ref_type, ref_id, created_at) "
                "SELECT 'base:' || id, 'bridge', 'user', 'wx-' || id, 'bridge:user:wx-' || id, id, "
                f"'{{\"text\": \"x\"}}', 'pending', 0, CAST('{stamp}' AS TIMESTAMP), 'base', 0, "
                f"CAST('{stamp}' AS TIMESTAMP) FROM people WHERE id <= {n_rows + 1} AND id > 1"
            )
        )
    elapsed = time.perf_counter() - start
    async with db.write() as conn:
        await conn.execute(delete(outbox).where(outbox.c.ref_type == "base"))
    return elapsed


async def baseline_executemany(db: Database, n_rows: int) -> float:
    """The naive way: build every row in Python and executemany them (then removed)."""
    now = utcnow()
    start = time.perf_counter()
    async with db.write() as conn:
        for chunk in range(0, n_rows, 10_000):
            await conn.execute(
                insert(outbox),
                [
                    {
                        "key": f"naive:{i}",
                        "channel": "bridge",
                        "target_kind": "user",
                        "target": f"wx-{i}",
                        "rate_key": f"bridge:user:wx-{i}",
                        "person_id": i,
                        "payload": {"text": "x"},
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "ref_type": "naive",
                        "ref_id": 0,
                        "created_at": now,
                    }
                    for i in range(chunk, min(n_rows, chunk + 10_000))
                ],
            )
    elapsed = time.perf_counter() - start
    async with db.write() as conn:
        await conn.execute(delete(outbox).where(outbox.c.ref_type == "naive"))
    return elapsed


async def queue_district_notice(
    db: Database, config: Config, admin_id: int
) -> tuple[int, float, float, float]:
    """Create and queue the notice; (rows, seconds, tracemalloc peak MB, create seconds)."""
    now = utcnow()
    created_at = time.perf_counter()
    async with db.write() as conn:
        admin = await repo.load_person(conn, admin_id)
        draft = await notices.validate(
            conn,
            admin,
            text="全区通知：明天起全区开展为期三天的全员核酸检测，请按网格安排的时段到指定地点检测。",
            region_words=["D01"],
            ack_required=True,
            now=now,
            max_chars=config.notices.max_text_chars,
        )
        created = await notices.create_notice(
            conn, admin, draft, settings=config, now=now, via="bench"
        )
    create_s = time.perf_counter() - created_at
    gc.collect()
    tracemalloc.start()
    start = time.perf_counter()
    await notices.queue_notice(db, created.notice_id, texts=Texts(), settings=config, now=now)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    async with db.read() as conn:
        rows = int((await conn.execute(select(func.count()).select_from(outbox))).scalar_one())
    return rows, elapsed, peak, create_s


async def raw_post_rate(url: str, count: int) -> float:
    """Signed POSTs straight to the gateway, CONCURRENCY at a time: the transport's ceiling."""
    sent = 0
    async with aiohttp.ClientSession() as session:

        async def worker(offset: int) -> None:
            nonlocal sent
            for i in range(offset, count, CONCURRENCY):
                body = json.dumps(
                    {
                        "message_id": f"raw:{i}",
                        "to": {"user_id": f"wx-{i}"},
                        "text": "全区通知" * 10,
                    },
                    ensure_ascii=False,
                ).encode()
                stamp = str(int(time.time()))
                headers = {
                    "Content-Type": "application/json",
                    "X-Bridge-Timestamp": stamp,
                    "X-Bridge-Signature": sign(SECRET, stamp, body),
                }
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    sent += response.status == 200

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
        return sent / (time.perf_counter() - start)


async def claim_cost(db: Database) -> float:
    """Seconds one claim of a 500-row batch takes with the backlog as it is (rolled back)."""
    async with db.engine.connect() as conn:
        transaction = await conn.begin()
        start = time.perf_counter()
        await claim_due(
            conn, limit=500, claim_timeout=timedelta(seconds=300), skip_locked=not db.is_sqlite
        )
        elapsed = time.perf_counter() - start
        await transaction.rollback()
    return elapsed


async def deliver_for(
    config: Config, seconds: float, *, trace: bool, workers: int = 1
) -> dict[str, Any]:
    """Run ``workers`` real delivery workers (as that many app processes would) for up to
    ``seconds``; rate, RSS samples, heap peak."""
    runtimes = [await build_runtime(config) for _ in range(workers)]
    counts = [0] * workers
    samples: list[float] = []
    try:
        gc.collect()
        if trace:
            tracemalloc.start()
        start = time.perf_counter()

        async def work(index: int) -> None:
            next_sample = 0
            while time.perf_counter() - start < seconds:
                claimed = await runtimes[index].delivery.run_once()
                if not claimed:
                    return
                counts[index] += claimed
                if index == 0 and counts[0] >= next_sample:
                    samples.append(rss_mb())
                    next_sample += 5_000

        await asyncio.gather(*(work(i) for i in range(workers)))
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else float("nan")
        if trace:
            tracemalloc.stop()
        async with runtimes[0].db.read() as conn:
            sent = (
                await conn.execute(
                    select(func.count())
                    .select_from(outbox)
                    .where(outbox.c.status == OutboxStatus.SENT)
                )
            ).scalar_one()
    finally:
        for rt in runtimes:
            await rt.session.close()
            await rt.db.dispose()
    return {
        "claimed": sum(counts),
        "sent": int(sent),
        "seconds": elapsed,
        "rss": samples,
        "peak": peak,
    }


def bench_config(url: str, gateway: str) -> Config:
    return parse_config(
        {
            "database": {"url": url},
            "channels": {
                "simulator": {"enabled": False},
                "bridge": {"enabled": True, "secret": SECRET, "outbound_url": gateway},
            },
            "outbox": {
                "batch_size": 500,
                "send_concurrency": CONCURRENCY,
                "default_rate_per_minute": 1_000_000,
            },
            "notices": {"quiet_hours": False},
            "scheduler": {"enabled": False},
        }
    )


async def run_one(name: str, url: str, args: argparse.Namespace, gateway: str) -> None:
    print(f"\n== {name}: a district of {args.people:,} residents and {args.groups:,} group chats")
    t0 = time.perf_counter()
    admin = await build_district(url, args.people, args.groups)
    print(f"   (loaded in {time.perf_counter() - t0:.1f} s)")
    config = bench_config(url, gateway)
    db = Database(url)
    try:
        n_rows = args.people + args.groups
        raw = await baseline_insert_select(db, n_rows)
        naive = await baseline_executemany(db, n_rows)
        rows, elapsed, peak, create_s = await queue_district_notice(db, config, admin)
    finally:
        await db.dispose()
    print(
        f"   queue notice       {rows:>8,} rows  {elapsed:6.2f} s  {rows / elapsed:9,.0f} rows/s"
        f"   heap peak {peak:5.1f} MB   goal < 5 s: {'yes' if elapsed < 5 else 'NO'}"
    )
    print(f"   (before that: validate, count the audience, store the notice: {create_s:.2f} s)")
    print(f"   baseline bare INSERT ... SELECT     {raw:6.2f} s  {n_rows / raw:9,.0f} rows/s")
    print(f"   baseline executemany from Python    {naive:6.2f} s  {n_rows / naive:9,.0f} rows/s")

    if not url.startswith("sqlite"):
        db = Database(url)
        async with db.engine.connect() as conn:  # what autovacuum does within a minute
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("ANALYZE outbox"))
        await db.dispose()
    db = Database(url)
    try:
        claim_s = await claim_cost(db)
    finally:
        await db.dispose()
    print(
        f"   one claim of 500 rows with {rows:,} due: {claim_s * 1000:.0f} ms "
        f"(storage.outbox.claim_due, every batch)"
    )
    raw_rate = await raw_post_rate(gateway, 5_000)
    print(
        f"   baseline raw signed POSTs to the gateway, {CONCURRENCY} at a time: "
        f"{raw_rate:,.0f} msg/s"
    )
    for workers, seconds in ((1, args.deliver_seconds), (2, args.deliver_seconds / 2)):
        result = await deliver_for(config, seconds, trace=False, workers=workers)
        rate = result["claimed"] / result["seconds"]
        print(
            f"   deliver via bridge, {workers} worker{'s' if workers > 1 else ' '} "
            f"{result['claimed']:>7,} msgs  {result['seconds']:5.1f} s  {rate:7,.0f} msg/s"
            f"   goal >= 1,000: {'yes' if rate >= 1000 else 'NO'}"
        )
        if workers == 1:
            rss = " ".join(f"{v:.0f}" for v in result["rss"])
            print(f"   RSS along that delivery (every 5,000 msgs): {rss} MB")
    traced = await deliver_for(config, args.trace_seconds, trace=True)
    print(
        f"   delivery heap peak (tracemalloc, {traced['claimed']:,} msgs): "
        f"{traced['peak']:.1f} MB;  rows sent so far: {traced['sent']:,} of {rows:,}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=1_000)
    parser.add_argument("--deliver-seconds", type=float, default=10.0)
    parser.add_argument("--trace-seconds", type=float, default=2.0)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()

    port = free_port()
    received = multiprocessing.get_context("spawn").Value("q", 0)
    gateway_process = multiprocessing.get_context("spawn").Process(
        target=run_gateway, args=(port, received), daemon=True
    )
    gateway_process.start()
    gateway = f"http://127.0.0.1:{port}/outbound"
    try:
        await wait_for_port(port)
        with tempfile.TemporaryDirectory(prefix="notices-bench-") as tmp:
            await run_one("SQLite", f"sqlite+aiosqlite:///{tmp}/bench.db", args, gateway)
        if not args.sqlite_only:
            if await reset_postgres(PG_URL):
                await run_one("PostgreSQL", PG_URL, args, gateway)
            else:
                print(f"\nPostgreSQL not reachable at {PG_URL}: skipped")
        print(
            f"\ngateway received {received.value:,} messages in all; "
            f"peak RSS of this process {peak_rss_mb():.0f} MB"
        )
    finally:
        gateway_process.terminate()
        gateway_process.join(5)


if __name__ == "__main__":
    asyncio.run(main())
