"""Read queries of the console's requests board: counts per tab and one page of a tab, with
the names a board shows, plus who a request may be handed or transferred to.

The board's tabs split a region's requests by where they stand: ``new`` (pending, within its
deadline), ``accepted`` (being handled, within its deadline), ``overdue`` (open and past its
deadline, whatever the status) and ``resolved`` (resolved or closed).  Writes are not here:
every change goes through :class:`flows.requests.Desk`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import Person, PersonRole, Region, RegionLevel, Role
from storage.repo import RegionInfo
from storage.requests_models import (
    OPEN_STATUSES,
    RequestClock,
    RequestStatus,
    ResidentRequest,
)
from storage.requests_repo import in_region

requests = ResidentRequest.__table__
clocks = RequestClock.__table__
people = Person.__table__
roles = PersonRole.__table__
regions = Region.__table__

TABS = ("new", "accepted", "overdue", "resolved")
DONE_STATUSES = (RequestStatus.RESOLVED, RequestStatus.CLOSED)

# Where a request's current level and handler are read from, and the rows they come with: the
# only lines that know which table holds them.
current_level = clocks.c.level
current_handler = clocks.c.handler_id
request_rows: Any = requests.join(clocks, clocks.c.request_id == requests.c.id)


@dataclass(frozen=True, slots=True)
class BoardFilter:
    """What the board is narrowed to besides its region: category, urgency, and the level the
    request is handled at now (``street`` = escalated to the street)."""

    category: str | None = None
    urgency: str | None = None
    level: str | None = None

    def clause(self) -> Any:
        parts = []
        if self.category:
            parts.append(requests.c.category == self.category)
        if self.urgency:
            parts.append(requests.c.urgency == self.urgency)
        if self.level:
            parts.append(current_level == self.level)
        return and_(*parts) if parts else literal(True)


def _overdue(now: datetime) -> Any:
    """Open and past the deadline it is measured against now."""
    return and_(
        requests.c.status.in_(list(OPEN_STATUSES)),
        requests.c.sla_due_at.is_not(None),
        requests.c.sla_due_at < now,
    )


def tab_clause(tab: str, now: datetime) -> Any:
    """WHERE clause of one tab of the board."""
    overdue = _overdue(now)
    if tab == "new":
        return and_(requests.c.status == RequestStatus.PENDING, ~overdue)
    if tab == "accepted":
        return and_(requests.c.status == RequestStatus.ACCEPTED, ~overdue)
    if tab == "overdue":
        return overdue
    if tab == "resolved":
        return requests.c.status.in_(list(DONE_STATUSES))
    raise ValueError(f"unknown tab {tab!r}")


async def board_counts(
    conn: AsyncConnection, region: RegionInfo, board: BoardFilter, *, now: datetime
) -> dict[str, int]:
    """How many requests of ``region``'s subtree each tab holds (one scan)."""
    columns = [
        func.coalesce(func.sum(case((tab_clause(tab, now), 1), else_=0)), 0).label(tab)
        for tab in TABS
    ]
    query = select(*columns).select_from(request_rows).where(in_region(region), board.clause())
    row = (await conn.execute(query)).one()
    return {tab: int(getattr(row, tab)) for tab in TABS}


async def board_page(
    conn: AsyncConnection,
    region: RegionInfo,
    tab: str,
    board: BoardFilter,
    *,
    now: datetime,
    limit: int,
    offset: int,
) -> list[Any]:
    """One page of a tab, with the resident's and handler's names and the grid's name.

    Open tabs come nearest deadline first (the overdue tab: longest overdue first); the
    resolved tab newest first."""
    resident = people.alias("resident")
    handler = people.alias("handler")
    grid = regions.alias("grid")
    order = (
        [requests.c.resolved_at.desc(), requests.c.id.desc()]
        if tab == "resolved"
        else [requests.c.sla_due_at, requests.c.id]
    )
    query = (
        select(
            request_rows,
            resident.c.name.label("resident_name"),
            handler.c.name.label("handler_name"),
            grid.c.name.label("grid_name"),
            grid.c.code.label("grid_code"),
        )
        .join(resident, resident.c.id == requests.c.resident_id)
        .outerjoin(handler, handler.c.id == current_handler)
        .join(grid, grid.c.id == requests.c.region_id)
        .where(in_region(region), board.clause(), tab_clause(tab, now))
        .order_by(*order)
        .limit(limit)
        .offset(offset)
    )
    return list(await conn.execute(query))


async def volunteers_for(conn: AsyncConnection, region: RegionInfo) -> list[Any]:
    """Volunteers whose scope covers ``region`` (id and name), by name: those a request of
    that region may be handed to."""
    query = (
        select(people.c.id, people.c.name)
        .join(roles, roles.c.person_id == people.c.id)
        .join(regions, regions.c.id == roles.c.scope_region_id)
        .where(
            roles.c.role == Role.VOLUNTEER,
            literal(region.path).startswith(regions.c.path),
        )
        .distinct()
        .order_by(people.c.name, people.c.id)
    )
    return list(await conn.execute(query))


async def transfer_grids(
    conn: AsyncConnection, region: RegionInfo, scope_paths: list[str], *, limit: int
) -> list[Any]:
    """Grids a request of grid ``region`` may move to: the other grids of its community and
    any grid in ``scope_paths`` (the actor's), by code, at most ``limit``."""
    siblings = (
        regions.c.parent_id == region.parent_id if region.parent_id is not None else literal(False)
    )
    in_scope = or_(*[regions.c.path.startswith(p) for p in scope_paths]) if scope_paths else None
    where = or_(siblings, in_scope) if in_scope is not None else siblings
    query = (
        select(regions.c.id, regions.c.code, regions.c.name, regions.c.parent_id)
        .where(regions.c.level == RegionLevel.GRID, regions.c.id != region.id, where)
        .order_by(regions.c.path)
        .limit(limit)
    )
    return list(await conn.execute(query))


async def child_regions(conn: AsyncConnection, region: RegionInfo) -> list[RegionInfo]:
    """The regions right below ``region``, by code (the board's way down the tree)."""
    rows = await conn.execute(
        select(regions).where(regions.c.parent_id == region.id).order_by(regions.c.code)
    )
    return [RegionInfo(r.id, r.code, r.name, r.level, r.parent_id, r.path) for r in rows]
