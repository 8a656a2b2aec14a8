"""The deadline sweep of residents' requests, as a scheduled job (every ``sweep_interval_s``).

The work is :func:`flows.requests.sweep_deadlines`; this module only resolves the runtime id,
runs it with the current time and wakes delivery.
"""

from __future__ import annotations

import logging

from apscheduler.triggers.interval import IntervalTrigger

from bot.config import Config
from bot.scheduler import JobSpec, runtime
from flows.requests import SweepReport, sweep_deadlines
from flows.texts import Texts
from storage.models import utcnow

log = logging.getLogger(__name__)


async def requests_sweep_job(runtime_id: str) -> SweepReport:
    """Escalate overdue requests and close unanswered resolved ones."""
    rt = runtime(runtime_id)
    report = await sweep_deadlines(rt.db, Texts(), rt.config, now=utcnow())
    if report.escalated or report.exhausted or report.closed or report.alerts:
        log.info("requests sweep: %s", report)
        rt.wake_delivery()
    return report


def requests_jobs(config: Config) -> list[JobSpec]:
    return [
        JobSpec(
            "requests-sweep",
            requests_sweep_job,
            IntervalTrigger(seconds=config.requests.sweep_interval_s),
        )
    ]
