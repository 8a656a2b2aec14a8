"""Scheduled jobs of the foundation: retention of personal data, outbox housekeeping.

Each job is a module-level coroutine taking the runtime id (see ``bot.scheduler``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from apscheduler.triggers.cron import CronTrigger

from bot.scheduler import JobSpec, runtime
from storage.retention import purge_expired

log = logging.getLogger(__name__)


async def retention_job(runtime_id: str) -> dict[str, int]:
    """Delete message logs and delivered payloads older than ``privacy.retention_days``."""
    rt = runtime(runtime_id)
    async with rt.db.write() as conn:
        counts = await purge_expired(
            conn, older_than=timedelta(days=rt.config.privacy.retention_days)
        )
    log.info("retention purge: %s", counts)
    return counts


def foundation_jobs() -> list[JobSpec]:
    return [JobSpec("retention", retention_job, CronTrigger(hour=3, minute=30))]
