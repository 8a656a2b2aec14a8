"""Scheduled notices go out at their time: a job every ``notices.poll_interval_s``.

The work is :func:`flows.notices.queue_due_notices` (it also resumes a notice whose queuing
process died); this module only resolves the runtime id, runs it now and wakes delivery.
"""

from __future__ import annotations

import logging

from apscheduler.triggers.interval import IntervalTrigger

from bot.config import Config
from bot.scheduler import JobSpec, runtime
from flows.notices import queue_due_notices
from flows.texts import Texts
from storage.models import utcnow

log = logging.getLogger(__name__)


async def notices_queue_job(runtime_id: str) -> int:
    """Queue every notice whose time has come; returns how many."""
    rt = runtime(runtime_id)
    done = await queue_due_notices(rt.db, texts=Texts(), settings=rt.config, now=utcnow())
    if done:
        log.info("queued %d scheduled notice(s)", done)
        rt.wake_delivery()
    return done


def notices_jobs(config: Config) -> list[JobSpec]:
    return [
        JobSpec(
            "notices-queue",
            notices_queue_job,
            IntervalTrigger(seconds=config.notices.poll_interval_s),
        )
    ]
