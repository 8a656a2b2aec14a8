"""Queries over residents' requests: numbering, lookups, lists, the timeline, the bulk sweep.

Every function takes an open ``AsyncConnection``; the caller owns the transaction.  The sweep
functions work a bounded batch per call in one statement each, so their memory does not grow
with the number of open requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Text,
    and_,
    any_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import LEVEL_ORDER, PersonRole, RegionLevel, Role, UTCDateTime
from storage.repo import RegionInfo, new_id, region_chain, responsible_people
from storage.requests_models import (
    OPEN_STATUSES,
    RequestCounter,
    RequestEvent,
    RequestStatus,
    ResidentRequest,
)

requests = ResidentRequest.__table__
events = RequestEvent.__table__
counters = RequestCounter.__table__
roles = PersonRole.__table__

# The column holding a request's ancestor of each level ("everything under this street").
LEVEL_COLUMN = {
    RegionLevel.GRID: requests.c.region_id,
    RegionLevel.COMMUNITY: requests.c.community_id,
    RegionLevel.STREET: requests.c.street_id,
    RegionLevel.DISTRICT: requests.c.district_id,
    RegionLevel.CITY: requests.c.city_id,
}
# Escalation goes from the grid upwards: the reverse of the tree's top-down order.
ESCALATION_ORDER = list(reversed(LEVEL_ORDER))


@dataclass(frozen=True, slots=True)
class Responsible:
    """Who answers for a request at one level of the tree."""

    level: str
    region: RegionInfo
    person_id: int


# -- numbering -----------------------------------------------------------------------------


async def next_number(conn: AsyncConnection, day: str) -> int:
    """The next request number of local day ``day`` (YYYYMMDD), atomically on both engines."""
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(counters).values(day=day, last=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=["day"], set_={"last": counters.c.last + 1}
    ).returning(counters.c.last)
    return int((await conn.execute(stmt)).scalar_one())


def format_number(prefix: str, day: str, sequence: int) -> str:
    """``Q20261128-0042``: the prefix, the local day and the day's sequence."""
    return f"{prefix}{day}-{sequence:04d}"


# -- responsibility ------------------------------------------------------------------------


async def responsible_at(conn: AsyncConnection, region: RegionInfo) -> int | None:
    """The person answering for requests at ``region``: a grid's warden; a community's admin,
    else its warden; a street's, district's or city's admin.  ``None`` when nobody is."""
    kinds: tuple[str, ...] = (Role.ADMIN,)
    if region.level == RegionLevel.GRID:
        kinds = (Role.WARDEN,)
    elif region.level == RegionLevel.COMMUNITY:
        kinds = (Role.ADMIN, Role.WARDEN)
    for role in kinds:
        people = await responsible_people(conn, region, role)
        if people:
            return min(people)
    return None


async def first_responsible(
    conn: AsyncConnection, region: RegionInfo, *, above: str | None = None
) -> Responsible | None:
    """The first level from ``region`` upwards (strictly above level ``above`` when given)
    that has somebody responsible; levels with nobody are skipped."""
    for ancestor in await region_chain(conn, region):
        if above is not None and _rank(ancestor.level) <= _rank(above):
            continue
        person_id = await responsible_at(conn, ancestor)
        if person_id is not None:
            return Responsible(ancestor.level, ancestor, person_id)
    return None


def _rank(level: str) -> int:
    return ESCALATION_ORDER.index(RegionLevel(level))


async def ancestor_ids(conn: AsyncConnection, region: RegionInfo) -> dict[str, int | None]:
    """The request columns that place a request under each of its region's ancestors."""
    chain = {r.level: r.id for r in await region_chain(conn, region)}
    return {
        "community_id": chain.get(RegionLevel.COMMUNITY),
        "street_id": chain.get(RegionLevel.STREET),
        "district_id": chain.get(RegionLevel.DISTRICT),
        "city_id": chain.get(RegionLevel.CITY),
    }


# -- rows ----------------------------------------------------------------------------------


async def insert_request(conn: AsyncConnection, values: Mapping[str, Any]) -> int:
    result = await conn.execute(insert(requests).values(**values))
    return new_id(result)


async def get_request(
    conn: AsyncConnection,
    *,
    number: str | None = None,
    request_id: int | None = None,
    for_update: bool = False,
) -> Any | None:
    """One request by number or id; ``for_update`` takes its row lock (PostgreSQL)."""
    query = select(requests)
    if number is not None:
        query = query.where(requests.c.number == number)
    else:
        query = query.where(requests.c.id == request_id)
    if for_update:
        query = query.with_for_update()
    return (await conn.execute(query)).first()


async def update_request(conn: AsyncConnection, request_id: int, **values: Any) -> None:
    await conn.execute(update(requests).where(requests.c.id == request_id).values(**values))


async def add_event(
    conn: AsyncConnection,
    request_id: int,
    kind: str,
    *,
    at: datetime,
    actor_id: int | None = None,
    person_id: int | None = None,
    level: str | None = None,
    text: str | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    result = await conn.execute(
        insert(events).values(
            request_id=request_id,
            at=at,
            kind=kind,
            actor_id=actor_id,
            person_id=person_id,
            level=level,
            text=text,
            detail=detail or {},
        )
    )
    return new_id(result)


async def list_events(conn: AsyncConnection, request_id: int) -> list[Any]:
    return list(
        await conn.execute(
            select(events).where(events.c.request_id == request_id).order_by(events.c.id)
        )
    )


async def list_for_resident(conn: AsyncConnection, resident_id: int, *, limit: int) -> list[Any]:
    return list(
        await conn.execute(
            select(requests)
            .where(requests.c.resident_id == resident_id)
            .order_by(requests.c.id.desc())
            .limit(limit)
        )
    )


async def awaiting_resident(conn: AsyncConnection, resident_id: int) -> list[Any]:
    """The resident's resolved requests that wait for their word (newest first)."""
    return list(
        await conn.execute(
            select(requests)
            .where(
                requests.c.resident_id == resident_id,
                requests.c.status == RequestStatus.RESOLVED,
            )
            .order_by(requests.c.resolved_at.desc(), requests.c.id.desc())
        )
    )


async def list_for_handler(conn: AsyncConnection, person_id: int, *, limit: int) -> list[Any]:
    return list(
        await conn.execute(
            select(requests)
            .where(requests.c.handler_id == person_id, requests.c.status.in_(OPEN_STATUSES))
            .order_by(requests.c.sla_due_at, requests.c.id)
            .limit(limit)
        )
    )


async def list_for_volunteer(conn: AsyncConnection, person_id: int, *, limit: int) -> list[Any]:
    return list(
        await conn.execute(
            select(requests)
            .where(
                requests.c.volunteer_id == person_id,
                requests.c.volunteer_status.in_(["handed", "accepted"]),
            )
            .order_by(requests.c.id)
            .limit(limit)
        )
    )


def in_region(region: RegionInfo) -> Any:
    """WHERE clause: the request lies in ``region``'s subtree.  A grid's requests are found
    through its community's index (grids have no index of their own)."""
    clause = LEVEL_COLUMN[RegionLevel(region.level)] == region.id
    if region.level == RegionLevel.GRID and region.parent_id is not None:
        clause = and_(requests.c.community_id == region.parent_id, clause)
    return clause


async def list_in_region(
    conn: AsyncConnection,
    region: RegionInfo,
    *,
    statuses: Sequence[str] | None,
    limit: int,
    before_id: int | None = None,
) -> list[Any]:
    """Requests in ``region``'s subtree, newest first, one page (``before_id`` pages on)."""
    query = select(requests).where(in_region(region))
    if statuses:
        query = query.where(requests.c.status.in_(list(statuses)))
    if before_id is not None:
        query = query.where(requests.c.id < before_id)
    return list(await conn.execute(query.order_by(requests.c.id.desc()).limit(limit)))


async def overdue_in_region(
    conn: AsyncConnection, region: RegionInfo, *, now: datetime, limit: int, offset: int = 0
) -> tuple[int, list[Any]]:
    """Open requests in ``region``'s subtree past their deadline, the longest overdue first,
    with their total count.  ``sla_due_at`` is only set on open requests, so the range on the
    (level column, sla_due_at) index is the whole condition."""
    condition = and_(in_region(region), requests.c.sla_due_at < now)
    total = (await conn.execute(select(func.count()).where(condition))).scalar_one()
    rows = await conn.execute(
        select(requests)
        .where(condition)
        .order_by(requests.c.sla_due_at, requests.c.id)
        .limit(limit)
        .offset(offset)
    )
    return int(total), list(rows)


# -- the deadline sweep --------------------------------------------------------------------


def _responsible(region_column: Any, role: str) -> Any:
    """Scalar subquery: who holds ``role`` on the region in ``region_column`` (an index probe
    on ``person_roles.scope_region_id``; the lowest person id when several do)."""
    return (
        select(func.min(roles.c.person_id))
        .where(roles.c.scope_region_id == region_column, roles.c.role == role)
        .scalar_subquery()
    )


def _window_case(windows: Mapping[tuple[str, str, str], datetime], default: datetime) -> Any:
    """``CASE`` giving each (stage, category, urgency) its next escalation time."""
    whens = [
        (
            and_(
                requests.c.status == status,
                requests.c.category == category,
                requests.c.urgency == urgency,
            ),
            literal(due, UTCDateTime()),
        )
        for (status, category, urgency), due in windows.items()
    ]
    return case(*whens, else_=literal(default, UTCDateTime()))


async def escalate_due(
    conn: AsyncConnection,
    *,
    now: datetime,
    windows: Mapping[tuple[str, str, str], datetime],
    default_due: datetime,
    batch: int,
    skip_locked: bool,
) -> list[Any]:
    """Move up to ``batch`` open requests whose escalation time has come one level up, in one
    statement, and return them as they are now.

    The next level is the first one above the current that has somebody responsible (see
    :func:`responsible_at`); a request with nowhere left to go keeps its handler and gets no
    further escalation time (``escalate_at`` comes back ``NULL``).  ``windows`` maps (status,
    category, urgency) to the next escalation time.

    Idempotent: the UPDATE only touches a row whose level is still the one the next level was
    computed from and whose escalation time is still due, so a second sweep (another process,
    or the same one again) finds nothing to do for it.  On PostgreSQL the candidate rows are
    claimed with ``FOR UPDATE SKIP LOCKED``, so two sweeps split the work instead of queueing.
    """
    # The candidates: due rows in escalation order, one batch, claimed.  Each row's possible
    # handlers above it are looked up here, per row, by index; the LIMIT keeps this subquery
    # from being flattened, so each lookup runs once per claimed row.
    r = requests.alias("r")
    candidates = (
        select(
            r.c.id,
            r.c.level.label("old_level"),
            func.coalesce(
                _responsible(r.c.community_id, Role.ADMIN),
                _responsible(r.c.community_id, Role.WARDEN),
            ).label("community_pid"),
            _responsible(r.c.street_id, Role.ADMIN).label("street_pid"),
            _responsible(r.c.district_id, Role.ADMIN).label("district_pid"),
            _responsible(r.c.city_id, Role.ADMIN).label("city_pid"),
        )
        .where(r.c.escalate_at <= now, r.c.status.in_(OPEN_STATUSES))
        .order_by(r.c.escalate_at)
        .limit(batch)
    )
    if skip_locked:
        candidates = candidates.with_for_update(of=r, skip_locked=True)
    c = candidates.subquery("c")
    below_street = c.c.old_level.in_([RegionLevel.GRID, RegionLevel.COMMUNITY])
    below_district = c.c.old_level.in_(
        [RegionLevel.GRID, RegionLevel.COMMUNITY, RegionLevel.STREET]
    )
    steps = [
        (and_(c.c.old_level == RegionLevel.GRID, c.c.community_pid.is_not(None)),
         RegionLevel.COMMUNITY, c.c.community_pid),
        (and_(below_street, c.c.street_pid.is_not(None)), RegionLevel.STREET, c.c.street_pid),
        (and_(below_district, c.c.district_pid.is_not(None)),
         RegionLevel.DISTRICT, c.c.district_pid),
        (and_(c.c.old_level != RegionLevel.CITY, c.c.city_pid.is_not(None)),
         RegionLevel.CITY, c.c.city_pid),
    ]  # fmt: skip
    next_level = case(*[(cond, literal(str(level))) for cond, level, _ in steps], else_=None)
    next_handler = case(*[(cond, pid) for cond, _, pid in steps], else_=None)
    stmt = (
        update(requests)
        .where(
            requests.c.id == c.c.id,
            requests.c.level == c.c.old_level,
            requests.c.escalate_at <= now,
            requests.c.status.in_(OPEN_STATUSES),
        )
        .values(
            level=func.coalesce(next_level, requests.c.level),
            handler_id=func.coalesce(next_handler, requests.c.handler_id),
            escalate_at=case(
                (next_level.is_(None), None), else_=_window_case(windows, default_due)
            ),
            escalations=requests.c.escalations + case((next_level.is_(None), 0), else_=1),
        )
        .returning(
            requests.c.id,
            requests.c.number,
            requests.c.status,
            requests.c.category,
            requests.c.urgency,
            requests.c.level,
            requests.c.handler_id,
            requests.c.escalate_at,
            requests.c.escalations,
            requests.c.resident_id,
        )
    )
    if conn.dialect.name == "postgresql":
        # The per-row lookups make the plan look expensive enough for JIT compilation, which
        # costs more than the statement itself.
        await conn.execute(text("SET LOCAL jit = off"))
    return list(await conn.execute(stmt))


async def close_unanswered(
    conn: AsyncConnection,
    *,
    now: datetime,
    resolved_before: datetime,
    batch: int,
    skip_locked: bool,
) -> list[Any]:
    """Close up to ``batch`` resolved requests the resident left unanswered since before
    ``resolved_before``; returns them.  Conditional on the status, so it runs once per row."""
    candidates = (
        select(requests.c.id)
        .where(
            requests.c.status == RequestStatus.RESOLVED,
            requests.c.resolved_at < resolved_before,
        )
        .order_by(requests.c.resolved_at)
        .limit(batch)
    )
    if skip_locked:
        candidates = candidates.with_for_update(skip_locked=True)
    stmt = (
        update(requests)
        .where(
            requests.c.id.in_(candidates.scalar_subquery()),
            requests.c.status == RequestStatus.RESOLVED,
        )
        .values(status=RequestStatus.CLOSED, closed_at=now, sla_due_at=None, escalate_at=None)
        .returning(requests.c.id, requests.c.number, requests.c.resident_id, requests.c.level)
    )
    return list(await conn.execute(stmt))


async def record_sweep_events(
    conn: AsyncConnection, request_ids: Sequence[int], *, now: datetime
) -> None:
    """One timeline row per request the sweep just moved, built by the database from the
    requests as they are now (no per-row round trip): ``escalated`` to the new level and
    handler, or ``deadline_missed`` when there was no level left to go to."""
    if not request_ids:
        return
    stage = case(
        (requests.c.status == RequestStatus.PENDING, literal({"stage": "accept"}, JSON())),
        else_=literal({"stage": "resolve"}, JSON()),
    )
    await conn.execute(
        insert(events).from_select(
            ["request_id", "at", "kind", "actor_id", "person_id", "level", "text", "detail"],
            select(
                requests.c.id,
                literal(now, UTCDateTime()),
                case((requests.c.escalate_at.is_(None), "deadline_missed"), else_="escalated"),
                literal(None, BigInteger()),
                requests.c.handler_id,
                requests.c.level,
                literal(None, Text()),
                stage,
            ).where(_id_among(conn, request_ids)),
        )
    )


def _id_among(conn: AsyncConnection, request_ids: Sequence[int]) -> Any:
    """``id = ANY(:ids)`` on PostgreSQL (one array parameter), ``id IN (...)`` on SQLite."""
    if conn.dialect.name == "postgresql":
        return requests.c.id == any_(
            bindparam("request_ids", list(request_ids), type_=postgresql.ARRAY(BigInteger()))
        )
    return requests.c.id.in_(list(request_ids))


async def insert_events(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(events), list(rows))
