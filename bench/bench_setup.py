"""Database set-up shared by benchmarks: migrate, seed the demo city, bridge identities."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import insert

from storage.db import Database
from storage.migrate import upgrade_database
from storage.models import Identity, utcnow
from storage.seed import seed_demo


async def migrate_and_seed(url: str, residents: int = 200) -> list[str]:
    """A migrated database with the demo city; every resident also on the bridge."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool:
        await loop.run_in_executor(pool, upgrade_database, url)
    db = Database(url)
    try:
        async with db.write() as conn:
            city = await seed_demo(conn, residents=residents, sim=False)
            senders = [f"bridge-{pid}" for pid in city.resident_ids]
            await conn.execute(
                insert(Identity.__table__),
                [
                    {
                        "person_id": pid,
                        "channel": "bridge",
                        "external_id": f"bridge-{pid}",
                        "display_name": "",
                        "created_at": utcnow(),
                        "last_seen_at": utcnow(),
                    }
                    for pid in city.resident_ids
                ],
            )
    finally:
        await db.dispose()
    return senders
