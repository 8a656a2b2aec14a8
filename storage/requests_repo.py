"""Queries over residents' requests: numbering, lookups, lists, the timeline, the bulk sweep.

Every function takes an open ``AsyncConnection``; the caller owns the transaction.  A request
is read together with its clock (:func:`request_query`) and written through
:func:`update_request`, which keeps the two consistent.  The sweep functions work a bounded
page per call in set-based statements and return counts, and the escalation alerts are read
back from the timeline a few rows per handler, so memory does not grow with the number of
requests moved.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
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
    literal_column,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import LEVEL_ORDER, PersonRole, RegionLevel, Role, UTCDateTime
from storage.repo import RegionInfo, new_id, region_chain, responsible_people
from storage.requests_models import (
    STAGE_OF_STATUS,
    ClockStage,
    RequestClock,
    RequestCounter,
    RequestEvent,
    RequestStatus,
    RequestSweepState,
    ResidentRequest,
)

requests = ResidentRequest.__table__
clocks = RequestClock.__table__
sweep_state = RequestSweepState.__table__
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

# The columns that live on the request's clock (see ``RequestClock``), read and written as if
# they were the request's own.
CLOCK_FIELDS = frozenset({"level", "handler_id", "escalate_at", "escalations"})
# The request's columns its clock keeps copies of, and the ancestor columns its clock's
# ``place_id`` is the lowest of (written together: they come from ``ancestor_ids``).
CLOCK_COPIES = ("category", "urgency")
PLACE_COLUMNS = ("community_id", "street_id", "district_id", "city_id")


def request_query() -> Any:
    """``SELECT`` of requests with their clock's columns (``level``, ``handler_id``,
    ``stage``, ``escalate_at``, ``escalations``): one row per request, as callers see it."""
    return select(
        requests,
        clocks.c.level,
        clocks.c.handler_id,
        clocks.c.stage,
        clocks.c.escalate_at,
        clocks.c.escalations,
    ).join_from(requests, clocks, clocks.c.request_id == requests.c.id)


def _split(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request columns, clock columns) of ``values``; a status also sets the clock's stage,
    and a status that is not open stops the clock.  The category, the urgency and the place
    (from the four ancestor columns, given all together) are copied to the clock."""
    row = {k: v for k, v in values.items() if k not in CLOCK_FIELDS}
    clock = {k: v for k, v in values.items() if k in CLOCK_FIELDS}
    if "status" in row:
        clock["stage"] = STAGE_OF_STATUS.get(row["status"])
        if clock["stage"] is None:
            clock["escalate_at"] = None
    clock.update((k, row[k]) for k in CLOCK_COPIES if k in row)
    given = [k for k in PLACE_COLUMNS if k in row]
    if given:
        if len(given) != len(PLACE_COLUMNS):
            raise ValueError(f"a request's ancestor columns are written together, not {given}")
        clock["place_id"] = next((row[k] for k in PLACE_COLUMNS if row[k] is not None), None)
    return row, clock


async def insert_request(conn: AsyncConnection, values: Mapping[str, Any]) -> int:
    """Insert a request and its clock (``level``, ``handler_id``, ``escalate_at`` and
    ``escalations`` among ``values`` go to the clock); returns the new id."""
    row, clock = _split(values)
    request_id = new_id(await conn.execute(insert(requests).values(**row)))
    clock.setdefault("escalations", 0)
    await conn.execute(insert(clocks).values(request_id=request_id, **clock))
    return request_id


async def get_request(
    conn: AsyncConnection,
    *,
    number: str | None = None,
    request_id: int | None = None,
    for_update: bool = False,
) -> Any | None:
    """One request by number or id; ``for_update`` takes the row locks of the request and of
    its clock (PostgreSQL), so that the deadline sweep skips it until the caller commits."""
    query = request_query()
    if number is not None:
        query = query.where(requests.c.number == number)
    else:
        query = query.where(requests.c.id == request_id)
    if for_update:
        query = query.with_for_update()
    return (await conn.execute(query)).first()


async def update_request(conn: AsyncConnection, request_id: int, **values: Any) -> None:
    """Change a request; the clock's columns go to its clock, whose stage follows the status
    (a resolved or closed request's clock stops)."""
    row, clock = _split(values)
    if row:
        await conn.execute(update(requests).where(requests.c.id == request_id).values(**row))
    if clock:
        await conn.execute(update(clocks).where(clocks.c.request_id == request_id).values(**clock))


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
            request_query()
            .where(requests.c.resident_id == resident_id)
            .order_by(requests.c.id.desc())
            .limit(limit)
        )
    )


async def awaiting_resident(conn: AsyncConnection, resident_id: int) -> list[Any]:
    """The resident's resolved requests that wait for their word (newest first)."""
    return list(
        await conn.execute(
            request_query()
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
            request_query()
            .where(clocks.c.handler_id == person_id, clocks.c.stage.is_not(None))
            .order_by(requests.c.sla_due_at, requests.c.id)
            .limit(limit)
        )
    )


async def list_for_volunteer(conn: AsyncConnection, person_id: int, *, limit: int) -> list[Any]:
    return list(
        await conn.execute(
            request_query()
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
    query = request_query().where(in_region(region))
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
        request_query()
        .where(condition)
        .order_by(requests.c.sla_due_at, requests.c.id)
        .limit(limit)
        .offset(offset)
    )
    return int(total), list(rows)


# -- the deadline sweep --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Moved:
    """What one page of the sweep did: clocks moved up, and of those, how many had no level
    left to go to (their clocks stopped); on PostgreSQL, the latest escalation time the page
    claimed (where the next page's walk of the due index may start)."""

    count: int
    exhausted: int
    last_due: datetime | None = None


@dataclass(frozen=True, slots=True)
class EscalationAlert:
    """What one handler is told about the escalations the timeline recorded for them since the
    last alerts: those moved to them (``escalated``), or those that stayed with them with no
    level left to go to.  ``first_event_id`` (the earliest such event) names the alert."""

    handler_id: int
    escalated: bool
    count: int
    first_event_id: int
    level: str
    due: datetime | None  # the first request's next escalation time
    numbers: tuple[str, ...]  # the first ``ALERT_NUMBERS`` request numbers, in event order


ALERT_NUMBERS = 5  # request numbers listed in one escalation alert
# Where a sweep's first page starts its walk of the due index: before every escalation time.
EARLIEST_DUE = datetime(2000, 1, 1, tzinfo=UTC)
# A clock row's tuple id (PostgreSQL): the sweep claims rows and then updates exactly those.
clock_tid: Any = literal_column("request_clocks.ctid")


def _responsible(region_column: Any, role: str) -> Any:
    """Scalar subquery: who holds ``role`` on the region in ``region_column`` (an index probe
    on ``person_roles.scope_region_id``; the lowest person id when several do)."""
    return (
        select(func.min(roles.c.person_id))
        .where(roles.c.scope_region_id == region_column, roles.c.role == role)
        .scalar_subquery()
    )


def _window_case(
    due: Any, windows: Mapping[tuple[str, str, str], datetime], default: datetime
) -> Any:
    """``CASE`` giving each (stage, category, urgency) of the ``due`` rows its next
    escalation time: nested by stage, then category, then urgency, so that a row is compared
    a handful of times rather than once per entry of ``windows``."""
    tree: dict[str, dict[str, dict[str, datetime]]] = {}
    for (stage, category, urgency), at in windows.items():
        tree.setdefault(stage, {}).setdefault(category, {})[urgency] = at
    otherwise = literal(default, UTCDateTime())

    def by(column: Any, branches: Mapping[str, Any]) -> Any:
        if not branches:
            return otherwise
        return case(*[(column == key, value) for key, value in branches.items()], else_=otherwise)

    return by(
        due.c.stage,
        {
            stage: by(
                due.c.category,
                {
                    category: by(
                        due.c.urgency,
                        {urgency: literal(at, UTCDateTime()) for urgency, at in times.items()},
                    )
                    for category, times in categories.items()
                },
            )
            for stage, categories in tree.items()
        },
    )


def _escalation_steps(
    *,
    now: datetime,
    windows: Mapping[tuple[str, str, str], datetime],
    default_due: datetime,
    batch: int,
    postgres: bool,
) -> Any:
    """The ``step`` CTE: one page of due clocks (oldest first; on PostgreSQL claimed with
    ``FOR UPDATE SKIP LOCKED``), each with the level, handler and escalation time it moves to.

    A page reads clock rows only: the clock carries the category and urgency (the window)
    and its place, the lowest ancestor of the request's region.  Requests of one place share
    their chain of ancestors (region ids are unique across levels, and a node's ancestors are
    fixed), so the chain is read from one request per place, and who is responsible at each
    level of it is looked up once per place in the page (a few hundred index probes), not once
    per request: ``chain`` is materialized and joined back, so the lookups do not run again
    for every row that uses them.  On PostgreSQL that one request is read through a
    ``LATERAL`` subquery that cannot be flattened (``OFFSET 0``): a primary-key probe per
    place, never a hash of the whole requests table."""
    due_query = (
        select(
            clocks.c.request_id,
            clocks.c.level.label("old_level"),
            clocks.c.stage,
            clocks.c.escalate_at.label("was_due"),
            clocks.c.category,
            clocks.c.urgency,
            func.coalesce(clocks.c.place_id, 0).label("place"),
            *([clock_tid.label("tid")] if postgres else []),
        )
        .where(
            clocks.c.escalate_at <= now,
            clocks.c.escalate_at >= bindparam("due_from", type_=UTCDateTime()),
        )
        .order_by(clocks.c.escalate_at)
        .limit(batch)
    )
    if postgres:
        due_query = due_query.with_for_update(of=clocks, skip_locked=True)
    due = due_query.cte("due").prefix_with("MATERIALIZED")
    places = (
        select(due.c.place, func.min(due.c.request_id).label("one"))
        .group_by(due.c.place)
        .subquery("places")
    )
    ancestors = [requests.c[name] for name in PLACE_COLUMNS]
    request: Any
    if postgres:
        request = select(*ancestors).where(requests.c.id == places.c.one).offset(0).lateral("r")
        places_from = places.join(request, true())
    else:
        request = select(requests.c.id, *ancestors).subquery("r")
        places_from = places.join(request, request.c.id == places.c.one)
    chain = (
        select(
            places.c.place,
            func.coalesce(
                _responsible(request.c.community_id, Role.ADMIN),
                _responsible(request.c.community_id, Role.WARDEN),
            ).label("community_pid"),
            _responsible(request.c.street_id, Role.ADMIN).label("street_pid"),
            _responsible(request.c.district_id, Role.ADMIN).label("district_pid"),
            _responsible(request.c.city_id, Role.ADMIN).label("city_pid"),
        )
        .select_from(places_from)
        .cte("chain")
        .prefix_with("MATERIALIZED")
    )
    old = due.c.old_level
    below_street = old.in_([RegionLevel.GRID, RegionLevel.COMMUNITY])
    below_district = old.in_([RegionLevel.GRID, RegionLevel.COMMUNITY, RegionLevel.STREET])
    steps = [
        (and_(old == RegionLevel.GRID, chain.c.community_pid.is_not(None)),
         RegionLevel.COMMUNITY, chain.c.community_pid),
        (and_(below_street, chain.c.street_pid.is_not(None)),
         RegionLevel.STREET, chain.c.street_pid),
        (and_(below_district, chain.c.district_pid.is_not(None)),
         RegionLevel.DISTRICT, chain.c.district_pid),
        (and_(old != RegionLevel.CITY, chain.c.city_pid.is_not(None)),
         RegionLevel.CITY, chain.c.city_pid),
    ]  # fmt: skip
    return (
        select(
            due.c.request_id,
            old.label("old_level"),
            case(*[(cond, literal(str(level))) for cond, level, _ in steps], else_=None).label(
                "new_level"
            ),
            case(*[(cond, pid) for cond, _, pid in steps], else_=None).label("new_handler"),
            _window_case(due, windows, default_due).label("next_due"),
            due.c.was_due,
            *([due.c.tid] if postgres else []),
        )
        .join_from(due, chain, chain.c.place == due.c.place)
        .cte("step")
    )


def _move_clocks(step: Any, now: datetime, *, postgres: bool) -> Any:
    """``UPDATE request_clocks ... FROM step``: each claimed clock one level up, or stopped
    when there is no level left.  Conditional on the clock still being at the level the step
    was computed from and still due, so no request moves twice for one deadline.

    On PostgreSQL the clocks are fetched by the tuple ids the page claimed (a TID scan): left
    to itself the planner reads the whole due range of the index for every page, which grows
    with the backlog."""
    stays = step.c.new_level.is_(None)
    claimed = (
        [clock_tid == any_(func.array(select(step.c.tid).scalar_subquery()))] if postgres else []
    )
    return (
        update(clocks)
        .where(
            *claimed,
            clocks.c.request_id == step.c.request_id,
            clocks.c.level == step.c.old_level,
            clocks.c.escalate_at <= now,
        )
        .values(
            level=func.coalesce(step.c.new_level, clocks.c.level),
            handler_id=func.coalesce(step.c.new_handler, clocks.c.handler_id),
            escalate_at=case((stays, None), else_=step.c.next_due),
            escalations=clocks.c.escalations + case((stays, 0), else_=1),
        )
    )


def _record_moves(moved: Any, now: datetime) -> Any:
    """``INSERT INTO request_events ... SELECT`` one timeline row per moved clock: escalated
    to its new level and handler, or ``deadline_missed`` when it had nowhere to go."""
    stage = case(
        (moved.c.stage == ClockStage.ACCEPT, literal({"stage": "accept"}, JSON())),
        else_=literal({"stage": "resolve"}, JSON()),
    )
    return insert(events).from_select(
        ["request_id", "at", "kind", "actor_id", "person_id", "level", "text", "detail"],
        select(
            moved.c.request_id,
            literal(now, UTCDateTime()),
            case((moved.c.escalate_at.is_(None), "deadline_missed"), else_="escalated"),
            literal(None, BigInteger()),
            moved.c.handler_id,
            moved.c.level,
            literal(None, Text()),
            stage,
        ),
    )


async def escalate_due(
    conn: AsyncConnection,
    *,
    now: datetime,
    windows: Mapping[tuple[str, str, str], datetime],
    default_due: datetime,
    batch: int,
) -> Moved:
    """Move up to ``batch`` requests whose escalation time has come one level up and record
    each move on its timeline (who has it now, at which level); returns how many moved.

    The next level is the first one above the current that has somebody responsible (see
    :func:`responsible_at`); a request with nowhere left to go keeps its handler and its clock
    stops (``escalate_at`` becomes ``NULL``).  ``windows`` maps (stage, category, urgency) to
    the next escalation time.  Only the narrow clock rows are rewritten.

    On PostgreSQL this is one statement: claim the page, move the clocks and insert the
    timeline rows, in data-modifying CTEs; Python reads one row.  SQLite (whose writers are
    serialized anyway) runs the same parts as two statements.  The caller holds the alert mark
    (:func:`hold_alert_mark`) first; alerts are made from the timeline afterwards.

    Idempotent: the UPDATE only touches a clock still at the level the next one was computed
    from and still due, so a second sweep (another process, or the same one again) finds
    nothing to do for it.  On PostgreSQL the page is claimed with ``FOR UPDATE SKIP LOCKED``,
    so two sweeps split the work instead of queueing, and a desk action holding a request's
    clock (``get_request(for_update=True)``) keeps the sweep off it until it commits.
    """
    page = EscalationPage(
        postgres=conn.dialect.name == "postgresql",
        now=now,
        windows=windows,
        default_due=default_due,
        batch=batch,
    )
    return await page.run(conn)


# For the page's transaction only (one round trip):
# * no JIT: a plan this size looks expensive enough for JIT compilation, which costs more than
#   the statement itself;
# * no wait for the WAL flush at commit (the statement's WAL is written all the same).  A crash
#   in the moment after the commit can lose the page's clock moves and timeline rows together,
#   as if the page had never run: the clocks are still due and the next sweep moves them.
#   Nothing outside the page depends on it before a synchronous commit: the alerts for its
#   events, and any desk action on its requests, commit synchronously, and that flush covers
#   every earlier WAL record, so an alert or a reply never survives a crash its escalation did
#   not.
PAGE_SETTINGS = select(
    func.set_config("jit", "off", true()), func.set_config("synchronous_commit", "off", true())
)


class EscalationPage:
    """The statements of :func:`escalate_due` for one sweep run, built once (about ten
    milliseconds of Python for the PostgreSQL one) and run page after page."""

    def __init__(
        self,
        *,
        postgres: bool,
        now: datetime,
        windows: Mapping[tuple[str, str, str], datetime],
        default_due: datetime,
        batch: int,
    ) -> None:
        self.postgres = postgres
        self.now = now
        step = _escalation_steps(
            now=now, windows=windows, default_due=default_due, batch=batch, postgres=postgres
        )
        move = _move_clocks(step, now, postgres=postgres)
        if postgres:
            moved = move.returning(
                clocks.c.request_id,
                clocks.c.level,
                clocks.c.handler_id,
                clocks.c.stage,
                clocks.c.escalate_at,
            ).cte("moved")
            recorded = _record_moves(moved, now).cte("recorded")
            self.statement: Any = (
                select(
                    func.count(),
                    func.sum(case((moved.c.escalate_at.is_(None), 1), else_=0)),
                    select(func.max(step.c.was_due)).scalar_subquery(),
                )
                .select_from(moved)
                .add_cte(recorded)
            )
        else:
            self.statement = move.returning(clocks.c.request_id, clocks.c.escalate_at)

    async def run(self, conn: AsyncConnection, *, due_from: datetime = EARLIEST_DUE) -> Moved:
        """One page, in the caller's transaction, of the clocks due from ``due_from`` on.

        A page's walk of the due index starts at ``due_from``: a sweep passes the latest
        escalation time its pages claimed, so that a page does not step over the index entries
        of the clocks the pages before it moved (dead until vacuumed; a walk from the start
        grows with every page).  Clocks before it were claimed by those pages or skipped as
        held by somebody else; a clock such a holder gives back unmoved is due for the next
        sweep."""
        params = {"due_from": due_from}
        if self.postgres:
            await conn.execute(PAGE_SETTINGS)
            row = (await conn.execute(self.statement, params)).one()
            return Moved(int(row[0]), int(row[1] or 0), row[2])
        # SQLite: the timeline rows are written from the moved clocks, read back by id.
        moved_rows = list(await conn.execute(self.statement, params))
        if moved_rows:
            ids = [r.request_id for r in moved_rows]
            moved = select(clocks).where(among(conn, clocks.c.request_id, ids)).subquery("moved")
            await conn.execute(_record_moves(moved, self.now))
        return Moved(len(moved_rows), sum(1 for r in moved_rows if r.escalate_at is None))


async def any_due(conn: AsyncConnection, *, now: datetime) -> bool:
    """Whether any clock's escalation time has come: the earliest one, read from the end of
    the due index (a ``LIMIT 1`` filter could be planned as a scan when statistics are old)."""
    earliest = (await conn.execute(select(func.min(clocks.c.escalate_at)))).scalar()
    return earliest is not None and earliest <= now


async def more_due_than(conn: AsyncConnection, *, now: datetime, count: int) -> bool:
    """Whether more than ``count`` clocks are due: a walk of at most ``count + 1`` entries of
    the due index (an index-only scan of a few milliseconds for a page's worth)."""
    first = (
        select(literal(1))
        .where(clocks.c.escalate_at <= now)
        .order_by(clocks.c.escalate_at)
        .limit(count + 1)
        .subquery("first")
    )
    return int((await conn.execute(select(func.count()).select_from(first))).scalar_one()) > count


# -- escalation alerts -----------------------------------------------------------------------

SWEEP_STATE_ID = 1
ESCALATION_KINDS = ("escalated", "deadline_missed")


async def hold_alert_mark(conn: AsyncConnection) -> None:
    """Share the sweep's state row until the transaction ends (PostgreSQL; SQLite has one
    writer): taken by each page before it writes timeline rows, so that the alert step, which
    takes the row exclusively, only reads the newest event id once those rows are committed.
    The row is created first if it is missing (as after a truncation)."""
    await _ensure_sweep_state(conn)
    if conn.dialect.name == "postgresql":
        await conn.execute(
            select(sweep_state.c.id)
            .where(sweep_state.c.id == SWEEP_STATE_ID)
            .with_for_update(read=True)
        )


async def _ensure_sweep_state(conn: AsyncConnection) -> None:
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(
        dialect.insert(sweep_state)
        .values(id=SWEEP_STATE_ID, alerted_event_id=0)
        .on_conflict_do_nothing()
    )


async def events_after_mark(conn: AsyncConnection) -> bool:
    """Whether the timeline has events the alert step has not looked at (read without locks:
    a quick "nothing to do" for the every-minute tick)."""
    mark = (
        await conn.execute(
            select(sweep_state.c.alerted_event_id).where(sweep_state.c.id == SWEEP_STATE_ID)
        )
    ).scalar()
    newest = (await conn.execute(select(func.max(events.c.id)))).scalar()
    return newest is not None and newest > (mark or 0)


async def take_alert_mark(conn: AsyncConnection) -> tuple[int, int]:
    """Lock the sweep's state row (waiting for pages still writing) and return (the event up
    to which handlers were alerted, the newest event).  The mark is moved up to just before
    the first event after it, so that a gap in the ids is not walked window by window."""
    await _ensure_sweep_state(conn)
    mark = (
        await conn.execute(
            select(sweep_state.c.alerted_event_id)
            .where(sweep_state.c.id == SWEEP_STATE_ID)
            .with_for_update()
        )
    ).scalar_one()
    first, newest = (
        await conn.execute(
            select(func.min(events.c.id), func.max(events.c.id)).where(events.c.id > mark)
        )
    ).one()
    if first is None:
        return int(mark), int(mark)
    return int(first) - 1, int(newest)


async def set_alert_mark(conn: AsyncConnection, event_id: int) -> None:
    await conn.execute(
        update(sweep_state)
        .where(sweep_state.c.id == SWEEP_STATE_ID)
        .values(alerted_event_id=event_id)
    )


async def unalerted_escalations(
    conn: AsyncConnection, *, after: int, upto: int
) -> list[EscalationAlert]:
    """The escalation events with ids in (``after``, ``upto``] grouped per handler and kind:
    one alert each.  A query for every group's size and first ``ALERT_NUMBERS`` event ids,
    then those events, their request numbers and the first request's next escalation time,
    each by primary key (a join of the three is planned as hashes of whole tables)."""
    groups = await _alert_groups(conn, after=after, upto=upto)
    if not groups:
        return []
    heads = {
        r.id: r
        for r in await conn.execute(
            select(events.c.id, events.c.request_id, events.c.level).where(
                among(conn, events.c.id, [i for *_, ids in groups for i in ids])
            )
        )
    }
    numbers = dict(
        (r.id, r.number)
        for r in await conn.execute(
            select(requests.c.id, requests.c.number).where(
                among(conn, requests.c.id, sorted({r.request_id for r in heads.values()}))
            )
        )
    )
    firsts = [heads[ids[0]].request_id for *_, ids in groups]
    due = dict(
        (r.request_id, r.escalate_at)
        for r in await conn.execute(
            select(clocks.c.request_id, clocks.c.escalate_at).where(
                among(conn, clocks.c.request_id, firsts)
            )
        )
    )
    alerts = []
    for person_id, kind, size, ids in groups:
        first = heads[ids[0]]
        alerts.append(
            EscalationAlert(
                handler_id=person_id,
                escalated=kind == "escalated",
                count=size,
                first_event_id=first.id,
                level=first.level,
                due=due.get(first.request_id),
                numbers=tuple(numbers[heads[i].request_id] for i in ids),
            )
        )
    return alerts


async def _alert_groups(
    conn: AsyncConnection, *, after: int, upto: int
) -> list[tuple[int, str, int, list[int]]]:
    """(handler, kind, number of events, the first ``ALERT_NUMBERS`` event ids in order) of
    the escalation events with ids in (``after``, ``upto``], ordered by handler and kind.

    PostgreSQL: one aggregate (a sort by handler and kind, then a small sort per group), with
    memory for the sort of a large window (200,000 events are some 17 MB) so that it does
    not spill to disk; a window function over the whole range, which sorts every event's full
    row, costs three times as much.  SQLite, which has no arrays, ranks with a window."""
    in_range = (
        events.c.id > after,
        events.c.id <= upto,
        events.c.kind.in_(ESCALATION_KINDS),
        events.c.person_id.is_not(None),
    )
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SET LOCAL work_mem = '32MB'"))
        first_ids = postgresql.array_agg(postgresql.aggregate_order_by(events.c.id, events.c.id))
        rows = await conn.execute(
            select(
                events.c.person_id,
                events.c.kind,
                func.count().label("size"),
                first_ids[1:ALERT_NUMBERS].label("ids"),
            )
            .where(*in_range)
            .group_by(events.c.person_id, events.c.kind)
            .order_by(events.c.person_id, events.c.kind)
        )
        return [(r.person_id, r.kind, int(r.size), list(r.ids)) for r in rows]
    group = (events.c.person_id, events.c.kind)
    ranked = (
        select(
            events.c.id,
            events.c.person_id,
            events.c.kind,
            func.row_number().over(partition_by=group, order_by=events.c.id).label("rn"),
            func.count().over(partition_by=group).label("size"),
        )
        .where(*in_range)
        .subquery("ranked")
    )
    heads = await conn.execute(
        select(ranked)
        .where(ranked.c.rn <= ALERT_NUMBERS)
        .order_by(ranked.c.person_id, ranked.c.kind, ranked.c.rn)
    )
    return [
        (person_id, kind, int(members[0].size), [r.id for r in members])
        for (person_id, kind), rows in groupby(heads, key=lambda r: (r.person_id, r.kind))
        for members in [list(rows)]
    ]


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
        .values(status=RequestStatus.CLOSED, closed_at=now, sla_due_at=None)
        .returning(requests.c.id, requests.c.number, requests.c.resident_id)
    )
    return list(await conn.execute(stmt))


async def record_auto_closed(
    conn: AsyncConnection, request_ids: Sequence[int], *, now: datetime
) -> None:
    """One ``auto_closed`` timeline row per request, at the level its clock stopped at."""
    if not request_ids:
        return
    await conn.execute(
        insert(events).from_select(
            ["request_id", "at", "kind", "actor_id", "person_id", "level", "text", "detail"],
            select(
                clocks.c.request_id,
                literal(now, UTCDateTime()),
                literal("auto_closed"),
                literal(None, BigInteger()),
                literal(None, BigInteger()),
                clocks.c.level,
                literal(None, Text()),
                literal({}, JSON()),
            ).where(among(conn, clocks.c.request_id, request_ids)),
        )
    )


def among(conn: AsyncConnection, column: Any, ids: Sequence[int]) -> Any:
    """``column`` is one of ``ids``, as one parameter however many there are: ``= ANY(array)``
    on PostgreSQL, ``IN (SELECT value FROM json_each(...))`` on SQLite."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam("among_ids", list(ids), type_=ARRAY(BigInteger())))
    return column.in_(
        select(literal_column("value")).select_from(
            func.json_each(bindparam("among_ids", json.dumps(list(ids)), type_=Text()))
        )
    )
