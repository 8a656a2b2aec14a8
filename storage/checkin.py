"""Queries of the daily health check-in: records, pushes in bulk, runs, quarantines, alerts, stats.

Bulk work (a morning prompt to 100,000 residents) is one ``INSERT ... SELECT`` per grid: nothing
is loaded into Python, so memory stays flat however many residents there are.  Every outbox key
is deterministic (``checkin:<kind>:<person>:<day>``), so a second scheduler or a rerun adds
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    String,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.checkin_models import (
    CheckinAlert,
    CheckinRecord,
    CheckinRun,
    CheckinStatus,
    Quarantine,
)
from storage.models import (
    Household,
    Identity,
    OutboxMessage,
    OutboxStatus,
    Person,
    Region,
    UTCDateTime,
    utcnow,
)
from storage.repo import RegionInfo, list_subregions

records = CheckinRecord.__table__
alerts = CheckinAlert.__table__
quarantines = Quarantine.__table__
runs = CheckinRun.__table__
people = Person.__table__
identities = Identity.__table__
households = Household.__table__
regions = Region.__table__
outbox = OutboxMessage.__table__


ACTIVE = "active"
OPEN = "open"
SUPERSEDED = "superseded"
"""An alert whose record was replaced by a later answer of the same day and slot: the new
record raises its own alert if it is still abnormal, so the old one stops escalating."""


def outbox_key(kind: str, person_id: int, day: date) -> str:
    """The idempotency key of a check-in push: one per person, day and kind."""
    return f"checkin:{kind}:{person_id}:{day.isoformat()}"


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewRecord:
    person_id: int
    reporter_id: int
    region_id: int | None
    household_id: int | None
    day: date
    slot: int
    status: str
    risk: str
    reasons: list[str]
    answers: dict[str, Any]


async def save_record(conn: AsyncConnection, record: NewRecord, *, now: datetime) -> int:
    """Store a record as the current one of its (person, day, slot); the one it replaces stays
    as history and its open alert is closed as superseded.  A concurrent save of the same slot
    (a family member reporting at the same moment) is retried once, so the later one wins."""
    current = and_(
        records.c.person_id == record.person_id,
        records.c.day == record.day,
        records.c.slot == record.slot,
        records.c.replaced_at.is_(None),
    )
    for attempt in range(2):
        try:
            async with conn.begin_nested():
                await conn.execute(
                    update(alerts)
                    .where(
                        alerts.c.status == OPEN,
                        alerts.c.record_id.in_(select(records.c.id).where(current)),
                    )
                    .values(status=SUPERSEDED, next_escalation_at=None)
                )
                await conn.execute(update(records).where(current).values(replaced_at=now))
                result = await conn.execute(
                    insert(records).values(
                        person_id=record.person_id,
                        reporter_id=record.reporter_id,
                        region_id=record.region_id,
                        household_id=record.household_id,
                        day=record.day,
                        slot=record.slot,
                        status=record.status,
                        risk=record.risk,
                        reasons=record.reasons,
                        answers=record.answers,
                        created_at=now,
                    )
                )
                return _new_id(result)
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


async def current_record(
    conn: AsyncConnection, person_id: int, day: date, slot: int | None = None
) -> Any | None:
    """The person's current record of ``day`` (of one slot, or the latest of any slot)."""
    query = select(records).where(
        records.c.person_id == person_id, records.c.day == day, records.c.replaced_at.is_(None)
    )
    if slot is not None:
        query = query.where(records.c.slot == slot)
    return (await conn.execute(query.order_by(records.c.id.desc()).limit(1))).first()


async def record_history(conn: AsyncConnection, person_id: int, day: date) -> list[Any]:
    """Every record of the person on ``day``, replaced ones included, oldest first."""
    rows = await conn.execute(
        select(records)
        .where(records.c.person_id == person_id, records.c.day == day)
        .order_by(records.c.id)
    )
    return list(rows)


def _answered(day: date, *statuses: str) -> Any:
    """EXISTS a current record of ``day`` for ``people.c.id`` (with one of ``statuses``)."""
    query = exists().where(
        records.c.person_id == people.c.id,
        records.c.day == day,
        records.c.replaced_at.is_(None),
    )
    if statuses:
        query = query.where(records.c.status.in_(statuses))
    return query


def _in_quarantine(day: date) -> Any:
    return exists().where(
        quarantines.c.person_id == people.c.id,
        quarantines.c.status == ACTIVE,
        quarantines.c.start_day <= day,
        quarantines.c.end_day > day,
    )


def _in_regions(paths: list[str]) -> Any:
    return or_(*[regions.c.path.startswith(p) for p in paths]) if paths else false()


async def records_in_scope(
    conn: AsyncConnection,
    paths: list[str],
    day: date,
    *,
    limit: int,
    after_id: int = 0,
    history: bool = False,
) -> list[Any]:
    """Records of ``day`` of people living under ``paths``, by id, one page at a time."""
    reporter = people.alias("reporter")
    query = (
        select(
            records,
            people.c.name,
            reporter.c.name.label("reporter_name"),
            regions.c.code.label("region_code"),
            households.c.building,
            households.c.door,
        )
        .join(people, people.c.id == records.c.person_id)
        .join(regions, regions.c.id == people.c.region_id)
        .outerjoin(reporter, reporter.c.id == records.c.reporter_id)
        .outerjoin(households, households.c.id == records.c.household_id)
        .where(_in_regions(paths), records.c.day == day, records.c.id > after_id)
        .order_by(records.c.id)
        .limit(limit)
    )
    if not history:
        query = query.where(records.c.replaced_at.is_(None))
    return list(await conn.execute(query))


# -- household -----------------------------------------------------------------------------


async def household_members(
    conn: AsyncConnection, household_id: int, *, exclude: int, day: date
) -> list[Any]:
    """Other members of a household who may be reported for, with whether they answered today."""
    rows = await conn.execute(
        select(people.c.id, people.c.name, _answered(day, CheckinStatus.COMPLETE).label("done"))
        .where(
            people.c.household_id == household_id,
            people.c.id != exclude,
            people.c.opted_out.is_(False),
        )
        .order_by(people.c.id)
    )
    return list(rows)


# -- bulk pushes ---------------------------------------------------------------------------


async def queue_grid_push(
    conn: AsyncConnection,
    insert_ignore: Any,
    *,
    grid_ids: list[int],
    day: date,
    kind: str,
    text: str,
    not_before: datetime,
    only_missing: bool,
    id_range: tuple[int, int] | None = None,
) -> int:
    """Queue one push to every reachable resident of some grids (one statement); returns how
    many.

    With ``id_range`` (lo, hi] only people with ids in it: many grids at once are then read as
    one sequential slice of the people table, not grid by grid through the region index
    (scattered rows, several times slower on SQLite).

    Skipped: opted-out people, people under quarantine that day (they follow their own
    schedule) and, with ``only_missing``, people with a complete record that day.
    """
    # The account last seen, as ``storage.outbox.person_target`` picks it (last_seen_at
    # descending, nulls last, then id): no other account of the person ranks above this one.
    # NOT EXISTS probes the person's accounts without the per-person sort of ORDER BY ... LIMIT.
    other = identities.alias("other")
    mine = identities.c
    ranks_above = and_(
        other.c.person_id == people.c.id,
        other.c.id != mine.id,
        or_(
            and_(other.c.last_seen_at.is_not(None), mine.last_seen_at.is_(None)),
            other.c.last_seen_at > mine.last_seen_at,
            and_(other.c.last_seen_at == mine.last_seen_at, other.c.id > mine.id),
            and_(other.c.last_seen_at.is_(None), mine.last_seen_at.is_(None), other.c.id > mine.id),
        ),
    )
    conditions = [
        people.c.opted_out.is_(False),
        ~exists().where(ranks_above),
        ~_in_quarantine(day),
    ]
    if id_range is None:
        conditions.append(people.c.region_id.in_(grid_ids))
    else:
        # "+ 0": filter on the region, but let the id range drive the scan.
        lo, hi = id_range
        conditions += [people.c.id > lo, people.c.id <= hi, (people.c.region_id + 0).in_(grid_ids)]
    if only_missing:
        conditions.append(~_answered(day, CheckinStatus.COMPLETE))
    now = utcnow()
    columns = {
        "key": literal(f"checkin:{kind}:", String)
        + cast(people.c.id, String)
        + literal(f":{day.isoformat()}", String),
        "channel": identities.c.channel,
        "target_kind": literal("user", String),
        "target": identities.c.external_id,
        "rate_key": identities.c.channel + literal(":user:", String) + identities.c.external_id,
        "person_id": people.c.id,
        "payload": bindparam("payload", {"text": text}, type_=JSON),
        "status": literal(OutboxStatus.PENDING.value, String),
        "attempts": literal(0),
        "next_attempt_at": bindparam("not_before", not_before, type_=UTCDateTime()),
        "ref_type": literal("checkin", String),
        "created_at": bindparam("now", now, type_=UTCDateTime()),
    }
    source = (
        select(*columns.values())
        .select_from(people.join(identities, identities.c.person_id == people.c.id))
        .where(*conditions)
    )
    result = await conn.execute(insert_ignore.from_select(list(columns), source))
    return int(result.rowcount or 0)


# -- runs ----------------------------------------------------------------------------------


async def claim_runs(
    conn: AsyncConnection, insert_ignore: Any, keys: list[str], day: date
) -> set[str]:
    """Claim scheduled batches by key; returns the keys this call got (not those another
    process, or an earlier tick, had).

    On PostgreSQL a concurrent claim of the same key waits for the first transaction and then
    finds the key taken, so each batch runs exactly once.  Callers claim keys in the same order,
    so two claimers cannot deadlock."""
    if not keys:
        return set()
    now = utcnow()
    result = await conn.execute(
        insert_ignore.values([{"key": k, "day": day, "created_at": now} for k in keys]).returning(
            runs.c.key
        )
    )
    return set(result.scalars())


async def claim_run(conn: AsyncConnection, insert_ignore: Any, key: str, day: date) -> bool:
    return bool(await claim_runs(conn, insert_ignore, [key], day))


async def run_keys(conn: AsyncConnection, day: date, among: list[str] | None = None) -> set[str]:
    """Keys of the batches done on ``day`` (only those of ``among``, if given)."""
    query = select(runs.c.key).where(runs.c.day == day)
    if among is not None:
        query = query.where(runs.c.key.in_(among))
    return set((await conn.execute(query)).scalars())


async def max_person_id(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.max(people.c.id)))).scalar() or 0)


# -- quarantines ---------------------------------------------------------------------------


async def active_quarantine(conn: AsyncConnection, person_id: int, day: date) -> Any | None:
    """The person's quarantine covering ``day`` (started, not yet released)."""
    return (
        await conn.execute(
            select(quarantines)
            .where(
                quarantines.c.person_id == person_id,
                quarantines.c.status == ACTIVE,
                quarantines.c.start_day <= day,
                quarantines.c.end_day > day,
            )
            .order_by(quarantines.c.id.desc())
            .limit(1)
        )
    ).first()


async def open_quarantine(conn: AsyncConnection, person_id: int) -> Any | None:
    """The person's active quarantine (current or starting later), if any."""
    return (
        await conn.execute(
            select(quarantines)
            .where(quarantines.c.person_id == person_id, quarantines.c.status == ACTIVE)
            .order_by(quarantines.c.id.desc())
            .limit(1)
        )
    ).first()


async def create_quarantine(
    conn: AsyncConnection,
    *,
    person_id: int,
    kind: str,
    start_day: date,
    end_day: date,
    created_by: int,
    now: datetime,
    reason: str | None = None,
) -> int:
    result = await conn.execute(
        insert(quarantines).values(
            person_id=person_id,
            kind=kind,
            start_day=start_day,
            end_day=end_day,
            status=ACTIVE,
            created_by=created_by,
            created_at=now,
            reason=reason,
        )
    )
    return _new_id(result)


async def get_quarantine(conn: AsyncConnection, quarantine_id: int) -> Any | None:
    """One quarantine period by id (any status)."""
    query = select(quarantines).where(quarantines.c.id == quarantine_id)
    return (await conn.execute(query)).first()


async def open_quarantines_in_scope(
    conn: AsyncConnection, paths: list[str], *, limit: int, after_id: int = 0
) -> list[Any]:
    """Active periods (current or starting later) of people living under ``paths``, by id,
    with the person's name, grid code and household."""
    query = (
        select(
            quarantines,
            people.c.name,
            regions.c.code.label("region_code"),
            households.c.building,
            households.c.door,
        )
        .join(people, people.c.id == quarantines.c.person_id)
        .join(regions, regions.c.id == people.c.region_id)
        .outerjoin(households, households.c.id == people.c.household_id)
        .where(_in_regions(paths), quarantines.c.status == ACTIVE, quarantines.c.id > after_id)
        .order_by(quarantines.c.id)
        .limit(limit)
    )
    return list(await conn.execute(query))


async def set_quarantine_end(conn: AsyncConnection, quarantine_id: int, end_day: date) -> None:
    await conn.execute(
        update(quarantines).where(quarantines.c.id == quarantine_id).values(end_day=end_day)
    )


async def close_quarantine(
    conn: AsyncConnection, quarantine_id: int, *, status: str, now: datetime
) -> bool:
    """Move an active quarantine to ``status`` (released, ended); ``False`` if it was not
    active any more (another process closed it first)."""
    result = await conn.execute(
        update(quarantines)
        .where(quarantines.c.id == quarantine_id, quarantines.c.status == ACTIVE)
        .values(status=status, closed_at=now)
    )
    return bool(result.rowcount)


async def quarantines_on(conn: AsyncConnection, day: date) -> list[Any]:
    """Active quarantines covering ``day``, with the person's name, grid and opt-out."""
    rows = await conn.execute(
        select(
            quarantines,
            people.c.name,
            people.c.region_id,
            people.c.household_id,
            people.c.opted_out,
        )
        .join(people, people.c.id == quarantines.c.person_id)
        .where(
            quarantines.c.status == ACTIVE,
            quarantines.c.start_day <= day,
            quarantines.c.end_day > day,
        )
        .order_by(quarantines.c.id)
    )
    return list(rows)


async def quarantines_ending(conn: AsyncConnection, day: date) -> list[Any]:
    """Active quarantines whose period is over on ``day`` (release day reached)."""
    rows = await conn.execute(
        select(quarantines, people.c.name, people.c.region_id)
        .join(people, people.c.id == quarantines.c.person_id)
        .where(quarantines.c.status == ACTIVE, quarantines.c.end_day <= day)
        .order_by(quarantines.c.id)
    )
    return list(rows)


async def count_quarantined(conn: AsyncConnection, paths: list[str], day: date) -> int:
    query = (
        select(func.count())
        .select_from(quarantines.join(people, people.c.id == quarantines.c.person_id))
        .join(regions, regions.c.id == people.c.region_id)
        .where(
            _in_regions(paths),
            quarantines.c.status == ACTIVE,
            quarantines.c.start_day <= day,
            quarantines.c.end_day > day,
        )
    )
    return int((await conn.execute(query)).scalar() or 0)


async def find_people_in_scope(conn: AsyncConnection, paths: list[str], name: str) -> list[Any]:
    """People named ``name`` living under ``paths`` (for a warden's command)."""
    rows = await conn.execute(
        select(
            people.c.id,
            people.c.name,
            people.c.household_id,
            households.c.building,
            households.c.door,
        )
        .join(regions, regions.c.id == people.c.region_id)
        .outerjoin(households, households.c.id == people.c.household_id)
        .where(_in_regions(paths), people.c.name == name)
        .order_by(people.c.id)
        .limit(20)
    )
    return list(rows)


async def people_of_household(conn: AsyncConnection, household_id: int) -> list[int]:
    rows = await conn.execute(
        select(people.c.id).where(people.c.household_id == household_id).order_by(people.c.id)
    )
    return [r.id for r in rows]


# -- alerts --------------------------------------------------------------------------------


async def create_alert(
    conn: AsyncConnection,
    *,
    record_id: int,
    person_id: int,
    region_id: int | None,
    level: str,
    next_escalation_at: datetime | None,
    now: datetime,
) -> int:
    result = await conn.execute(
        insert(alerts).values(
            record_id=record_id,
            person_id=person_id,
            region_id=region_id,
            level=level,
            status=OPEN,
            escalation_level=0,
            next_escalation_at=next_escalation_at,
            created_at=now,
        )
    )
    return _new_id(result)


async def get_alert(conn: AsyncConnection, alert_id: int) -> Any | None:
    return (await conn.execute(select(alerts).where(alerts.c.id == alert_id))).first()


async def acknowledge_alert(
    conn: AsyncConnection, alert_id: int, *, by: int, now: datetime
) -> bool:
    """Mark an open alert acknowledged; ``False`` if someone already had."""
    result = await conn.execute(
        update(alerts)
        .where(alerts.c.id == alert_id, alerts.c.status == OPEN)
        .values(
            status="acknowledged", acknowledged_by=by, acknowledged_at=now, next_escalation_at=None
        )
    )
    return bool(result.rowcount)


async def claim_due_escalations(
    conn: AsyncConnection, *, now: datetime, skip_locked: bool, limit: int = 200
) -> list[Any]:
    """Open alerts whose escalation time has come (locked on PostgreSQL)."""
    query = (
        select(alerts)
        .where(alerts.c.status == OPEN, alerts.c.next_escalation_at <= now)
        .order_by(alerts.c.next_escalation_at)
        .limit(limit)
    )
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    return list(await conn.execute(query))


async def set_escalation(
    conn: AsyncConnection, alert_id: int, *, level: int, next_at: datetime | None
) -> None:
    await conn.execute(
        update(alerts)
        .where(alerts.c.id == alert_id)
        .values(escalation_level=level, next_escalation_at=next_at)
    )


# -- what wardens see ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayCounts:
    region_id: int
    total: int
    complete: int
    incomplete: int
    moderate: int
    high: int

    @property
    def missing(self) -> int:
        return self.total - self.complete


def _risk_exists(day: date, risk: str) -> Any:
    return exists().where(
        records.c.person_id == people.c.id,
        records.c.day == day,
        records.c.replaced_at.is_(None),
        records.c.risk == risk,
    )


def _flag(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


async def day_counts(conn: AsyncConnection, paths: list[str], day: date) -> list[DayCounts]:
    """Per region (grid) under ``paths``: residents not opted out, complete, incomplete only,
    moderate and high (the worst of the day)."""
    complete = _answered(day, CheckinStatus.COMPLETE)
    high = _risk_exists(day, "high")
    query = (
        select(
            people.c.region_id,
            func.count(),
            _flag(complete),
            _flag(and_(~complete, _answered(day, CheckinStatus.INCOMPLETE))),
            _flag(and_(~high, _risk_exists(day, "moderate"))),
            _flag(high),
        )
        .join(regions, regions.c.id == people.c.region_id)
        .where(_in_regions(paths), people.c.opted_out.is_(False))
        .group_by(people.c.region_id)
    )
    return [DayCounts(*(int(v) for v in row)) for row in await conn.execute(query)]


@dataclass(frozen=True, slots=True)
class MissingPerson:
    id: int
    name: str
    building: str | None
    door: str | None
    region_name: str
    incomplete: bool
    """They started but left an incomplete record."""
    phone: str | None = None
    """Shown in full to the responsible warden only (``repo.sees_full_phone``)."""


async def missing_people(
    conn: AsyncConnection, paths: list[str], day: date, *, limit: int, offset: int
) -> tuple[int, list[MissingPerson]]:
    """People under ``paths`` without a complete record of ``day``: how many, and one page
    (by building, door, name) saying who left an incomplete one.

    The total rides along as a window count, so the area is read once; the incomplete flags
    are looked up for the page only."""
    query = (
        select(
            people.c.id,
            people.c.name,
            people.c.phone,
            households.c.building,
            households.c.door,
            regions.c.name.label("region_name"),
            func.count().over().label("total"),
        )
        .join(regions, regions.c.id == people.c.region_id)
        .outerjoin(households, households.c.id == people.c.household_id)
        .where(
            _in_regions(paths),
            people.c.opted_out.is_(False),
            ~_answered(day, CheckinStatus.COMPLETE),
        )
        .order_by(
            regions.c.path,
            households.c.building.asc().nulls_last(),
            households.c.door.asc().nulls_last(),
            people.c.id,
        )
    )
    rows = list(await conn.execute(query.limit(limit).offset(offset)))
    if not rows:
        if offset == 0:
            return 0, []
        # Past the last page: no row came back to carry the window count.
        total = (await conn.execute(select(func.count()).select_from(query.subquery()))).scalar()
        return int(total or 0), []
    started = set(
        (
            await conn.execute(
                select(records.c.person_id).where(
                    records.c.person_id.in_([r.id for r in rows]),
                    records.c.day == day,
                    records.c.replaced_at.is_(None),
                    records.c.status == CheckinStatus.INCOMPLETE,
                )
            )
        ).scalars()
    )
    page = [
        MissingPerson(
            r.id, r.name, r.building, r.door, r.region_name, r.id in started, phone=r.phone
        )
        for r in rows
    ]
    return int(rows[0].total), page


async def grid_day_counts(
    conn: AsyncConnection, roots: list[RegionInfo], day: date
) -> list[tuple[RegionInfo, DayCounts]]:
    """Every grid under ``roots`` (by code) with its counts of ``day``; grids nobody lives in
    get zeros.  The API's summary and the console's overview both read this."""
    paths = [r.path for r in roots]
    counts = {c.region_id: c for c in await day_counts(conn, paths, day)}
    grids: dict[int, RegionInfo] = {}
    for root in roots:
        for grid in await list_subregions(conn, root, level="grid"):
            grids[grid.id] = grid
    return [
        (grid, counts.get(grid.id) or DayCounts(grid.id, 0, 0, 0, 0, 0))
        for grid in sorted(grids.values(), key=lambda g: g.code)
    ]


async def complete_by_day(
    conn: AsyncConnection, paths: list[str], first: date, last: date
) -> dict[date, int]:
    """People under ``paths`` (not opted out) with a complete current record, per day of
    ``[first, last]`` (days without any are left out)."""
    rows = await conn.execute(
        select(records.c.day, func.count(func.distinct(records.c.person_id)))
        .select_from(records.join(people, people.c.id == records.c.person_id))
        .join(regions, regions.c.id == people.c.region_id)
        .where(
            _in_regions(paths),
            people.c.opted_out.is_(False),
            records.c.day >= first,
            records.c.day <= last,
            records.c.replaced_at.is_(None),
            records.c.status == CheckinStatus.COMPLETE,
        )
        .group_by(records.c.day)
    )
    return {row[0]: int(row[1]) for row in rows}


async def open_alerts(
    conn: AsyncConnection, paths: list[str], *, limit: int
) -> tuple[int, list[Any]]:
    """Alerts still open (not acknowledged) of people under ``paths``, oldest first, with how
    many there are in all."""
    condition = and_(_in_regions(paths), alerts.c.status == OPEN)
    source = alerts.join(people, people.c.id == alerts.c.person_id).join(
        regions, regions.c.id == people.c.region_id
    )
    total = (
        await conn.execute(select(func.count()).select_from(source).where(condition))
    ).scalar_one()
    rows = await conn.execute(
        select(
            alerts,
            people.c.name,
            regions.c.code.label("region_code"),
            regions.c.name.label("region_name"),
        )
        .select_from(source)
        .where(condition)
        .order_by(alerts.c.created_at, alerts.c.id)
        .limit(limit)
    )
    return int(total), list(rows)


async def abnormal_records(
    conn: AsyncConnection, paths: list[str], day: date, *, limit: int = 50
) -> list[Any]:
    """Current moderate and high records of ``day`` under ``paths`` with their alert, worst
    first."""
    rank = case((records.c.risk == "high", 0), else_=1)
    rows = await conn.execute(
        select(
            records,
            people.c.name,
            households.c.building,
            households.c.door,
            alerts.c.id.label("alert_id"),
            alerts.c.status.label("alert_status"),
        )
        .join(people, people.c.id == records.c.person_id)
        .join(regions, regions.c.id == people.c.region_id)
        .outerjoin(households, households.c.id == records.c.household_id)
        .outerjoin(alerts, alerts.c.record_id == records.c.id)
        .where(
            _in_regions(paths),
            records.c.day == day,
            records.c.replaced_at.is_(None),
            records.c.risk.in_(("moderate", "high")),
        )
        .order_by(rank, records.c.id)
        .limit(limit)
    )
    return list(rows)


# -- retention -----------------------------------------------------------------------------


async def purge_checkin(conn: AsyncConnection, *, cutoff: datetime) -> dict[str, int]:
    """Delete check-in answers (and their alerts), closed quarantines and run marks older than
    ``cutoff`` (PIPL: kept only as long as configured)."""
    old_records = select(records.c.id).where(records.c.created_at < cutoff)
    counts = {
        "checkin_alerts": (
            await conn.execute(delete(alerts).where(alerts.c.record_id.in_(old_records)))
        ).rowcount,
        "checkin_records": (
            await conn.execute(delete(records).where(records.c.created_at < cutoff))
        ).rowcount,
        "checkin_quarantines": (
            await conn.execute(
                delete(quarantines).where(
                    quarantines.c.status != ACTIVE, quarantines.c.closed_at < cutoff
                )
            )
        ).rowcount,
        "checkin_runs": (
            await conn.execute(delete(runs).where(runs.c.created_at < cutoff))
        ).rowcount,
    }
    return {k: int(v or 0) for k, v in counts.items()}


def _new_id(result: Any) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])
