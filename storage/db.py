"""Engines, transactions and group commit for SQLite (embedded) and PostgreSQL (production).

Write transactions go through :meth:`Database.write`; on SQLite they start with
``BEGIN IMMEDIATE`` so that two writers queue on the busy timeout instead of failing on a lock
upgrade.  Hot-path writes go through :class:`GroupCommitter`, which runs many small jobs in one
transaction and commits once for all of them; jobs of one :class:`BatchStep` also share their
reads and writes (one statement for the whole batch instead of one per job).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite
from sqlalchemy import Boolean, String, Table, TypeDecorator, bindparam, event, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeEngine
from sqlalchemy.util import await_

log = logging.getLogger(__name__)

T = TypeVar("T")
ItemT = TypeVar("ItemT")
SharedT = TypeVar("SharedT")
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
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        driver = conn.connection.driver_connection
        if immediate and isinstance(driver, _SqliteConnection) and driver.inline:
            await_(driver.begin_immediate())
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class _ListParam(TypeDecorator[list[Any]]):
    """A list bound as one parameter: an array on PostgreSQL, a JSON array on SQLite."""

    impl = String
    cache_ok = True

    def __init__(self, item_type: TypeEngine[Any]) -> None:
        super().__init__()
        self.item_type = item_type

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(self.item_type))
        return dialect.type_descriptor(String())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return json.dumps(list(value), ensure_ascii=False)


class _AnyOf(ColumnElement[bool]):
    """``column`` equals one item of a list parameter (see :func:`any_of`)."""

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a predicate already: never compiled as "... = 1"
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's declaration, for the cache key)
        ("column", InternalTraversal.dp_clauseelement),
        ("param", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], param: BindParameter[Any]) -> None:
        self.column = column
        self.param = param


@compiles(_AnyOf, "postgresql")
def _any_of_postgresql(element: _AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    return (
        f"{compiler.process(element.column, **kw)} = ANY({compiler.process(element.param, **kw)})"
    )


@compiles(_AnyOf, "sqlite")
def _any_of_sqlite(element: _AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    column, param = compiler.process(element.column, **kw), compiler.process(element.param, **kw)
    return f"{column} IN (SELECT value FROM json_each({param}))"


def any_of(
    column: ColumnElement[Any], name: str, item_type: TypeEngine[Any] | None = None
) -> ColumnElement[bool]:
    """``column`` is one of the values of the list parameter ``name``: ``= ANY(:name)`` on
    PostgreSQL, ``IN (SELECT value FROM json_each(:name))`` on SQLite.  Unlike an expanding
    ``IN``, the statement text is the same for any length of list, so it is compiled (and on
    PostgreSQL prepared) once."""
    param = bindparam(name, type_=_ListParam(item_type if item_type is not None else column.type))
    return _AnyOf(column, param)


BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another one's write lock."""
CHECKPOINT_EVERY_S = 1.0
"""How often the group committer has SQLite's WAL moved into the database file."""


class _SqliteConnection(aiosqlite.Connection):
    """aiosqlite's connection, which hands every call to its own thread (a round trip through
    the event loop for each cursor, execute, fetch and close), except while ``inline`` is set:
    then calls run right away on the event loop's thread.

    Only the group committer sets ``inline``, on its own connection, for whole transactions.
    Nothing it runs then can wait long: ``BEGIN IMMEDIATE`` is tried without waiting and, if
    another connection holds the write lock, waits for it on the thread (:meth:`begin_immediate`);
    once the lock is ours, in WAL mode, no statement and no ``COMMIT`` waits for anyone.  The
    one slow part of a commit, a checkpoint (copying the WAL into the database file and
    syncing it), is switched off on this connection (``wal_autocheckpoint``); the committer
    checkpoints from another connection instead, while this one goes on writing.
    """

    inline = False

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.inline:
            return fn(*args, **kwargs)
        return await super()._execute(fn, *args, **kwargs)

    async def _on_thread(self, fn: Callable[[], Any]) -> Any:
        return await super()._execute(fn)

    async def go_inline(self) -> None:
        """Prepare this connection for the group committer's inline transactions."""
        await self._on_thread(lambda: _pragma(self._conn, "wal_autocheckpoint=0"))
        self.inline = True

    async def begin_immediate(self) -> None:
        """``BEGIN IMMEDIATE``: right away if the write lock is free, else wait on the thread."""
        conn = self._conn
        _pragma(conn, "busy_timeout=0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
        finally:
            _pragma(conn, f"busy_timeout={BUSY_TIMEOUT_MS}")
        await self._on_thread(lambda: conn.execute("BEGIN IMMEDIATE"))


def _pragma(conn: sqlite3.Connection, pragma: str) -> None:
    # Read the row it answers with: a statement left unfinished would block COMMIT.
    conn.execute(f"PRAGMA {pragma}").fetchall()


def _sqlite_connector(path: str) -> Callable[[], Awaitable[_SqliteConnection]]:
    async def connect() -> _SqliteConnection:
        # check_same_thread=False: the connection is used by its thread and, inline, by the
        # loop's thread, never by both at once (each call is awaited before the next).
        connection = _SqliteConnection(
            lambda: sqlite3.connect(path, timeout=30, check_same_thread=False), 64
        )
        connection._thread.daemon = True  # as SQLAlchemy's own aiosqlite dialect does
        await connection  # starts the thread and opens the database file
        return connection

    return connect


def each_of(name: str, item_type: TypeEngine[Any] | None = None) -> Any:
    """PostgreSQL only: the list parameter ``name`` as a table ``wanted(key)``, one row per
    item (``unnest``).  Joined ``LATERAL`` to a ``LIMIT 1`` look-up by a unique key, it makes
    PostgreSQL look every item up in the index whatever its statistics say: ``= ANY(:name)``
    over a table not analysed since it was nearly empty can be planned as a scan of every row
    (the inbound log right after a deploy: a scan per batch that grows with the log)."""
    array = postgresql.ARRAY(item_type if item_type is not None else String())
    return func.unnest(bindparam(name, type_=array)).table_valued("key").render_derived("wanted")


def _json_dumps(value: Any) -> str:
    # Chinese text as itself, not as \u escapes: half the bytes to encode, store and log.
    return json.dumps(value, ensure_ascii=False)


class Database:
    """The application's database: an async engine plus the transaction helpers."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                self.engine = create_async_engine(
                    url,
                    async_creator=_sqlite_connector(parsed.database),
                    json_serializer=_json_dumps,
                )
            else:
                self.engine = create_async_engine(
                    url, connect_args={"timeout": 30}, json_serializer=_json_dumps
                )
            _configure_sqlite(self.engine)
        else:
            self.engine = create_async_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                json_serializer=_json_dumps,
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

    async def writer_connection(self) -> AsyncConnection:
        """A connection of its own for a group-commit lane: on SQLite its write transactions
        start with ``BEGIN IMMEDIATE`` and run inline on the event loop (see
        ``_SqliteConnection``)."""
        conn = await self.engine.connect()
        if self.is_sqlite:
            await conn.execution_options(sqlite_immediate=True)
            driver = (await conn.get_raw_connection()).driver_connection
            if isinstance(driver, _SqliteConnection):
                await driver.go_inline()
        return conn

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


class BatchStep(ABC, Generic[ItemT, SharedT, T]):
    """Work that the jobs of one kind share inside a group-commit batch.

    :meth:`prepare` runs once per batch with every item of this step, before any job of the
    batch (reads for all of them in one statement instead of one each); :meth:`run` then runs
    each item in queue order, interleaved with the batch's other jobs; :meth:`finish` runs once
    after the last job, before the commit (writes for all of them in one statement).  When the
    batch is rolled back and its jobs run again one by one, each runs as a batch of one, so
    the three methods must not assume more than one item.
    """

    @abstractmethod
    async def prepare(self, conn: AsyncConnection, items: list[ItemT]) -> SharedT:
        """Read what the items need; the result is handed to :meth:`run` and :meth:`finish`."""

    @abstractmethod
    async def run(self, conn: AsyncConnection, shared: SharedT, item: ItemT) -> T:
        """Do one item's work; its result goes to its caller once the batch has committed."""

    @abstractmethod
    async def finish(self, conn: AsyncConnection, shared: SharedT) -> None:
        """Write what the items left for the end of the batch."""


class _Pending:
    __slots__ = ("future", "item", "job", "step")

    def __init__(
        self,
        job: Job[Any] | None,
        future: asyncio.Future[Any],
        step: BatchStep[Any, Any, Any] | None = None,
        item: Any = None,
    ) -> None:
        self.job = job
        self.future = future
        self.step = step
        self.item = item


GATHER_TURNS = 3
"""Event-loop turns a lane lets pass before it takes its batch from the queue."""


class _Lane:
    """One writer: its queue of jobs and the connection it keeps between batches."""

    __slots__ = ("conn", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.conn: AsyncConnection | None = None


class GroupCommitter:
    """Runs small write jobs in shared transactions, one commit per batch.

    A job is ``async def job(conn) -> result``.  Jobs with the same ``lane_key`` run in order on
    the same lane, so per-sender ordering holds; SQLite has one lane (one writer), PostgreSQL
    ``lanes`` of them.  If a job fails, or the commit fails (a deadlock with another process, a
    lost connection), the batch is rolled back and every job of it runs again in a transaction
    of its own, so a failing job affects only its own caller.  Jobs must therefore be
    database work only (re-runnable).  Results are handed back only after the commit.

    Each lane keeps its connection from batch to batch (no pool check-out, ping and reset per
    batch); a connection that breaks is dropped and the next batch opens a new one.
    """

    def __init__(self, db: Database, *, max_batch: int = 64, lanes: int = 1) -> None:
        self._db = db
        self._max_batch = max_batch
        self._lanes = [_Lane() for _ in range(1 if db.is_sqlite else lanes)]
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0
        self.jobs = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run_lane(lane), name=f"group-commit-{i}")
            for i, lane in enumerate(self._lanes)
        ]
        if self._db.is_sqlite:
            self._tasks.append(asyncio.create_task(self._checkpoint(), name="wal-checkpoint"))

    async def stop(self) -> None:
        for lane in self._lanes:
            await lane.queue.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for lane in self._lanes:
            await self._drop_connection(lane)

    async def run(self, job: Job[T], *, lane_key: str = "") -> T:
        """Queue ``job`` and wait until its batch has committed; returns its result."""
        result: T = await self._queue(_Pending(job, self._new_future()), lane_key)
        return result

    async def run_step(
        self, step: BatchStep[ItemT, Any, T], item: ItemT, *, lane_key: str = ""
    ) -> T:
        """Queue ``item`` for ``step`` (see :class:`BatchStep`) and wait for its result."""
        return await self.submit_step(step, item, lane_key=lane_key)

    def submit_step(
        self, step: BatchStep[ItemT, Any, T], item: ItemT, *, lane_key: str = ""
    ) -> asyncio.Future[T]:
        """Queue ``item`` for ``step``; the future of its result (no task needed to wait)."""
        return self._queue(_Pending(None, self._new_future(), step, item), lane_key)

    def _new_future(self) -> asyncio.Future[Any]:
        if not self._tasks:
            raise RuntimeError("GroupCommitter.run() before start()")
        return asyncio.get_running_loop().create_future()

    def _queue(self, pending: _Pending, lane_key: str) -> asyncio.Future[Any]:
        lanes = self._lanes
        lane = lanes[zlib.crc32(lane_key.encode()) % len(lanes)] if len(lanes) > 1 else lanes[0]
        lane.queue.put_nowait(pending)
        return pending.future

    async def _run_lane(self, lane: _Lane) -> None:
        queue = lane.queue
        while True:
            batch = [await queue.get()]
            # Let the loop run what is ready first (requests already received, on their way to
            # this queue: a few loop turns each): the batch grows at no cost in latency, and a
            # batch costs the database about the same whatever its size.
            for _ in range(GATHER_TURNS):
                if queue.qsize() + 1 >= self._max_batch:
                    break
                await asyncio.sleep(0)
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._commit_batch(lane, batch)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _checkpoint(self) -> None:
        """Move SQLite's WAL into the database file every ``CHECKPOINT_EVERY_S`` while batches
        are committed.  The lane's own connection does not (it would do it on the event loop);
        this runs on another connection and its thread, and the lane goes on writing."""
        checkpointed = self.batches
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            if self.batches == checkpointed:
                continue
            checkpointed = self.batches
            try:
                async with self._db.engine.connect() as conn:
                    driver = (await conn.get_raw_connection()).driver_connection
                    assert driver is not None
                    async with driver.execute("PRAGMA wal_checkpoint(PASSIVE)") as cursor:
                        await cursor.fetchall()
            except Exception as exc:  # the next round tries again; the WAL only grows meanwhile
                log.warning("SQLite WAL checkpoint failed: %r", exc)

    async def _connection(self, lane: _Lane) -> AsyncConnection:
        if lane.conn is None:
            lane.conn = await self._db.writer_connection()
        return lane.conn

    @staticmethod
    async def _drop_connection(lane: _Lane) -> None:
        conn, lane.conn = lane.conn, None
        if conn is not None:
            try:
                # Closed for good, not returned to the pool: it is set up for this lane only.
                await conn.invalidate()
                await conn.close()
            except Exception as exc:  # it is broken already; a new one replaces it
                log.debug("closing a lane connection failed: %r", exc)

    async def _commit_batch(self, lane: _Lane, batch: list[_Pending]) -> None:
        """Run the batch in one transaction, optimistically without savepoints.

        Jobs rarely fail, so the common case costs no SAVEPOINT/RELEASE round trips.  If any
        job raises, or the commit fails, the whole transaction is rolled back and each job is
        run again alone, where its own failure affects only itself.
        """
        results: list[Any] = []
        try:
            conn = await self._connection(lane)
            try:
                async with conn.begin():
                    await self._run_jobs(conn, batch, results)
            except Exception:
                if conn.invalidated or conn.closed:
                    await self._drop_connection(lane)
                raise
        except Exception as exc:
            if len(batch) == 1:
                self._settle(batch[0], False, exc)
                return
            log.debug("batch of %d jobs rolled back (%r); running them one by one", len(batch), exc)
            for item in batch:
                await self._commit_batch(lane, [item])
            return
        self.batches += 1
        self.jobs += len(batch)
        for item, value in zip(batch, results, strict=True):
            self._settle(item, True, value)

    @staticmethod
    async def _run_jobs(conn: AsyncConnection, batch: list[_Pending], results: list[Any]) -> None:
        steps: dict[BatchStep[Any, Any, Any], list[Any]] = {}
        for item in batch:
            if item.step is not None:
                steps.setdefault(item.step, []).append(item.item)
        shared = {step: await step.prepare(conn, items) for step, items in steps.items()}
        for item in batch:
            if item.step is None:
                assert item.job is not None
                results.append(await item.job(conn))
            else:
                results.append(await item.step.run(conn, shared[item.step], item.item))
        for step, state in shared.items():
            await step.finish(conn, state)

    @staticmethod
    def _settle(item: _Pending, ok: bool, value: Any) -> None:
        if item.future.done():  # the caller stopped waiting (cancelled)
            return
        if ok:
            item.future.set_result(value)
        else:
            item.future.set_exception(value)
