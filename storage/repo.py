"""Small repositories over SQLAlchemy Core: regions, people, identities, conversations, audit.

Every function takes an open ``AsyncConnection`` so that callers decide the transaction (and a
group commit can run many of them in one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, func, insert, literal, select, true, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import any_of, each_of
from storage.models import (
    LEVEL_ORDER,
    AuditEntry,
    ChatGroup,
    Conversation,
    Household,
    Identity,
    Person,
    PersonRole,
    Region,
    RegionLevel,
    Role,
    utcnow,
)

regions = Region.__table__
people = Person.__table__
roles = PersonRole.__table__
identities = Identity.__table__
households = Household.__table__
groups = ChatGroup.__table__
conversations = Conversation.__table__
audit = AuditEntry.__table__


@dataclass(frozen=True, slots=True)
class RegionInfo:
    id: int
    code: str
    name: str
    level: str
    parent_id: int | None
    path: str

    def contains(self, other: RegionInfo) -> bool:
        """True when ``other`` is this region or lies below it."""
        return other.path.startswith(self.path)


@dataclass(frozen=True, slots=True)
class Scope:
    role: str
    region: RegionInfo


@dataclass(frozen=True, slots=True)
class PersonInfo:
    id: int
    name: str
    phone: str | None
    region: RegionInfo | None
    household_id: int | None
    opted_out: bool
    scopes: tuple[Scope, ...] = field(default_factory=tuple)

    def has_role(self, *names: str) -> bool:
        return any(scope.role in names for scope in self.scopes)

    def scope_regions(self, *names: str) -> list[RegionInfo]:
        """Regions this person acts on in any of the given roles (all roles when none given)."""
        return [s.region for s in self.scopes if not names or s.role in names]

    def can_act_on(self, region: RegionInfo, *role_names: str) -> bool:
        return any(r.contains(region) for r in self.scope_regions(*role_names))

    @property
    def is_staff(self) -> bool:
        return self.has_role(Role.WARDEN, Role.DOCTOR, Role.ADMIN, Role.VOLUNTEER)


# -- scope ---------------------------------------------------------------------------------
# One copy of "may this person act on that region", shared by the REST API and the console.


class RegionNotFound(LookupError):
    """No region has the code asked for."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class OutOfScope(PermissionError):
    """The region exists but lies outside every scope of the caller's roles."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


async def region_in_scope(
    conn: AsyncConnection, person: PersonInfo, code: str, *role_names: str
) -> RegionInfo:
    """The region with ``code`` if ``person`` acts on it in one of ``role_names``; raises
    ``RegionNotFound`` or ``OutOfScope`` otherwise."""
    region = await get_region_by_code(conn, code)
    if region is None:
        raise RegionNotFound(code)
    if not person.can_act_on(region, *role_names):
        raise OutOfScope(code)
    return region


def scope_roots(regions: list[RegionInfo]) -> list[RegionInfo]:
    """Drop repeats and regions that lie under another one of the list.

    A person can hold two roles on one region: those scopes are equal regions that contain each
    other, so compare by id, or both would be dropped.
    """
    unique = list({r.id: r for r in regions}.values())
    return [r for r in unique if not any(o.id != r.id and o.contains(r) for o in unique)]


def sees_full_phone(person: PersonInfo, region: RegionInfo) -> bool:
    """Only the responsible warden sees full phone numbers (minimum necessary)."""
    return person.can_act_on(region, Role.WARDEN)


def new_id(result: Any) -> int:
    """The primary key an INSERT just made."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _region(row: Any) -> RegionInfo:
    return RegionInfo(row.id, row.code, row.name, row.level, row.parent_id, row.path)


def mask_phone(phone: str | None) -> str:
    """``138****5678``: what anyone but the responsible warden sees of a phone number."""
    if not phone:
        return ""
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 7 else "****"


# -- regions -------------------------------------------------------------------------------


async def get_region(conn: AsyncConnection, region_id: int) -> RegionInfo | None:
    row = (await conn.execute(select(regions).where(regions.c.id == region_id))).first()
    return _region(row) if row else None


async def get_region_by_code(conn: AsyncConnection, code: str) -> RegionInfo | None:
    if "\x00" in code:  # no code has one, and PostgreSQL refuses to compare text holding it
        return None
    row = (await conn.execute(select(regions).where(regions.c.code == code))).first()
    return _region(row) if row else None


async def create_region(
    conn: AsyncConnection, *, code: str, name: str, level: str, parent: RegionInfo | None
) -> RegionInfo:
    """Insert a region under ``parent``; the level must be the one right below the parent's."""
    level = RegionLevel(level)
    if parent is None:
        if level is not RegionLevel.CITY:
            raise ValueError(f"a {level} needs a parent region")
    elif LEVEL_ORDER.index(level) != LEVEL_ORDER.index(RegionLevel(parent.level)) + 1:
        raise ValueError(f"a {level} cannot sit under a {parent.level}")
    result = await conn.execute(
        insert(regions).values(
            code=code,
            name=name,
            level=level,
            parent_id=parent.id if parent else None,
            path="",
            settings={},
        )
    )
    region_id = new_id(result)
    path = f"{parent.path if parent else '/'}{region_id}/"
    await conn.execute(update(regions).where(regions.c.id == region_id).values(path=path))
    return RegionInfo(region_id, code, name, level, parent.id if parent else None, path)


async def list_subregions(
    conn: AsyncConnection, root: RegionInfo, *, level: str | None = None
) -> list[RegionInfo]:
    query = select(regions).where(regions.c.path.startswith(root.path)).order_by(regions.c.path)
    if level:
        query = query.where(regions.c.level == level)
    return [_region(row) for row in await conn.execute(query)]


async def region_chain(conn: AsyncConnection, region: RegionInfo) -> list[RegionInfo]:
    """The region and its ancestors, from the region itself up to the city."""
    ids = [int(part) for part in region.path.strip("/").split("/") if part]
    rows = await conn.execute(select(regions).where(regions.c.id.in_(ids)))
    by_id = {row.id: _region(row) for row in rows}
    return [by_id[i] for i in reversed(ids) if i in by_id]


# -- people --------------------------------------------------------------------------------


async def load_person(conn: AsyncConnection, person_id: int) -> PersonInfo | None:
    row = (await conn.execute(_PERSON_QUERY.where(people.c.id == person_id))).first()
    return await _person_from_row(conn, row) if row else None


FoundPerson = tuple[int, datetime | None, PersonInfo]
"""(identity id, when the account was last seen, the person) for a channel account."""


async def person_by_identity(
    conn: AsyncConnection, channel: str, external_id: str
) -> FoundPerson | None:
    """The person behind a channel account: (identity id, last seen, person), in one query."""
    rows = list(
        await conn.execute(_PERSON_BY_IDENTITY, {"channel": channel, "external_id": external_id})
    )
    return _found_person(rows) if rows else None


async def people_by_identities(
    conn: AsyncConnection, channel: str, external_ids: list[str]
) -> dict[str, FoundPerson]:
    """:func:`person_by_identity` for many accounts of one channel in one query, by external
    id; accounts without a person are missing from the result."""
    if not external_ids:
        return {}
    grouped: dict[str, list[Any]] = {}
    params = {"channel": channel, "external_ids": external_ids}
    for row in await conn.execute(_PEOPLE_BY_IDENTITIES[conn.dialect.name], params):
        grouped.setdefault(row[_EXTERNAL_ID], []).append(row)
    known: dict[int, RegionInfo] = {}  # people of a batch mostly share a few regions
    return {external_id: _found_person(rows, known) for external_id, rows in grouped.items()}


def _found_person(rows: list[Any], known: dict[int, RegionInfo] | None = None) -> FoundPerson:
    """One person from their rows of an identify query (one row per role)."""
    known = {} if known is None else known
    first = rows[0]
    scopes = tuple(
        Scope(row[_ROLE], _known_region(known, row, _SCOPE_ID))
        for row in rows
        if row[_ROLE] is not None
    )
    return first[_IDENTITY_ID], first[_LAST_SEEN], _person(first, scopes, known)


_PERSON_QUERY = select(
    people.c.id,
    people.c.name,
    people.c.phone,
    people.c.household_id,
    people.c.opted_out,
    people.c.region_id,
    regions.c.code.label("region_code"),
    regions.c.name.label("region_name"),
    regions.c.level.label("region_level"),
    regions.c.parent_id.label("region_parent_id"),
    regions.c.path.label("region_path"),
).outerjoin(regions, people.c.region_id == regions.c.id)

# Built once: constructing a statement like this costs more than running it.
_SCOPE = regions.alias("scope")
_ROLE_COLUMNS = (
    roles.c.role,
    _SCOPE.c.id.label("scope_id"),
    _SCOPE.c.code.label("scope_code"),
    _SCOPE.c.name.label("scope_name"),
    _SCOPE.c.level.label("scope_level"),
    _SCOPE.c.parent_id.label("scope_parent_id"),
    _SCOPE.c.path.label("scope_path"),
)
"""Each role of the person and the region it is held over, as ``_found_person`` reads them."""
_IDENTIFY = (
    _PERSON_QUERY.add_columns(
        identities.c.id.label("identity_id"), identities.c.last_seen_at, *_ROLE_COLUMNS
    )
    .join(identities, identities.c.person_id == people.c.id)
    .outerjoin(roles, roles.c.person_id == people.c.id)
    .outerjoin(_SCOPE, _SCOPE.c.id == roles.c.scope_region_id)
    .order_by(roles.c.id)
)
_PERSON_BY_IDENTITY = _IDENTIFY.where(
    identities.c.channel == bindparam("channel"),
    identities.c.external_id == bindparam("external_id"),
)
# Many accounts of one channel: on SQLite an IN over the list; on PostgreSQL each account is
# looked up by its unique key (see storage.db.each_of), then joined to the person.
_WANTED = each_of("external_ids")
_IDENTITY = (
    select(
        identities.c.id,
        identities.c.person_id,
        identities.c.last_seen_at,
        identities.c.external_id,
    )
    .where(identities.c.channel == bindparam("channel"), identities.c.external_id == _WANTED.c.key)
    .limit(1)
    .lateral("identity")
)
_PEOPLE_BY_IDENTITIES = {
    "sqlite": _IDENTIFY.add_columns(identities.c.external_id).where(
        identities.c.channel == bindparam("channel"),
        any_of(identities.c.external_id, "external_ids"),
    ),
    "postgresql": select(
        *_PERSON_QUERY.selected_columns,
        _IDENTITY.c.id.label("identity_id"),
        _IDENTITY.c.last_seen_at,
        *_ROLE_COLUMNS,
        _IDENTITY.c.external_id,
    )
    .select_from(
        _WANTED.join(_IDENTITY, true())
        .join(people, people.c.id == _IDENTITY.c.person_id)
        .outerjoin(regions, people.c.region_id == regions.c.id)
        .outerjoin(roles, roles.c.person_id == people.c.id)
        .outerjoin(_SCOPE, _SCOPE.c.id == roles.c.scope_region_id)
    )
    .order_by(roles.c.id),
}

# Rows of these queries are read by position: reading a Row's column by attribute name goes
# through a failed attribute lookup first (about 1 µs a column), which made turning a batch's
# rows into people cost more than running the query.  The positions come from the statements.
_COLUMN_NAMES = list(_PEOPLE_BY_IDENTITIES["sqlite"].selected_columns.keys())
_PERSON_COLUMN_NAMES = list(_PERSON_QUERY.selected_columns.keys())
assert list(_PEOPLE_BY_IDENTITIES["postgresql"].selected_columns.keys()) == _COLUMN_NAMES
assert _COLUMN_NAMES[: len(_PERSON_COLUMN_NAMES)] == _PERSON_COLUMN_NAMES
_REGION_ID, _IDENTITY_ID, _LAST_SEEN, _ROLE, _SCOPE_ID, _EXTERNAL_ID = map(
    _COLUMN_NAMES.index,
    ("region_id", "identity_id", "last_seen_at", "role", "scope_id", "external_id"),
)

_GROUP_BY_ADDRESS = select(groups).where(
    groups.c.channel == bindparam("channel"), groups.c.external_id == bindparam("external_id")
)
_GROUPS_BY_ADDRESS = select(groups).where(
    groups.c.channel == bindparam("channel"), any_of(groups.c.external_id, "external_ids")
)


async def _person_from_row(conn: AsyncConnection, row: Any) -> PersonInfo:
    scope_rows = await conn.execute(
        select(roles.c.role, regions)
        .join(regions, roles.c.scope_region_id == regions.c.id)
        .where(roles.c.person_id == row.id)
        .order_by(roles.c.id)
    )
    return _person(row, tuple(Scope(r.role, _region(r)) for r in scope_rows))


def _person(
    row: Any, scopes: tuple[Scope, ...], known: dict[int, RegionInfo] | None = None
) -> PersonInfo:
    """A person from a row that starts with the columns of ``_PERSON_QUERY``."""
    person_id, name, phone, household_id, opted_out = row[:_REGION_ID]
    region = None
    if row[_REGION_ID] is not None:
        region = _known_region({} if known is None else known, row, _REGION_ID)
    return PersonInfo(person_id, name, phone, region, household_id, opted_out, scopes)


def _known_region(known: dict[int, RegionInfo], row: Any, at: int) -> RegionInfo:
    """The region whose six columns (id, code, name, level, parent id, path) start at
    position ``at`` of ``row``; made once per id in ``known``."""
    region = known.get(row[at])
    if region is None:
        region = known[row[at]] = RegionInfo(*row[at : at + 6])
    return region


async def find_person_by_identity(
    conn: AsyncConnection, channel: str, external_id: str
) -> int | None:
    return (
        await conn.execute(
            select(identities.c.person_id).where(
                identities.c.channel == channel, identities.c.external_id == external_id
            )
        )
    ).scalar()


async def find_people_by_phone(conn: AsyncConnection, phone: str) -> list[int]:
    rows = await conn.execute(select(people.c.id).where(people.c.phone == phone))
    return [r.id for r in rows]


async def create_person(
    conn: AsyncConnection,
    *,
    name: str,
    region_id: int | None,
    phone: str | None = None,
    household_id: int | None = None,
) -> int:
    result = await conn.execute(
        insert(people).values(
            name=name,
            phone=phone,
            region_id=region_id,
            household_id=household_id,
            opted_out=False,
            created_at=utcnow(),
        )
    )
    return new_id(result)


async def grant_role(conn: AsyncConnection, person_id: int, role: str, region_id: int) -> None:
    exists = (
        await conn.execute(
            select(roles.c.id).where(
                roles.c.person_id == person_id,
                roles.c.role == Role(role),
                roles.c.scope_region_id == region_id,
            )
        )
    ).first()
    if not exists:
        await conn.execute(
            insert(roles).values(person_id=person_id, role=role, scope_region_id=region_id)
        )


async def bind_identity(
    conn: AsyncConnection, person_id: int, channel: str, external_id: str, display_name: str = ""
) -> None:
    await conn.execute(
        insert(identities).values(
            person_id=person_id,
            channel=channel,
            external_id=external_id,
            display_name=display_name,
            created_at=utcnow(),
            last_seen_at=utcnow(),
        )
    )


async def set_opted_out(conn: AsyncConnection, person_id: int, opted_out: bool) -> None:
    await conn.execute(update(people).where(people.c.id == person_id).values(opted_out=opted_out))


async def responsible_people(conn: AsyncConnection, region: RegionInfo, role: str) -> list[int]:
    """People holding ``role`` exactly on ``region`` (the grid's warden, a street's admin)."""
    rows = await conn.execute(
        select(roles.c.person_id)
        .where(roles.c.scope_region_id == region.id, roles.c.role == role)
        .order_by(roles.c.id)
    )
    return [r.person_id for r in rows]


async def find_or_create_household(
    conn: AsyncConnection, region_id: int, building: str, door: str
) -> int:
    query = select(households.c.id).where(
        households.c.region_id == region_id,
        households.c.building == building,
        households.c.door == door,
    )
    found = (await conn.execute(query)).scalar()
    if found is not None:
        return int(found)
    result = await conn.execute(
        insert(households).values(region_id=region_id, building=building, door=door)
    )
    return new_id(result)


async def household_label(conn: AsyncConnection, household_id: int | None) -> str:
    if household_id is None:
        return ""
    row = (await conn.execute(select(households).where(households.c.id == household_id))).first()
    if row is None:
        return ""
    return f"{row.building}{row.door}"


async def list_people(
    conn: AsyncConnection, root: RegionInfo, *, limit: int, after_id: int = 0
) -> list[Any]:
    """People living in or responsible for ``root``'s subtree, by id, one page at a time."""
    in_scope = regions.c.path.startswith(root.path)
    query = (
        select(
            people.c.id,
            people.c.name,
            people.c.phone,
            people.c.household_id,
            people.c.opted_out,
            regions.c.code.label("region_code"),
        )
        .join(regions, people.c.region_id == regions.c.id)
        .where(in_scope, people.c.id > after_id)
        .order_by(people.c.id)
        .limit(limit)
    )
    return list(await conn.execute(query))


async def roles_by_person(conn: AsyncConnection, person_ids: list[int]) -> dict[int, list[str]]:
    result: dict[int, list[str]] = {pid: [] for pid in person_ids}
    if not person_ids:
        return result
    rows = await conn.execute(
        select(roles.c.person_id, roles.c.role).where(roles.c.person_id.in_(person_ids))
    )
    for row in rows:
        result[row.person_id].append(row.role)
    return result


async def count_people(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(people))).scalar() or 0)


# -- chat groups ---------------------------------------------------------------------------


async def find_group(conn: AsyncConnection, channel: str, external_id: str) -> Any | None:
    params = {"channel": channel, "external_id": external_id}
    return (await conn.execute(_GROUP_BY_ADDRESS, params)).first()


async def find_groups(
    conn: AsyncConnection, channel: str, external_ids: list[str]
) -> dict[str, Any]:
    """:func:`find_group` for many chats of one channel in one query, by external id."""
    if not external_ids:
        return {}
    params = {"channel": channel, "external_ids": external_ids}
    return {row.external_id: row for row in await conn.execute(_GROUPS_BY_ADDRESS, params)}


async def groups_of_region(conn: AsyncConnection, region_id: int) -> list[Any]:
    return list(
        await conn.execute(
            select(groups).where(groups.c.region_id == region_id).order_by(groups.c.id)
        )
    )


async def create_group(
    conn: AsyncConnection,
    *,
    region_id: int,
    channel: str,
    external_id: str,
    name: str,
    purpose: str = "residents",
    robot_key: str | None = None,
) -> int:
    result = await conn.execute(
        insert(groups).values(
            region_id=region_id,
            channel=channel,
            external_id=external_id,
            name=name,
            purpose=purpose,
            robot_key=robot_key,
        )
    )
    return new_id(result)


# -- conversations -------------------------------------------------------------------------


@dataclass(slots=True)
class ConversationState:
    key: str
    flow: str | None = None
    state: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.flow is not None and (self.expires_at is None or self.expires_at > now)


async def lock_conversation(
    conn: AsyncConnection, key: str, *, row_lock: bool, insert_ignore: Any
) -> ConversationState:
    """Take the per-person lock (a row lock on PostgreSQL), then read the state.

    The row is created when missing so that there is always something to lock.  On SQLite the
    caller already serializes writers (one group-commit lane, ``BEGIN IMMEDIATE``).
    """
    query = select(conversations).where(conversations.c.key == key)
    if row_lock:
        await conn.execute(insert_ignore.values(key=key, data={}, updated_at=utcnow()))
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        return ConversationState(key)
    return ConversationState(key, row.flow, row.state, dict(row.data or {}), row.expires_at)


class CheckedLock:
    """Statements for :meth:`run`: take the per-person lock, read the conversation and a
    scalar subquery ``check`` (the dispatcher's dedupe look-up) in one round trip.  Built once:
    statement construction costs more than execution on the hot path."""

    def __init__(self, check: Any, *, row_lock: bool, insert_ignore: Any) -> None:
        columns = (
            check.label("checked"),
            conversations.c.flow,
            conversations.c.state,
            conversations.c.data,
            conversations.c.expires_at,
        )
        self.row_lock = row_lock
        self.insert = insert_ignore
        if row_lock:
            self.query = (
                select(*columns)
                .where(conversations.c.key == bindparam("key"))
                .with_for_update(of=conversations)
            )
        else:
            wanted = select(bindparam("key", type_=String).label("key")).subquery()
            self.query = select(*columns).select_from(
                wanted.outerjoin(conversations, conversations.c.key == wanted.c.key)
            )

    async def run(
        self, conn: AsyncConnection, key: str, **check_params: Any
    ) -> tuple[ConversationState, Any]:
        if self.row_lock:
            await conn.execute(self.insert, {"key": key, "data": {}, "updated_at": utcnow()})
        row = (await conn.execute(self.query, {"key": key, **check_params})).one()
        if row.flow is None and row.state is None and row.data is None:
            return ConversationState(key), row.checked
        data = dict(row.data or {})
        return ConversationState(key, row.flow, row.state, data, row.expires_at), row.checked


class ConversationLocks:
    """Per-person serialization for a batch of messages: take the locks of many conversation
    keys, then read their states, in one statement.

    On PostgreSQL that statement is an upsert that creates the missing rows and locks them all
    (``ON CONFLICT DO UPDATE`` locks the row it meets, and its ``RETURNING`` gives the row as
    it stands once locked); keys are taken in key order, so two batches that share keys cannot
    deadlock on them.  On SQLite the caller already serializes writers and it is a plain read.
    """

    def __init__(self, *, row_lock: bool) -> None:
        self.row_lock = row_lock
        columns = (
            conversations.c.key,
            conversations.c.flow,
            conversations.c.state,
            conversations.c.data,
            conversations.c.expires_at,
        )
        self.query: Any
        if row_lock:
            wanted = each_of("keys")
            rows = select(
                wanted.c.key,
                literal({}, conversations.c.data.type),
                bindparam("now", type_=conversations.c.updated_at.type),
            ).order_by(wanted.c.key)
            upsert = postgresql.insert(conversations).from_select(
                ["key", "data", "updated_at"], rows
            )
            self.query = upsert.on_conflict_do_update(
                index_elements=["key"], set_={"updated_at": conversations.c.updated_at}
            ).returning(*columns)
        else:
            self.query = select(*columns).where(any_of(conversations.c.key, "keys"))

    async def run(self, conn: AsyncConnection, keys: list[str]) -> dict[str, ConversationState]:
        """Lock the conversations of ``keys`` (creating missing rows) and read them."""
        ordered = sorted(set(keys))
        if not ordered:
            return {}
        params: dict[str, Any] = {"keys": ordered}
        if self.row_lock:
            params["now"] = utcnow()
        states = {key: ConversationState(key) for key in ordered}
        # Unpacked by position: by attribute name a Row costs about 1 µs a column.
        for key, flow, state, data, expires_at in await conn.execute(self.query, params):
            states[key] = ConversationState(key, flow, state, dict(data or {}), expires_at)
        return states


async def save_conversation(
    conn: AsyncConnection, state: ConversationState, *, upsert: Any
) -> None:
    """Write the state; ``upsert`` is the prebuilt ``Database.upsert`` of the table."""
    await conn.execute(
        upsert,
        {
            "key": state.key,
            "flow": state.flow,
            "state": state.state,
            "data": state.data,
            "expires_at": state.expires_at,
            "updated_at": utcnow(),
        },
    )


async def move_conversation(conn: AsyncConnection, old_key: str, new_key: str) -> None:
    """Carry a conversation from an anonymous sender key to the person's key after binding."""
    await conn.execute(conversations.delete().where(conversations.c.key == new_key))
    await conn.execute(
        update(conversations).where(conversations.c.key == old_key).values(key=new_key)
    )


# -- audit ---------------------------------------------------------------------------------


async def record_audit(
    conn: AsyncConnection,
    *,
    actor_id: int | None,
    action: str,
    target_type: str = "",
    target_id: str | int = "",
    region_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit entry (who did or viewed what, where)."""
    await conn.execute(
        insert(audit).values(
            at=utcnow(),
            actor_id=actor_id,
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            region_id=region_id,
            detail=detail or {},
        )
    )


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which audit entries to list: those about regions under ``paths`` or by people living
    there, narrowed by actor, action prefix and a time range ``[since, until)``."""

    paths: tuple[str, ...]
    actor_id: int | None = None
    actor_name: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def list_audit(
    conn: AsyncConnection, f: AuditFilter, *, limit: int, offset: int
) -> tuple[int, list[Any]]:
    """One page of audit entries (newest first) with the actor's name and the region's code,
    and how many match in all."""
    if not f.paths:
        return 0, []
    actor = people.alias("actor")
    actor_home = regions.alias("actor_home")
    where = regions.c.path.startswith(f.paths[0])
    home = actor_home.c.path.startswith(f.paths[0])
    for path in f.paths[1:]:
        where = where | regions.c.path.startswith(path)
        home = home | actor_home.c.path.startswith(path)
    conditions: list[Any] = [where | home]
    if f.actor_id is not None:
        conditions.append(audit.c.actor_id == f.actor_id)
    if f.actor_name:
        conditions.append(actor.c.name == f.actor_name)
    if f.action:
        conditions.append(audit.c.action.startswith(f.action, autoescape=True))
    if f.since is not None:
        conditions.append(audit.c.at >= f.since)
    if f.until is not None:
        conditions.append(audit.c.at < f.until)
    source = (
        audit.outerjoin(regions, regions.c.id == audit.c.region_id)
        .outerjoin(actor, actor.c.id == audit.c.actor_id)
        .outerjoin(actor_home, actor_home.c.id == actor.c.region_id)
    )
    total = (
        await conn.execute(select(func.count()).select_from(source).where(*conditions))
    ).scalar_one()
    rows = await conn.execute(
        select(
            audit,
            actor.c.name.label("actor_name"),
            regions.c.code.label("region_code"),
            regions.c.name.label("region_name"),
        )
        .select_from(source)
        .where(*conditions)
        .order_by(audit.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return int(total), list(rows)
