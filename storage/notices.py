"""Notices in the database: notice rows, bulk queuing into the outbox, acknowledgements, receipts.

Queuing never brings recipients into Python: each page of recipients is one
``INSERT INTO outbox ... SELECT ... ON CONFLICT DO NOTHING`` per text variant, and the outbox
key ``notice:<id>:p<person id>`` (``g<group id>`` for a group chat) makes a repeated page (a
crash, a second process) insert nothing twice.  The notice keeps a cursor (the last person id
queued) so that a process taking over resumes where the other one stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Integer,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from storage.checkin_models import Quarantine
from storage.models import (
    BigId,
    ChatGroup,
    Identity,
    OutboxMessage,
    OutboxStatus,
    Person,
    PersonRole,
    Region,
    UTCDateTime,
)
from storage.notices_models import REF_EXTRA, REF_TARGET, Notice, NoticeAck, NoticeStatus
from storage.outbox import OUTBOX_COLUMNS

notices = Notice.__table__
acks = NoticeAck.__table__
outbox = OutboxMessage.__table__
people = Person.__table__
regions = Region.__table__
identities = Identity.__table__
groups = ChatGroup.__table__
roles = PersonRole.__table__
quarantines = Quarantine.__table__

STATUS_FILTERS = ("quarantined", "quarantined_households")
FINAL = (OutboxStatus.SENT, OutboxStatus.FAILED, OutboxStatus.DEAD)


# -- what to queue -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudienceFilter:
    """Who a notice reaches, in SQL terms."""

    paths: tuple[str, ...]
    """Region paths: people living, and groups bound, anywhere under one of them."""
    groups: bool = True
    individuals: bool = True
    roles: tuple[str, ...] = ()
    """Only people holding one of these roles (empty: everyone)."""
    status: str | None = None
    """``quarantined`` (people in active quarantine) or ``quarantined_households`` (everyone
    in a household where someone is); applies to individuals."""
    today: date | None = None
    """The local day quarantines are checked against."""
    exclude_person_id: int | None = None
    group_purposes: tuple[str, ...] = ("residents",)


@dataclass(frozen=True, slots=True)
class TextPlan:
    """The text parts each kind of target gets.

    ``variants`` holds one entry per key of the channel length table (``"channel"`` or
    ``"channel:kind"``); targets matching no key get ``base``.
    """

    base: tuple[str, ...]
    variants: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class RowTiming:
    """When the rows of one queuing step are due: ``not_before``, and each further part of a
    split text ``part_gap_s`` later."""

    not_before: datetime
    part_gap_s: float
    created_at: datetime


def _target_rows(ref_type: ColumnElement[Any]) -> ColumnElement[bool]:
    """``ref_type = 'notice'`` as a literal, so that both planners use the partial index
    ``ix_outbox_notice_ref`` (neither matches a partial index against a bound parameter)."""
    return ref_type == literal_column(f"'{REF_TARGET}'")


def _variant_clause(
    key: str, keys: Sequence[str], channel: ColumnElement[Any], kind: ColumnElement[Any]
) -> ColumnElement[bool]:
    name, _, target_kind = key.partition(":")
    if target_kind:
        return and_(channel == name, kind == target_kind)
    own_kinds = [k.partition(":")[2] for k in keys if k.startswith(name + ":")]
    if own_kinds:
        return and_(channel == name, kind.notin_(own_kinds))
    return channel == name


def _plan_clauses(
    plan: TextPlan, channel: ColumnElement[Any], kind: ColumnElement[Any]
) -> list[tuple[ColumnElement[bool] | None, tuple[str, ...]]]:
    """(WHERE clause, parts) pairs that together cover every target exactly once."""
    keys = [key for key, _ in plan.variants]
    special = [(key, parts) for key, parts in plan.variants if parts != plan.base]
    clauses: list[tuple[ColumnElement[bool] | None, tuple[str, ...]]] = [
        (_variant_clause(key, keys, channel, kind), parts) for key, parts in special
    ]
    rest = not_(or_(*[c for c, _ in clauses if c is not None])) if clauses else None
    return [(rest, plan.base), *clauses]


async def _insert_rows(conn: AsyncConnection, query: Any) -> None:
    """``INSERT INTO outbox ... SELECT``, skipping rows whose key exists.

    The plain insert is tried first, in a savepoint: ``ON CONFLICT DO NOTHING`` makes
    PostgreSQL insert each row speculatively, about half as slow again, and a conflict only
    happens when a page is queued twice (a process taking over from one still running).
    Then the statement is run again, inserting only the missing rows.
    """
    columns = list(OUTBOX_COLUMNS)
    try:
        async with conn.begin_nested():
            await conn.execute(insert(outbox).from_select(columns, query))
    except IntegrityError:
        dialect: Any = sqlite if conn.dialect.name == "sqlite" else postgresql
        await conn.execute(
            dialect.insert(outbox).from_select(columns, query).on_conflict_do_nothing()
        )


def _row_values(
    *,
    key: ColumnElement[str],
    channel: ColumnElement[Any],
    kind: ColumnElement[Any],
    address: ColumnElement[Any],
    person_id: ColumnElement[Any],
    group_id: ColumnElement[Any],
    text: str,
    due: datetime,
    ref_type: str,
    notice_id: int,
    created_at: datetime,
) -> list[ColumnElement[Any]]:
    """The SELECT list of one outbox row, in ``OUTBOX_COLUMNS`` order."""
    rate_key = channel + literal(":", String) + kind + literal(":", String) + address
    return [
        key,
        channel,
        kind,
        address,
        rate_key,
        person_id,
        group_id,
        literal({"text": text}, JSON),
        literal(OutboxStatus.PENDING.value, String),
        literal(0, Integer),
        literal(due, UTCDateTime()),
        literal(ref_type, String),
        literal(notice_id, BigId),
        literal(created_at, UTCDateTime()),
    ]


def _part_suffix(index: int) -> str:
    return f":{index + 1}" if index else ""


def _due(timing: RowTiming, index: int) -> datetime:
    return timing.not_before + timedelta(seconds=timing.part_gap_s * index)


# -- audience ------------------------------------------------------------------------------


def _in_regions(paths: Sequence[str]) -> ColumnElement[bool]:
    return (
        regions.c.path.startswith(paths[0])
        if len(paths) == 1
        else or_(*[regions.c.path.startswith(p) for p in paths])
    )


def _active_quarantine(person_col: ColumnElement[Any], today: date) -> ColumnElement[bool]:
    return exists().where(
        quarantines.c.person_id == person_col,
        quarantines.c.status == "active",
        quarantines.c.start_day <= today,
        quarantines.c.end_day > today,
    )


def _people_conditions(f: AudienceFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [
        people.c.opted_out.is_(False),
        people.c.region_id.in_(select(regions.c.id).where(_in_regions(f.paths))),
    ]
    if f.exclude_person_id is not None:
        conditions.append(people.c.id != f.exclude_person_id)
    if f.roles:
        conditions.append(
            exists().where(roles.c.person_id == people.c.id, roles.c.role.in_(f.roles))
        )
    if f.status is not None:
        if f.status not in STATUS_FILTERS or f.today is None:
            raise ValueError(f"unknown status filter {f.status!r} or no day given")
        if f.status == "quarantined":
            conditions.append(_active_quarantine(people.c.id, f.today))
        else:
            member = people.alias("member")
            conditions.append(
                people.c.household_id.in_(
                    select(member.c.household_id).where(
                        member.c.household_id.isnot(None),
                        _active_quarantine(member.c.id, f.today),
                    )
                )
            )
    return conditions


def _current_identity(conn: AsyncConnection, after_id: int, last_id: int) -> tuple[Any, Any, Any]:
    """People of one id range joined to the identity each was last seen on (the one
    ``storage.outbox.person_target`` picks): ``(from clause, channel column, address column)``.

    PostgreSQL reads the range's identities once with ``DISTINCT ON`` (a range scan, then a
    join); SQLite, which has no ``DISTINCT ON``, a correlated subquery in the join condition.
    """
    order = (identities.c.last_seen_at.desc().nulls_last(), identities.c.id.desc())
    if conn.dialect.name == "sqlite":
        ident = identities.alias("ident")
        newest = (
            select(ident.c.id)
            .where(ident.c.person_id == people.c.id)
            .order_by(ident.c.last_seen_at.desc().nulls_last(), ident.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        return (
            people.join(identities, identities.c.id == newest),
            identities.c.channel,
            identities.c.external_id,
        )
    current = (
        select(identities.c.person_id, identities.c.channel, identities.c.external_id)
        .where(identities.c.person_id > after_id, identities.c.person_id <= last_id)
        .ext(postgresql.distinct_on(identities.c.person_id))
        .order_by(identities.c.person_id, *order)
        .subquery("current_identity")
    )
    return (
        people.join(current, current.c.person_id == people.c.id),
        current.c.channel,
        current.c.external_id,
    )


async def _without_jit(conn: AsyncConnection) -> None:
    """PostgreSQL's JIT compiles each bulk statement anew (~0.1 s) and wins nothing here."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SET LOCAL jit = off"))


def _group_columns() -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    is_robot = groups.c.robot_key.isnot(None)
    kind = case((is_robot, literal("robot", String)), else_=literal("chat", String))
    address = case((is_robot, groups.c.robot_key), else_=groups.c.external_id)
    return kind, address


def _group_conditions(f: AudienceFilter) -> list[ColumnElement[bool]]:
    return [
        groups.c.region_id.in_(select(regions.c.id).where(_in_regions(f.paths))),
        groups.c.purpose.in_(f.group_purposes),
    ]


async def count_audience(conn: AsyncConnection, f: AudienceFilter) -> tuple[int, int]:
    """How many people (reachable on some channel) and group chats the audience holds."""
    people_count = 0
    if f.individuals:
        reachable = exists().where(identities.c.person_id == people.c.id)
        people_count = int(
            (
                await conn.execute(select(func.count()).where(*_people_conditions(f), reachable))
            ).scalar()
            or 0
        )
    group_count = 0
    if f.groups:
        group_count = int(
            (
                await conn.execute(
                    select(func.count()).select_from(groups).where(*_group_conditions(f))
                )
            ).scalar()
            or 0
        )
    return people_count, group_count


# -- queuing -------------------------------------------------------------------------------


async def queue_people_page(
    conn: AsyncConnection,
    notice_id: int,
    f: AudienceFilter,
    plan: TextPlan,
    timing: RowTiming,
    *,
    after_id: int,
    page_size: int,
) -> int | None:
    """Queue the next page of individual recipients (person id above ``after_id``).

    Returns the last person id of the page, or ``None`` when there was nobody left.
    """
    conditions = _people_conditions(f)
    bounds = select(people.c.id).where(*conditions, people.c.id > after_id).order_by(people.c.id)
    last_id = (await conn.execute(bounds.offset(page_size - 1).limit(1))).scalar()
    if last_id is None:
        last_id = (
            await conn.execute(
                select(func.max(people.c.id)).where(*conditions, people.c.id > after_id)
            )
        ).scalar()
        if last_id is None:
            return None
    page = [*conditions, people.c.id > after_id, people.c.id <= last_id]
    await _without_jit(conn)
    source, channel, address = _current_identity(conn, after_id, int(last_id))
    kind = literal("user", String)
    stem = f"notice:{notice_id}:p"
    for clause, parts in _plan_clauses(plan, channel, kind):
        for index, part_text in enumerate(parts):
            key = literal(stem, String) + cast(people.c.id, String)
            if index:
                key = key + literal(_part_suffix(index), String)
            columns = _row_values(
                key=key,
                channel=channel,
                kind=kind,
                address=address,
                person_id=people.c.id,
                group_id=cast(null(), BigId),
                text=part_text,
                due=_due(timing, index),
                ref_type=REF_EXTRA if index else REF_TARGET,
                notice_id=notice_id,
                created_at=timing.created_at,
            )
            where = page if clause is None else [*page, clause]
            query = select(*columns).select_from(source).where(*where).order_by(people.c.id)
            await _insert_rows(conn, query)
    return int(last_id)


async def queue_groups(
    conn: AsyncConnection, notice_id: int, f: AudienceFilter, plan: TextPlan, timing: RowTiming
) -> None:
    """Queue one row per group chat of the audience (and per part of a split text)."""
    kind, address = _group_columns()
    conditions = _group_conditions(f)
    stem = f"notice:{notice_id}:g"
    for clause, parts in _plan_clauses(plan, groups.c.channel, kind):
        for index, part_text in enumerate(parts):
            key = literal(stem, String) + cast(groups.c.id, String)
            if index:
                key = key + literal(_part_suffix(index), String)
            columns = _row_values(
                key=key,
                channel=groups.c.channel,
                kind=kind,
                address=address,
                person_id=cast(null(), BigId),
                group_id=groups.c.id,
                text=part_text,
                due=_due(timing, index),
                ref_type=REF_EXTRA if index else REF_TARGET,
                notice_id=notice_id,
                created_at=timing.created_at,
            )
            where = conditions if clause is None else [*conditions, clause]
            await _insert_rows(conn, select(*columns).select_from(groups).where(*where))


async def queue_reminders(
    conn: AsyncConnection, notice_id: int, round_no: int, plan: TextPlan, timing: RowTiming
) -> int:
    """Queue a reminder to every target of the notice that has not acknowledged.

    Targets whose first message is still on its way (pending or sending) are left alone: they
    have not had the chance to acknowledge yet.  Returns the number of targets reminded.
    """
    o = outbox.alias("o")
    stem = f"notice:{notice_id}:"
    unacked = or_(
        and_(
            o.c.person_id.isnot(None),
            ~exists().where(acks.c.notice_id == notice_id, acks.c.person_id == o.c.person_id),
        ),
        and_(
            o.c.group_id.isnot(None),
            ~exists().where(acks.c.notice_id == notice_id, acks.c.group_id == o.c.group_id),
        ),
    )
    conditions = [
        _target_rows(o.c.ref_type),
        o.c.ref_id == notice_id,
        o.c.status.in_(FINAL),
        unacked,
    ]
    targets = int(
        (await conn.execute(select(func.count()).select_from(o).where(*conditions))).scalar() or 0
    )
    tail = func.substr(o.c.key, len(stem) + 1)
    for clause, parts in _plan_clauses(plan, o.c.channel, o.c.target_kind):
        for index, part_text in enumerate(parts):
            key = literal(f"{stem}r{round_no}:", String) + tail
            if index:
                key = key + literal(_part_suffix(index), String)
            columns = _row_values(
                key=key,
                channel=o.c.channel,
                kind=o.c.target_kind,
                address=o.c.target,
                person_id=o.c.person_id,
                group_id=o.c.group_id,
                text=part_text,
                due=_due(timing, index),
                ref_type=REF_EXTRA,
                notice_id=notice_id,
                created_at=timing.created_at,
            )
            where = conditions if clause is None else [*conditions, clause]
            await _insert_rows(conn, select(*columns).select_from(o).where(*where))
    return targets


# -- notice rows ---------------------------------------------------------------------------


async def code_taken(conn: AsyncConnection, code: str) -> bool:
    return (
        await conn.execute(select(notices.c.id).where(notices.c.code == code))
    ).first() is not None


async def insert_notice(conn: AsyncConnection, **values: Any) -> int:
    result = await conn.execute(insert(notices).values(**values).returning(notices.c.id))
    return int(result.scalar_one())


async def get_notice(conn: AsyncConnection, notice_id: int) -> Any | None:
    return (await conn.execute(select(notices).where(notices.c.id == notice_id))).first()


async def get_notice_by_code(conn: AsyncConnection, code: str) -> Any | None:
    return (await conn.execute(select(notices).where(notices.c.code == code))).first()


async def list_notices(
    conn: AsyncConnection,
    *,
    sender_id: int,
    scope_paths: Sequence[str],
    status: str | None = None,
    limit: int = 20,
    before_id: int | None = None,
    own_only: bool = False,
) -> list[Any]:
    """Notices the person sent or that lie wholly in their scope, newest first."""
    visible = [notices.c.sender_id == sender_id]
    if not own_only:
        visible += [notices.c.scope_path.startswith(p) for p in scope_paths]
    query = select(notices).where(or_(*visible))
    if status is not None:
        query = query.where(notices.c.status == status)
    if before_id is not None:
        query = query.where(notices.c.id < before_id)
    return list(await conn.execute(query.order_by(notices.c.id.desc()).limit(limit)))


async def update_scheduled(conn: AsyncConnection, notice_id: int, **values: Any) -> bool:
    """Change a notice that is still waiting for its time; ``False`` if it is not any more."""
    result = await conn.execute(
        update(notices)
        .where(notices.c.id == notice_id, notices.c.status == NoticeStatus.SCHEDULED)
        .values(**values)
    )
    return bool(result.rowcount)


def _takeable(now: datetime, *, urgent_only: bool = False) -> ColumnElement[bool]:
    scheduled = and_(notices.c.status == NoticeStatus.SCHEDULED, notices.c.send_at <= now)
    if urgent_only:
        scheduled = and_(scheduled, notices.c.urgent.is_(True))
    return or_(
        scheduled,
        and_(
            notices.c.status == NoticeStatus.QUEUING,
            or_(notices.c.lease_until.is_(None), notices.c.lease_until < now),
        ),
    )


async def due_notice_ids(
    conn: AsyncConnection, now: datetime, *, limit: int = 50, urgent_only: bool = False
) -> list[int]:
    """Scheduled notices whose time has come (only urgent ones with ``urgent_only``), and
    queuing ones whose process went away."""
    rows = await conn.execute(
        select(notices.c.id)
        .where(_takeable(now, urgent_only=urgent_only))
        .order_by(notices.c.send_at)
        .limit(limit)
    )
    return [int(r.id) for r in rows]


async def take_lease(
    conn: AsyncConnection, notice_id: int, *, now: datetime, until: datetime
) -> Any | None:
    """Start (or take over) queuing a due notice; the notice row, or ``None`` if it is not
    due or another process holds it."""
    result = await conn.execute(
        update(notices)
        .where(notices.c.id == notice_id, _takeable(now))
        .values(status=NoticeStatus.QUEUING, lease_until=until, updated_at=now)
        .returning(*notices.c)
    )
    return result.first()


async def set_rendered(conn: AsyncConnection, notice_id: int, rendered: str) -> None:
    await conn.execute(update(notices).where(notices.c.id == notice_id).values(rendered=rendered))


async def save_progress(
    conn: AsyncConnection,
    notice_id: int,
    *,
    cursor: int | None = None,
    groups_done: bool = False,
    lease_until: datetime,
) -> None:
    values: dict[str, Any] = {"lease_until": lease_until}
    if cursor is not None:
        values["queue_cursor"] = cursor
    if groups_done:
        values["groups_queued"] = True
    await conn.execute(
        update(notices)
        .where(notices.c.id == notice_id, notices.c.status == NoticeStatus.QUEUING)
        .values(**values)
    )


async def finish_queuing(conn: AsyncConnection, notice_id: int, now: datetime) -> None:
    await conn.execute(
        update(notices)
        .where(notices.c.id == notice_id, notices.c.status == NoticeStatus.QUEUING)
        .values(status=NoticeStatus.SENT, queued_at=now, lease_until=None, updated_at=now)
    )


async def note_resend(conn: AsyncConnection, notice_id: int, round_no: int, now: datetime) -> bool:
    """Claim reminder round ``round_no`` (the one after the stored count); ``False`` when
    another request claimed it first."""
    result = await conn.execute(
        update(notices)
        .where(notices.c.id == notice_id, notices.c.resend_count == round_no - 1)
        .values(resend_count=round_no, last_resent_at=now, updated_at=now)
    )
    return bool(result.rowcount)


# -- acknowledgements ----------------------------------------------------------------------

_NOTICE_ROWS = (REF_TARGET, REF_EXTRA)


async def latest_unacked_for_person(conn: AsyncConnection, person_id: int) -> Any | None:
    """The newest notice asking for acknowledgement that reached this person and that they
    have not acknowledged."""
    query = (
        select(notices)
        .join(outbox, and_(outbox.c.ref_id == notices.c.id, outbox.c.ref_type.in_(_NOTICE_ROWS)))
        .where(
            outbox.c.person_id == person_id,
            outbox.c.status == OutboxStatus.SENT,
            notices.c.ack_required.is_(True),
            ~exists().where(acks.c.notice_id == notices.c.id, acks.c.person_id == person_id),
        )
        .order_by(notices.c.send_at.desc(), notices.c.id.desc())
        .limit(1)
    )
    return (await conn.execute(query)).first()


async def latest_for_group(conn: AsyncConnection, group_id: int) -> Any | None:
    """The newest notice asking for acknowledgement that reached this group chat."""
    query = (
        select(notices)
        .join(outbox, and_(outbox.c.ref_id == notices.c.id, outbox.c.ref_type.in_(_NOTICE_ROWS)))
        .where(
            outbox.c.group_id == group_id,
            outbox.c.status == OutboxStatus.SENT,
            notices.c.ack_required.is_(True),
        )
        .order_by(notices.c.send_at.desc(), notices.c.id.desc())
        .limit(1)
    )
    return (await conn.execute(query)).first()


async def is_target(
    conn: AsyncConnection,
    notice_id: int,
    *,
    person_id: int | None = None,
    group_id: int | None = None,
) -> bool:
    """Whether the notice went (or is going) to this person or group chat."""
    column = outbox.c.person_id if person_id is not None else outbox.c.group_id
    value = person_id if person_id is not None else group_id
    query = select(outbox.c.id).where(
        _target_rows(outbox.c.ref_type), outbox.c.ref_id == notice_id, column == value
    )
    return (await conn.execute(query.limit(1))).first() is not None


async def has_ack(
    conn: AsyncConnection,
    notice_id: int,
    *,
    person_id: int | None = None,
    group_id: int | None = None,
) -> bool:
    column = acks.c.person_id if person_id is not None else acks.c.group_id
    value = person_id if person_id is not None else group_id
    query = select(acks.c.id).where(acks.c.notice_id == notice_id, column == value)
    return (await conn.execute(query)).first() is not None


async def record_ack(
    conn: AsyncConnection,
    notice_id: int,
    *,
    person_id: int | None = None,
    group_id: int | None = None,
    member_person_id: int | None = None,
    member: str = "",
    via: str,
    now: datetime,
) -> bool:
    """Store an acknowledgement; ``False`` when this person or group had already given one."""
    dialect: Any = sqlite if conn.dialect.name == "sqlite" else postgresql
    result = await conn.execute(
        dialect.insert(acks)
        .values(
            notice_id=notice_id,
            person_id=person_id,
            group_id=group_id,
            member_person_id=member_person_id,
            member=member[:128],
            via=via,
            acked_at=now,
        )
        .on_conflict_do_nothing()
    )
    return bool(result.rowcount)


# -- receipts ------------------------------------------------------------------------------


@dataclass(slots=True)
class Receipt:
    """Delivery and acknowledgement counts of one notice, per person and per group chat."""

    people: int = 0
    people_sent: int = 0
    people_failed: int = 0
    people_acked: int = 0
    groups: int = 0
    groups_sent: int = 0
    groups_failed: int = 0
    groups_acked: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def people_unacked(self) -> int:
        return max(0, self.people - self.people_acked)

    @property
    def groups_unacked(self) -> int:
        return max(0, self.groups - self.groups_acked)

    def as_dict(self) -> dict[str, Any]:
        return {
            "people": {
                "total": self.people,
                "delivered": self.people_sent,
                "failed": self.people_failed,
                "pending": self.people - self.people_sent - self.people_failed,
                "acknowledged": self.people_acked,
                "not_acknowledged": self.people_unacked,
            },
            "groups": {
                "total": self.groups,
                "delivered": self.groups_sent,
                "failed": self.groups_failed,
                "pending": self.groups - self.groups_sent - self.groups_failed,
                "acknowledged": self.groups_acked,
                "not_acknowledged": self.groups_unacked,
            },
        }


async def receipts(conn: AsyncConnection, notice_ids: Sequence[int]) -> dict[int, Receipt]:
    """Counts for each notice, from its first outbox row per target and its acknowledgements."""
    result = {nid: Receipt() for nid in notice_ids}
    if not notice_ids:
        return result
    rows = await conn.execute(
        select(outbox.c.ref_id, outbox.c.target_kind, outbox.c.status, func.count())
        .where(_target_rows(outbox.c.ref_type), outbox.c.ref_id.in_(list(notice_ids)))
        .group_by(outbox.c.ref_id, outbox.c.target_kind, outbox.c.status)
    )
    for ref_id, kind, status, count in rows:
        receipt = result[int(ref_id)]
        count = int(count)
        sent = status == OutboxStatus.SENT
        failed = status in (OutboxStatus.FAILED, OutboxStatus.DEAD)
        if kind == "user":
            receipt.people += count
            receipt.people_sent += count if sent else 0
            receipt.people_failed += count if failed else 0
        else:
            receipt.groups += count
            receipt.groups_sent += count if sent else 0
            receipt.groups_failed += count if failed else 0
        receipt.by_status[status] = receipt.by_status.get(status, 0) + count
    ack_rows = await conn.execute(
        select(acks.c.notice_id, func.count(acks.c.person_id), func.count(acks.c.group_id))
        .where(acks.c.notice_id.in_(list(notice_ids)))
        .group_by(acks.c.notice_id)
    )
    for notice_id, person_acks, group_acks in ack_rows:
        result[int(notice_id)].people_acked = int(person_acks)
        result[int(notice_id)].groups_acked = int(group_acks)
    return result


async def recipients(
    conn: AsyncConnection,
    notice_id: int,
    *,
    unacked_only: bool,
    limit: int,
    after_id: int,
) -> list[Any]:
    """One page of a notice's individual recipients with delivery status and acknowledgement."""
    query = (
        select(
            people.c.id,
            people.c.name,
            regions.c.code.label("region_code"),
            outbox.c.status,
            outbox.c.sent_at,
            acks.c.acked_at,
        )
        .select_from(
            outbox.join(people, people.c.id == outbox.c.person_id)
            .outerjoin(regions, regions.c.id == people.c.region_id)
            .outerjoin(acks, and_(acks.c.notice_id == notice_id, acks.c.person_id == people.c.id))
        )
        .where(
            _target_rows(outbox.c.ref_type),
            outbox.c.ref_id == notice_id,
            outbox.c.target_kind == "user",
            people.c.id > after_id,
        )
        .order_by(people.c.id)
        .limit(limit)
    )
    if unacked_only:
        query = query.where(acks.c.id.is_(None))
    return list(await conn.execute(query))
