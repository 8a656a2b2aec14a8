"""APScheduler inside the app's lifecycle, with one scheduling process per database.

Jobs are module-level coroutine functions that take a runtime *id*, not live objects; the id
resolves to the running app's :class:`JobRuntime` at run time.  Misfire grace is an hour and
runs coalesce: APScheduler's default grace of one second would silently skip a job that is a
little late.  On PostgreSQL only the process holding an advisory lock schedules; the others
retry taking it, so another one takes over when the leader goes away.  Jobs still write outbox
rows with deterministic keys, so even two schedulers could not double-send.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.config import Config
from bot.errors import ErrorReporter
from storage.db import Database, GroupCommitter

log = logging.getLogger(__name__)

LEADER_LOCK_ID = 0x67726964  # "grid"
LEADER_RETRY_S = 15.0


@dataclass
class JobRuntime:
    """What scheduled jobs may use, looked up by id when a job runs."""

    id: str
    config: Config
    db: Database
    committer: GroupCommitter
    errors: ErrorReporter
    extras: dict[str, Any] = field(default_factory=dict)
    wake_delivery: Callable[[], None] = lambda: None

    def __hash__(self) -> int:
        return hash(self.id)


_RUNTIMES: weakref.WeakValueDictionary[str, JobRuntime] = weakref.WeakValueDictionary()


def register_runtime(runtime: JobRuntime) -> None:
    _RUNTIMES[runtime.id] = runtime


def runtime(runtime_id: str) -> JobRuntime:
    """The running app a job belongs to (raises ``LookupError`` once it has stopped)."""
    try:
        return _RUNTIMES[runtime_id]
    except KeyError:
        raise LookupError(f"runtime {runtime_id} is not running") from None


@dataclass(frozen=True)
class JobSpec:
    id: str
    func: Callable[[str], Awaitable[Any]]
    trigger: BaseTrigger


class Scheduler:
    """Owns the AsyncIOScheduler and the leadership that decides whether it runs jobs."""

    def __init__(
        self, rt: JobRuntime, jobs: list[JobSpec], *, leader_retry_s: float = LEADER_RETRY_S
    ) -> None:
        self.rt = rt
        self.leader_retry_s = leader_retry_s
        self.jobs = jobs
        self.scheduler = AsyncIOScheduler(
            timezone=rt.config.tz,
            job_defaults={
                "misfire_grace_time": rt.config.scheduler.misfire_grace_s,
                "coalesce": True,
                "max_instances": 1,
            },
        )
        self.scheduler.add_listener(self._on_error, EVENT_JOB_ERROR)
        self.is_leader = False
        self._leader_conn: AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None

    def _on_error(self, event: JobExecutionEvent) -> None:
        if event.exception is not None:
            self.rt.errors.report(event.exception, where="scheduler", job=event.job_id)

    async def start(self) -> None:
        register_runtime(self.rt)
        for spec in self.jobs:
            self.scheduler.add_job(
                spec.func,
                spec.trigger,
                id=spec.id,
                kwargs={"runtime_id": self.rt.id},
                replace_existing=True,
            )
        self.scheduler.start(paused=True)
        if self.rt.db.is_sqlite:
            self._become_leader()
        else:
            self._task = asyncio.create_task(self._hold_leadership(), name="scheduler-leader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self._release()

    def _become_leader(self) -> None:
        self.is_leader = True
        self.scheduler.resume()
        log.info("this process schedules jobs")

    async def _hold_leadership(self) -> None:
        while True:
            try:
                if self._leader_conn is None:
                    conn = await self.rt.db.engine.connect()
                    got = (
                        await conn.execute(
                            text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK_ID}
                        )
                    ).scalar()
                    await conn.commit()
                    if got:
                        self._leader_conn = conn
                        self._become_leader()
                    else:
                        await conn.close()
                else:
                    await self._leader_conn.execute(text("SELECT 1"))
                    await self._leader_conn.commit()
            except Exception as exc:  # lost the connection: step down and try again later
                self.rt.errors.report(exc, where="scheduler-leader")
                await self._release()
            await asyncio.sleep(self.leader_retry_s)

    async def _release(self) -> None:
        if self.is_leader and self.scheduler.running:
            self.scheduler.pause()
        self.is_leader = False
        conn, self._leader_conn = self._leader_conn, None
        if conn is not None:
            try:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEADER_LOCK_ID})
                await conn.commit()
            except Exception as exc:  # the connection is already gone; the lock went with it
                log.debug("advisory unlock failed: %r", exc)
            await conn.close()


def misfire_window(config: Config) -> timedelta:
    return timedelta(seconds=config.scheduler.misfire_grace_s)
