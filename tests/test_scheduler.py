"""Scheduler: one leader per PostgreSQL database, job defaults, errors reported, retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, insert, select, update

from bot.errors import ErrorReporter
from bot.jobs import retention_job
from bot.scheduler import JobRuntime, JobSpec, Scheduler, register_runtime, runtime
from storage.db import Database, GroupCommitter
from storage.models import InboundMessage, OutboxMessage, utcnow
from storage.outbox import Target, enqueue, outbox_row

inbound = InboundMessage.__table__
outbox = OutboxMessage.__table__


def job_runtime(config, db: Database, name: str) -> JobRuntime:
    return JobRuntime(
        id=name, config=config, db=db, committer=GroupCommitter(db), errors=ErrorReporter()
    )


async def failing_job(runtime_id: str) -> None:
    raise ValueError(f"job of {runtime_id} failed")


async def test_only_one_scheduler_leads_on_postgres_and_another_takes_over(make_config, db):
    if db.is_sqlite:
        pytest.skip("leadership by advisory lock is a PostgreSQL matter; SQLite runs one process")
    config = make_config()
    second_db = Database(config.database.url)
    first = Scheduler(job_runtime(config, db, "first"), [], leader_retry_s=0.05)
    second = Scheduler(job_runtime(config, second_db, "second"), [], leader_retry_s=0.05)
    try:
        await first.start()
        await asyncio.sleep(0.2)
        await second.start()
        await asyncio.sleep(0.3)
        assert (first.is_leader, second.is_leader) == (True, False)
        assert first.scheduler.state == 1 and second.scheduler.state == 2  # running / paused
        await first.stop()
        for _ in range(40):
            if second.is_leader:
                break
            await asyncio.sleep(0.05)
        assert second.is_leader
    finally:
        await first.stop()
        await second.stop()
        await second_db.dispose()


async def test_job_defaults_keep_late_jobs_and_errors_are_reported(make_config, db):
    rt = job_runtime(make_config(), db, "defaults")
    scheduler = Scheduler(rt, [JobSpec("failing", failing_job, IntervalTrigger(seconds=0.1))])
    await scheduler.start()
    try:
        defaults = scheduler.scheduler._job_defaults
        assert defaults["misfire_grace_time"] == 3600
        assert defaults["coalesce"] is True
        job = scheduler.scheduler.get_job("failing")
        assert job.kwargs == {"runtime_id": "defaults"}  # jobs take ids, not objects
        if db.is_sqlite:
            for _ in range(50):
                if rt.errors.counts["scheduler"]:
                    break
                await asyncio.sleep(0.05)
            assert rt.errors.counts["scheduler"] >= 1
            assert "failed" in str(rt.errors.last)
    finally:
        await scheduler.stop()


async def test_a_job_of_a_stopped_app_fails_clearly():
    with pytest.raises(LookupError):
        runtime("no-such-runtime")


async def test_retention_purges_old_logs_and_delivered_messages_only(make_config, db):
    config = make_config(privacy={"retention_days": 30})
    rt = job_runtime(config, db, "retention")
    register_runtime(rt)
    old = utcnow() - timedelta(days=31)
    async with db.write() as conn:
        for key, when in (("old", old), ("new", utcnow())):
            await conn.execute(
                insert(inbound).values(
                    channel="bridge",
                    dedupe_key=key,
                    sender_id="u",
                    kind="text",
                    text="体温36.5",
                    received_at=when,
                )
            )
        await enqueue(
            conn,
            [
                outbox_row(key=k, target=Target("bridge", "user", "u"), payload={"text": "x"})
                for k in ("sent-old", "pending-old", "sent-new")
            ],
            db.insert_ignore(outbox),
        )
        await conn.execute(
            update(outbox)
            .where(outbox.c.key.in_(["sent-old", "pending-old"]))
            .values(created_at=old)
        )
        await conn.execute(
            update(outbox).where(outbox.c.key.in_(["sent-old", "sent-new"])).values(status="sent")
        )
    counts = await retention_job("retention")
    assert counts["inbound_messages"] == 1
    assert counts["outbox"] == 1
    async with db.read() as conn:
        assert (await conn.execute(select(inbound.c.dedupe_key))).scalars().all() == ["new"]
        keys = sorted((await conn.execute(select(outbox.c.key))).scalars().all())
        assert keys == ["pending-old", "sent-new"]
        assert (await conn.execute(select(func.count()).select_from(inbound))).scalar() == 1
