"""Engines, transactions and group commit for SQLite (embedded) and PostgreSQL (production).

Write transactions go through :meth:`Database.write`; on SQLite they start with
``BEGIN IMMEDIATE`` so that two writers queue on the busy timeout instead of failing on a lock
upgrade.  Hot-path writes go through :class:`GroupCommitter`, which runs many small jobs in one
transaction (each in its own savepoint) and commits once for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[AsyncConnection], Awaitable[T]]


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so that BEGIN and SAVEPOINT are ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """The application's database: an async engine plus the transaction helpers."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_async_engine(url, connect_args={"timeout": 30})
            _configure_sqlite(self.engine)
        else:
            self.engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction that is only read from (rolled back at the end)."""
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed when the block ends without an exception."""
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                await conn.execution_options(sqlite_immediate=True)
            async with conn.begin():
                yield conn

    def insert_ignore(self, table: Table) -> Insert:
        """``INSERT ... ON CONFLICT DO NOTHING`` for either engine."""
        dialect = sqlite if self.is_sqlite else postgresql
        return dialect.insert(table).on_conflict_do_nothing()

    def upsert(self, table: Table, index: list[str], update: list[str]) -> Insert:
        """``INSERT ... ON CONFLICT (index) DO UPDATE SET update = excluded.update``."""
        dialect: Any = sqlite if self.is_sqlite else postgresql
        stmt = dialect.insert(table)
        return stmt.on_conflict_do_update(
            index_elements=index, set_={name: stmt.excluded[name] for name in update}
        )

    async def dispose(self) -> None:
        await self.engine.dispose()


class _Pending:
    __slots__ = ("future", "job")

    def __init__(self, job: Job[Any], future: asyncio.Future[Any]) -> None:
        self.job = job
        self.future = future


class GroupCommitter:
    """Runs small write jobs in shared transactions, one commit per batch.

    A job is ``async def job(conn) -> result``.  Jobs with the same ``lane_key`` run in order on
    the same lane, so per-sender ordering holds; SQLite has one lane (one writer), PostgreSQL
    ``lanes`` of them.  If a job fails, or the commit fails (a deadlock with another process, a
    lost connection), the batch is rolled back and every job of it runs again in a transaction
    of its own, so a failing job affects only its own caller.  Jobs must therefore be
    database work only (re-runnable).  Results are handed back only after the commit.
    """

    def __init__(self, db: Database, *, max_batch: int = 64, lanes: int = 4) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queues: list[asyncio.Queue[_Pending]] = [
            asyncio.Queue() for _ in range(1 if db.is_sqlite else lanes)
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0
        self.jobs = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run_lane(queue), name=f"group-commit-{i}")
            for i, queue in enumerate(self._queues)
        ]

    async def stop(self) -> None:
        for queue in self._queues:
            await queue.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def run(self, job: Job[T], *, lane_key: str = "") -> T:
        """Queue ``job`` and wait until its batch has committed; returns its result."""
        if not self._tasks:
            raise RuntimeError("GroupCommitter.run() before start()")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        lane = zlib.crc32(lane_key.encode()) % len(self._queues)
        self._queues[lane].put_nowait(_Pending(job, future))
        return await future

    async def _run_lane(self, queue: asyncio.Queue[_Pending]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._commit_batch(batch)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        """Run the batch in one transaction, optimistically without savepoints.

        Jobs rarely fail, so the common case costs no SAVEPOINT/RELEASE round trips.  If any
        job raises, or the commit fails, the whole transaction is rolled back and each job is
        run again alone, where its own failure affects only itself.
        """
        results: list[Any] = []
        try:
            async with self._db.write() as conn:
                for item in batch:
                    results.append(await item.job(conn))
        except Exception as exc:
            if len(batch) == 1:
                self._settle(batch[0], False, exc)
                return
            log.debug("batch of %d jobs rolled back (%r); running them one by one",
                      len(batch), exc)
            for item in batch:
                await self._commit_batch([item])
            return
        self.batches += 1
        self.jobs += len(batch)
        for item, value in zip(batch, results, strict=True):
            self._settle(item, True, value)

    @staticmethod
    def _settle(item: _Pending, ok: bool, value: Any) -> None:
        if item.future.done():  # the caller stopped waiting (cancelled)
            return
        if ok:
            item.future.set_result(value)
        else:
            item.future.set_exception(value)
