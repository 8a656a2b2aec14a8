"""When and how check-in messages go out: local days, quiet hours, per-grid schedules, pushes.

A grid's schedule is the configured default overridden, key by key, by ``settings.checkin`` of
each region from the city down to the grid, so a community sets its own prompt time and its
grids inherit it unless they set theirs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from flows.checkin_config import CheckinConfig, ScheduleConfig
from storage.checkin import outbox
from storage.db import Database
from storage.models import ChatGroup, Region, RegionLevel
from storage.outbox import enqueue, recipient_row
from storage.repo import RegionInfo

log = logging.getLogger(__name__)

regions = Region.__table__
groups = ChatGroup.__table__
STAFF_GROUP = "staff"


def local_time(now: datetime, tz: ZoneInfo) -> datetime:
    return now.astimezone(tz)


def local_day(now: datetime, tz: ZoneInfo) -> date:
    return now.astimezone(tz).date()


def at_local(day: date, clock: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, clock, tzinfo=tz)


def in_quiet_hours(clock: time, quiet: tuple[time, time]) -> bool:
    start, end = quiet
    if start == end:
        return False
    if start > end:  # wraps midnight: 22:00-07:00
        return clock >= start or clock < end
    return start <= clock < end


def quiet_end(moment: datetime, quiet: tuple[time, time]) -> datetime:
    """The earliest time at or after ``moment`` (local, aware) outside quiet hours."""
    clock = moment.time()
    if not in_quiet_hours(clock, quiet):
        return moment
    start, end = quiet
    day = moment.date()
    if start > end and clock >= start:
        day += timedelta(days=1)
    assert moment.tzinfo is not None
    return datetime.combine(day, end, tzinfo=moment.tzinfo)


# -- schedules -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GridSchedule:
    grid: RegionInfo
    schedule: ScheduleConfig


def _merge(parent: ScheduleConfig, settings: dict[str, Any] | None, where: str) -> ScheduleConfig:
    override = (settings or {}).get("checkin")
    if not override:
        return parent
    try:
        if not isinstance(override, dict):
            raise TypeError("settings.checkin must be a mapping")
        return ScheduleConfig.model_validate({**parent.model_dump(), **override})
    except (ValidationError, TypeError) as exc:
        log.warning("ignoring check-in schedule of region %s: %s", where, exc)
        return parent


async def grid_schedules(conn: AsyncConnection, cfg: CheckinConfig) -> list[GridSchedule]:
    """Every grid with its effective schedule (one query over the region tree)."""
    rows = list(await conn.execute(select(regions).order_by(regions.c.path)))
    effective: dict[int, ScheduleConfig] = {}
    result: list[GridSchedule] = []
    for row in rows:  # ordered by path: parents come before their children
        parent = effective.get(row.parent_id, cfg.schedule) if row.parent_id else cfg.schedule
        effective[row.id] = _merge(parent, row.settings, row.code)
        if row.level == RegionLevel.GRID:
            info = RegionInfo(row.id, row.code, row.name, row.level, row.parent_id, row.path)
            result.append(GridSchedule(info, effective[row.id]))
    return result


async def schedule_of(
    conn: AsyncConnection, cfg: CheckinConfig, region: RegionInfo | None
) -> ScheduleConfig:
    """The effective schedule of one region (its chain of settings, city first)."""
    if region is None:
        return cfg.schedule
    ids = [int(part) for part in region.path.strip("/").split("/") if part]
    rows = {r.id: r for r in await conn.execute(select(regions).where(regions.c.id.in_(ids)))}
    schedule = cfg.schedule
    for region_id in ids:
        if region_id in rows:
            schedule = _merge(schedule, rows[region_id].settings, rows[region_id].code)
    return schedule


# -- pushes --------------------------------------------------------------------------------


async def push_to_person(
    conn: AsyncConnection,
    db: Database,
    *,
    key: str,
    person_id: int,
    text: str,
    not_before: datetime,
    ref_id: int | None = None,
) -> bool:
    """Queue a message for a person (idempotent by ``key``); ``False`` when they cannot be
    reached (no account, or opted out)."""
    row = await recipient_row(
        conn,
        key=key,
        text=text,
        person_id=person_id,
        not_before=not_before,
        ref_type="checkin",
        ref_id=ref_id,
    )
    if row is not None:
        await enqueue(conn, [row], db.insert_ignore(outbox))
    return row is not None


async def staff_groups(conn: AsyncConnection, region_id: int) -> list[int]:
    """The grid's staff group chats (chat groups bound to it with purpose "staff")."""
    rows = await conn.execute(
        select(groups.c.id)
        .where(groups.c.region_id == region_id, groups.c.purpose == STAFF_GROUP)
        .order_by(groups.c.id)
    )
    return [r.id for r in rows]


async def push_to_group(
    conn: AsyncConnection,
    db: Database,
    *,
    key: str,
    group_id: int,
    text: str,
    not_before: datetime,
    ref_id: int | None = None,
) -> bool:
    row = await recipient_row(
        conn,
        key=key,
        text=text,
        group_id=group_id,
        not_before=not_before,
        ref_type="checkin",
        ref_id=ref_id,
    )
    if row is not None:
        await enqueue(conn, [row], db.insert_ignore(outbox))
    return row is not None
