"""Shared fixtures: real databases (a SQLite file and PostgreSQL), the real aiohttp app.

PostgreSQL: set GRIDBOT_TEST_PG_URL (``.ci/run`` does), or a server on 127.0.0.1:5432 with a
``test`` database is used if it answers.  Outside CI, without a server, the PostgreSQL variants
skip with one line saying how to enable them; in CI (``CI=true``) they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.app import RUNTIME, Runtime, create_app
from bot.config import Config, parse_config
from storage.db import Database
from storage.migrate import upgrade_database
from storage.schema import metadata as all_tables
from storage.seed import DemoCity, seed_demo

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("GRIDBOT_TEST_PG_URL", DEFAULT_PG_URL)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_HINT = (
    "PostgreSQL not reachable at {url}: start it or set GRIDBOT_TEST_PG_URL to run these tests"
)


async def _pg_available(url: str) -> bool:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        await engine.dispose()


def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run blocking set-up (its own event loop, Alembic) outside the test's running loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A migrated PostgreSQL database, rebuilt from an empty schema once per test session."""
    if not _in_thread(lambda: asyncio.run(_pg_available(PG_URL))):
        if IN_CI:
            pytest.fail(PG_HINT.format(url=PG_URL))
        pytest.skip(PG_HINT.format(url=PG_URL))

    async def reset() -> None:
        engine = create_async_engine(PG_URL)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await engine.dispose()

    _in_thread(lambda: asyncio.run(reset()))
    _in_thread(lambda: upgrade_database(PG_URL))
    return PG_URL


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies (migrations run once, for real)."""
    path = tmp_path_factory.mktemp("template") / "gridbot.db"
    _in_thread(lambda: upgrade_database(f"sqlite+aiosqlite:///{path}"))
    return path


async def _truncate_pg(url: str) -> None:
    engine = create_async_engine(url)
    names = ", ".join(t.name for t in all_tables.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> str:
    """A fresh, migrated database of each kind, one per test."""
    if request.param == "sqlite":
        path = tmp_path / "gridbot.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("pg_url")
    await _truncate_pg(url)
    return url


@pytest.fixture
async def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """Only SQLite, for tests about the embedded store itself or the CLI."""
    path = tmp_path / "gridbot.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


BRIDGE_SECRET = "test-bridge-secret"


@pytest.fixture
def make_config(database_url: str) -> Callable[..., Config]:
    """Build a Config for the test database; keyword sections override the defaults."""

    def build(**sections: Any) -> Config:
        data: dict[str, Any] = {
            "database": {"url": database_url},
            "channels": {
                "bridge": {
                    "enabled": True,
                    "secret": BRIDGE_SECRET,
                    "outbound_url": "http://127.0.0.1:9/unused",
                },
                "simulator": {"enabled": True},
            },
            "scheduler": {"enabled": False},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                merged = dict(data[key])
                for sub, sub_value in value.items():
                    if isinstance(sub_value, dict) and isinstance(merged.get(sub), dict):
                        merged[sub] = {**merged[sub], **sub_value}
                    else:
                        merged[sub] = sub_value
                data[key] = merged
            else:
                data[key] = value
        return parse_config(data)

    return build


@pytest.fixture
async def start_app() -> AsyncIterator[Callable[..., Awaitable[tuple[TestClient, Runtime]]]]:
    """Start the real aiohttp app on a local port: ``client, rt = await start_app(config)``.

    Delivery and the scheduler are off unless ``run_workers=True``; tests drive
    ``rt.delivery.run_once()`` themselves.
    """
    clients: list[TestClient] = []

    async def start(config: Config, *, run_workers: bool = False) -> tuple[TestClient, Runtime]:
        app = await create_app(config, run_workers=run_workers)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client, app[RUNTIME]

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def demo(db: Database) -> DemoCity:
    """The demo city (200 residents) in the test database."""
    async with db.write() as conn:
        return await seed_demo(conn, residents=60)
