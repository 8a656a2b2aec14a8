"""Scheduled job of the daily health check-in: one tick a minute does whatever is due.

The work itself is :func:`flows.checkin_schedule.run_checkin_schedule`, which tests call with a
given time; per-grid times live in the regions' settings, so one tick serves every schedule.
"""

from __future__ import annotations

import logging

from apscheduler.triggers.cron import CronTrigger

from bot.config import Config
from bot.scheduler import JobSpec, runtime
from flows.checkin_schedule import run_checkin_schedule
from flows.texts import Texts
from storage.models import utcnow

log = logging.getLogger(__name__)


async def checkin_tick_job(runtime_id: str) -> dict[str, int]:
    rt = runtime(runtime_id)
    counts = await run_checkin_schedule(rt.db, rt.config.checkin, rt.config.tz, Texts(), utcnow())
    if counts:
        log.info("check-in tick: %s", dict(counts))
        rt.wake_delivery()
    return dict(counts)


def checkin_jobs(config: Config) -> list[JobSpec]:
    if not config.checkin.enabled:
        return []
    return [JobSpec("checkin-tick", checkin_tick_job, CronTrigger(second=5))]
