"""Repository of rumor clarification: knowledge base, questions, review items, deliveries.

Every function takes an open connection (the caller decides the transaction).  Statements that
differ between SQLite and PostgreSQL (``ON CONFLICT``) come from :class:`storage.db.Database`.
Bulk work (notifying everyone who asked, correcting everyone who received a version) reads one
page of person ids at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, case, delete, exists, func, null, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database
from storage.models import Identity, OutboxMessage, Person, Region
from storage.outbox import Target
from storage.rumor_models import (
    Clarification,
    ClarificationHistory,
    ClarificationStatus,
    Delivery,
    DeliveryKind,
    Push,
    Question,
    ReviewItem,
    ReviewStatus,
    RumorKbState,
)

clarifications = Clarification.__table__
history = ClarificationHistory.__table__
questions = Question.__table__
items = ReviewItem.__table__
deliveries = Delivery.__table__
pushes = Push.__table__
kb_state = RumorKbState.__table__
people = Person.__table__
regions = Region.__table__
identities = Identity.__table__
outbox = OutboxMessage.__table__

KB_STATE_ID = 1
REVIEW_GROUPING_LOCK = 0x72756D72  # "rumr": the advisory lock that serializes new review items
CONTENT_FIELDS = (
    "claim",
    "verdict",
    "explanation",
    "source_name",
    "source_url",
    "region_id",
    "expires_at",
)
"""What an edit can change, and what a history row keeps."""
RESIDENT_FIELDS = ("claim", "verdict", "explanation", "source_name", "source_url")
"""What residents read of a clarification (its scope and expiry are not shown)."""


async def _insert(conn: AsyncConnection, table: Table, **values: Any) -> int:
    """Insert one row; its new id."""
    result = await conn.execute(table.insert().values(**values).returning(table.c.id))
    return int(result.scalar_one())


# -- knowledge-base generation ---------------------------------------------------------------


async def read_generation(conn: AsyncConnection) -> int:
    """The knowledge base's generation (0 before any change): one primary-key read."""
    value = (
        await conn.execute(select(kb_state.c.generation).where(kb_state.c.id == KB_STATE_ID))
    ).scalar()
    return int(value or 0)


async def bump_generation(conn: AsyncConnection, db: Database) -> int:
    """Increment the generation (taking its row lock until commit) and return the new value."""
    await conn.execute(db.insert_ignore(kb_state).values(id=KB_STATE_ID, generation=0))
    result = await conn.execute(
        update(kb_state)
        .where(kb_state.c.id == KB_STATE_ID)
        .values(generation=kb_state.c.generation + 1)
        .returning(kb_state.c.generation)
    )
    return int(result.scalar_one())


# -- clarifications --------------------------------------------------------------------------


async def insert_clarification(conn: AsyncConnection, db: Database, **values: Any) -> int:
    generation = await bump_generation(conn, db)
    return await _insert(conn, clarifications, kb_generation=generation, **values)


async def get_clarification(
    conn: AsyncConnection, clarification_id: int, *, for_update: bool = False
) -> Any | None:
    query = select(clarifications).where(clarifications.c.id == clarification_id)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await conn.execute(query)).first()


async def update_clarification(
    conn: AsyncConnection, db: Database, clarification_id: int, **values: Any
) -> None:
    generation = await bump_generation(conn, db)
    await conn.execute(
        update(clarifications)
        .where(clarifications.c.id == clarification_id)
        .values(kb_generation=generation, **values)
    )


async def add_history(
    conn: AsyncConnection, row: Any, *, edited_by: int, replaced_at: datetime
) -> None:
    """Keep the content ``row`` has now (its version) before an edit replaces it."""
    await conn.execute(
        history.insert().values(
            clarification_id=row.id,
            version=row.version,
            status=row.status,
            edited_by=edited_by,
            replaced_at=replaced_at,
            **{name: getattr(row, name) for name in CONTENT_FIELDS},
        )
    )


async def list_history(conn: AsyncConnection, clarification_id: int) -> list[Any]:
    return list(
        await conn.execute(
            select(history)
            .where(history.c.clarification_id == clarification_id)
            .order_by(history.c.version.desc())
        )
    )


def ancestor_paths(path: str) -> list[str]:
    """``"/1/4/9/"`` -> ``["/1/", "/1/4/", "/1/4/9/"]``: the paths of a region and those above."""
    parts = [part for part in path.strip("/").split("/") if part]
    return ["/" + "".join(f"{part}/" for part in parts[: i + 1]) for i in range(len(parts))]


def visible_clause(paths: Sequence[str]) -> Any:
    """Clarifications for everyone, or scoped to a region above, at or below one of ``paths``."""
    above = sorted({a for p in paths for a in ancestor_paths(p)})
    return or_(
        clarifications.c.scope_path.is_(None),
        clarifications.c.scope_path.in_(above),
        *[clarifications.c.scope_path.startswith(p) for p in paths],
    )


async def list_clarifications(
    conn: AsyncConnection,
    *,
    paths: Sequence[str],
    status: str | None,
    limit: int,
    before: int | None,
) -> list[Any]:
    query = select(clarifications).where(visible_clause(paths))
    if status is not None:
        query = query.where(clarifications.c.status == status)
    if before is not None:
        query = query.where(clarifications.c.id < before)
    return list(await conn.execute(query.order_by(clarifications.c.id.desc()).limit(limit)))


async def published(conn: AsyncConnection) -> list[Any]:
    """Every published clarification (to build a match index from)."""
    return list(
        await conn.execute(
            select(clarifications)
            .where(clarifications.c.status == ClarificationStatus.PUBLISHED)
            .order_by(clarifications.c.id)
        )
    )


async def changed_since(conn: AsyncConnection, generation: int) -> list[Any]:
    """Clarifications changed after knowledge-base generation ``generation``."""
    return list(
        await conn.execute(
            select(clarifications)
            .where(clarifications.c.kb_generation > generation)
            .order_by(clarifications.c.kb_generation)
        )
    )


# -- questions and review items --------------------------------------------------------------


async def insert_question(conn: AsyncConnection, **values: Any) -> int:
    return await _insert(conn, questions, **values)


async def get_question(conn: AsyncConnection, question_id: int) -> Any | None:
    return (await conn.execute(select(questions).where(questions.c.id == question_id))).first()


async def update_question(conn: AsyncConnection, question_id: int, **values: Any) -> None:
    await conn.execute(update(questions).where(questions.c.id == question_id).values(**values))


async def recent_open_items(conn: AsyncConnection, *, since: datetime, limit: int) -> list[Any]:
    """Review items still gathering questions, last asked about since ``since``, most recent
    first: pending ones, and those attached to a clarification not yet published (a draft),
    whose askers are told when it is.  ``clarification_id`` is that draft's, else ``None``."""
    drafts = select(clarifications.c.id).where(clarifications.c.status == ClarificationStatus.DRAFT)
    return list(
        await conn.execute(
            select(items.c.id, items.c.text, items.c.clarification_id)
            .where(
                or_(
                    items.c.status == ReviewStatus.PENDING,
                    (items.c.status == ReviewStatus.ATTACHED)
                    & items.c.clarification_id.in_(drafts),
                ),
                items.c.last_asked_at >= since,
            )
            .order_by(items.c.last_asked_at.desc(), items.c.id.desc())
            .limit(limit)
        )
    )


async def insert_item(conn: AsyncConnection, *, text: str, sample: str, now: datetime) -> int:
    return await _insert(
        conn,
        items,
        text=text,
        sample=sample,
        ask_count=1,
        asker_count=1,
        first_asked_at=now,
        last_asked_at=now,
        status=ReviewStatus.PENDING,
    )


async def lock_review_grouping(conn: AsyncConnection) -> None:
    """Serialize "find a near-identical pending item, else create one" until commit.

    Near-identical is a similarity, not an equality, so no unique key can stop two
    transactions from each creating an item for the same claim.  On PostgreSQL a
    transaction-level advisory lock on one fixed key does, across processes; it is released by
    the commit that makes the new item visible to the next holder.  SQLite write transactions
    start with ``BEGIN IMMEDIATE`` (one writer at a time, across processes), so there the
    serialization already holds.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": REVIEW_GROUPING_LOCK}
        )


async def count_into_item(
    conn: AsyncConnection,
    item_id: int,
    *,
    draft_id: int | None = None,
    person_id: int,
    now: datetime,
) -> bool:
    """One more question in the item (call before the question row is written); False, and
    nothing counted, when the item is not open any more: a reviewer closed it meanwhile, or
    (``draft_id``: the item is attached to that draft) the draft was published or deleted.

    A question joining a draft's item holds the draft's row in share mode until commit
    (PostgreSQL): publishing, which locks the row for update, waits for it and then tells
    this asker too, or has committed first and the question is not counted here.
    """
    if draft_id is not None:
        query = select(clarifications.c.status).where(clarifications.c.id == draft_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(read=True)
        if (await conn.execute(query)).scalar() != ClarificationStatus.DRAFT:
            return False
        still_open: Any = (items.c.status == ReviewStatus.ATTACHED) & (
            items.c.clarification_id == draft_id
        )
    else:
        still_open = items.c.status == ReviewStatus.PENDING
    asked_before = (
        await conn.execute(
            select(
                exists().where(
                    questions.c.review_item_id == item_id, questions.c.person_id == person_id
                )
            )
        )
    ).scalar()
    result = await conn.execute(
        update(items)
        .where(items.c.id == item_id, still_open)
        .values(
            ask_count=items.c.ask_count + 1,
            asker_count=items.c.asker_count + (0 if asked_before else 1),
            last_asked_at=now,
        )
    )
    return bool(result.rowcount)


def _living_under(scope_path: str) -> Any:
    """The ids of people living in the region at ``scope_path`` or below it."""
    return (
        select(people.c.id)
        .join(regions, regions.c.id == people.c.region_id)
        .where(regions.c.path.startswith(scope_path))
    )


async def split_off_outside(
    conn: AsyncConnection, item_id: int, *, scope_path: str, now: datetime
) -> int | None:
    """Move the questions of review item ``item_id`` asked by people not living under
    ``scope_path`` to a new pending item (same claim text, its own counts), and take them off
    the item's counts; the new item's id, or ``None`` when every asker lives there.  Call with
    the item locked (it is being attached).

    An item answered with a clarification for one region keeps only the askers it will
    tell; the others stay in review, for an admin of where they live.
    """
    moved = list(
        await conn.execute(
            select(questions.c.id, questions.c.person_id, questions.c.asked_at).where(
                questions.c.review_item_id == item_id,
                questions.c.person_id.not_in(_living_under(scope_path)),
            )
        )
    )
    if not moved:
        return None
    item = (await conn.execute(select(items).where(items.c.id == item_id))).one()
    askers = len({q.person_id for q in moved})
    new_id = await _insert(
        conn,
        items,
        text=item.text,
        sample=item.sample,
        ask_count=len(moved),
        asker_count=askers,
        first_asked_at=min(q.asked_at for q in moved),
        last_asked_at=max(q.asked_at for q in moved),
        status=ReviewStatus.PENDING,
    )
    await conn.execute(
        update(questions)
        .where(questions.c.id.in_([q.id for q in moved]))
        .values(review_item_id=new_id)
    )
    await conn.execute(
        update(items)
        .where(items.c.id == item_id)
        .values(
            ask_count=max(item.ask_count - len(moved), 0),
            asker_count=max(item.asker_count - askers, 0),
        )
    )
    return new_id


def _asked_in(paths: Sequence[str]) -> Any:
    """Some question of the item was asked by a person living under one of ``paths``."""
    asker_regions = select(regions.c.id).where(or_(*[regions.c.path.startswith(p) for p in paths]))
    return exists().where(
        questions.c.review_item_id == items.c.id, questions.c.region_id.in_(asker_regions)
    )


async def list_items(
    conn: AsyncConnection, *, paths: Sequence[str], status: str, limit: int, offset: int
) -> list[Any]:
    """Review items asked about in ``paths``: most askers first, then most questions."""
    return list(
        await conn.execute(
            select(items)
            .where(items.c.status == status, _asked_in(paths))
            .order_by(
                items.c.asker_count.desc(),
                items.c.ask_count.desc(),
                items.c.last_asked_at.desc(),
                items.c.id,
            )
            .limit(limit)
            .offset(offset)
        )
    )


async def get_item(conn: AsyncConnection, item_id: int, *, for_update: bool = False) -> Any | None:
    query = select(items).where(items.c.id == item_id)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await conn.execute(query)).first()


async def item_in_scope(conn: AsyncConnection, item_id: int, paths: Sequence[str]) -> bool:
    if not paths:
        return False
    found = await conn.execute(select(items.c.id).where(items.c.id == item_id, _asked_in(paths)))
    return found.first() is not None


async def resolve_item(
    conn: AsyncConnection,
    item_id: int,
    *,
    status: str,
    clarification_id: int | None,
    by: int,
    now: datetime,
) -> bool:
    """Move a pending item to ``status``; False when it was not pending any more."""
    result = await conn.execute(
        update(items)
        .where(items.c.id == item_id, items.c.status == ReviewStatus.PENDING)
        .values(status=status, clarification_id=clarification_id, resolved_by=by, resolved_at=now)
    )
    return bool(result.rowcount)


# -- deliveries ------------------------------------------------------------------------------


async def record_delivery(
    conn: AsyncConnection,
    db: Database,
    *,
    clarification_id: int,
    person_ids: Sequence[int],
    version: int,
    kind: str,
    now: datetime,
) -> None:
    """Note that these people have received ``version`` (insert, or raise their version)."""
    if not person_ids:
        return
    stmt = db.upsert(deliveries, ["clarification_id", "person_id"], ["version", "kind", "last_at"])
    await conn.execute(
        stmt,
        [
            {
                "clarification_id": clarification_id,
                "person_id": pid,
                "version": version,
                "kind": kind,
                "first_at": now,
                "last_at": now,
            }
            for pid in person_ids
        ],
    )


async def askers_to_notify(
    conn: AsyncConnection,
    clarification_id: int,
    *,
    scope_path: str | None,
    after: int,
    limit: int,
) -> list[int]:
    """People who asked about a claim attached to the clarification and have not received it.

    Only people living under ``scope_path`` when the clarification is scoped; one page of ids
    above ``after``, ascending.
    """
    attached = select(items.c.id).where(
        items.c.clarification_id == clarification_id, items.c.status == ReviewStatus.ATTACHED
    )
    received = exists().where(
        deliveries.c.clarification_id == clarification_id,
        deliveries.c.person_id == questions.c.person_id,
    )
    query = (
        select(questions.c.person_id)
        .where(
            questions.c.review_item_id.in_(attached),
            questions.c.person_id > after,
            ~received,
        )
        .group_by(questions.c.person_id)
        .order_by(questions.c.person_id)
        .limit(limit)
    )
    if scope_path is not None:
        query = query.where(questions.c.person_id.in_(_living_under(scope_path)))
    return [row.person_id for row in await conn.execute(query)]


async def versions_reading_alike(conn: AsyncConnection, row: Any) -> list[int]:
    """Earlier versions of clarification ``row`` that residents read exactly as its current
    one (an edit changed only its scope or expiry since)."""
    rows = await conn.execute(
        select(history.c.version).where(
            history.c.clarification_id == row.id,
            *[history.c[name] == getattr(row, name) for name in RESIDENT_FIELDS],
        )
    )
    return [r.version for r in rows]


async def earlier_recipients(
    conn: AsyncConnection,
    clarification_id: int,
    *,
    version: int,
    alike: Sequence[int] = (),
    after: int,
    limit: int,
) -> list[int]:
    """People who received a version of the clarification older than ``version`` (other than
    the versions ``alike``, which read the same) and were not told it was withdrawn since
    (one page)."""
    query = select(deliveries.c.person_id).where(
        deliveries.c.clarification_id == clarification_id,
        deliveries.c.version < version,
        deliveries.c.kind != DeliveryKind.WITHDRAWN,
        deliveries.c.person_id > after,
    )
    if alike:
        query = query.where(deliveries.c.version.not_in(list(alike)))
    rows = await conn.execute(query.order_by(deliveries.c.person_id).limit(limit))
    return [row.person_id for row in rows]


async def recipients(
    conn: AsyncConnection,
    clarification_id: int,
    *,
    after: int,
    limit: int,
    kind: DeliveryKind | None = None,
) -> list[int]:
    """People who received any version of the clarification, or only those whose last
    delivery was of ``kind`` (one page of ids above ``after``, ascending)."""
    query = select(deliveries.c.person_id).where(
        deliveries.c.clarification_id == clarification_id, deliveries.c.person_id > after
    )
    if kind is not None:
        query = query.where(deliveries.c.kind == kind)
    rows = await conn.execute(query.order_by(deliveries.c.person_id).limit(limit))
    return [row.person_id for row in rows]


async def current_targets(conn: AsyncConnection, person_ids: Sequence[int]) -> dict[int, Target]:
    """The channel account each person was last seen on (as ``outbox.person_target`` picks it),
    for one page of people in one query; opted-out and unreachable people are left out."""
    if not person_ids:
        return {}
    rows = await conn.execute(
        select(
            identities.c.person_id,
            identities.c.channel,
            identities.c.external_id,
            identities.c.last_seen_at,
            identities.c.id,
        )
        .join(people, people.c.id == identities.c.person_id)
        .where(identities.c.person_id.in_(list(person_ids)), people.c.opted_out.is_(False))
    )
    best: dict[int, tuple[Any, Any]] = {}
    for row in rows:
        rank = (row.last_seen_at is not None, row.last_seen_at or datetime.min, row.id)
        current = best.get(row.person_id)
        if current is None or rank > current[0]:
            best[row.person_id] = (rank, row)
    return {pid: Target(row.channel, "user", row.external_id) for pid, (_, row) in best.items()}


# -- pushes ----------------------------------------------------------------------------------


async def insert_push(conn: AsyncConnection, **values: Any) -> int:
    return await _insert(conn, pushes, **values)


async def list_pushes(conn: AsyncConnection, clarification_id: int) -> list[Any]:
    return list(
        await conn.execute(
            select(pushes)
            .where(pushes.c.clarification_id == clarification_id)
            .order_by(pushes.c.id)
        )
    )


# -- report ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AskedCount:
    """Questions about one claim in a period: all of them (``region_path`` ``None``), or those
    from one asker region."""

    clarification_id: int | None
    item_id: int | None
    region_path: str | None
    asks: int
    people: int


async def asked_counts(
    conn: AsyncConnection, *, paths: Sequence[str], since: datetime, until: datetime
) -> tuple[list[AskedCount], list[AskedCount]]:
    """Questions asked from under ``paths`` in ``[since, until)``: per claim, and per claim and
    asker region.  People are counted distinct within each group, so one person who asked
    about a claim twice (before and after it was verified, or from two review items) is one.

    A claim is the clarification a question was answered with (directly, by choice, or through
    its review item once attached), else its review item.  Questions only shown suggestions are
    not counted.
    """
    item = items.alias("item")
    claim_id = func.coalesce(questions.c.clarification_id, item.c.clarification_id)
    item_id = case((claim_id.is_(None), questions.c.review_item_id), else_=null())
    source = questions.outerjoin(item, item.c.id == questions.c.review_item_id).join(
        regions, regions.c.id == questions.c.region_id
    )
    where = (
        questions.c.asked_at >= since,
        questions.c.asked_at < until,
        or_(*[regions.c.path.startswith(p) for p in paths]),
        or_(questions.c.clarification_id.isnot(None), questions.c.review_item_id.isnot(None)),
    )
    asks = func.count().label("asks")
    people = func.count(func.distinct(questions.c.person_id)).label("people")
    keys = (claim_id.label("clarification_id"), item_id.label("item_id"))
    per_claim = await conn.execute(
        select(*keys, asks, people).select_from(source).where(*where).group_by(claim_id, item_id)
    )
    per_region = await conn.execute(
        select(*keys, regions.c.path, asks, people)
        .select_from(source)
        .where(*where)
        .group_by(claim_id, item_id, regions.c.path)
    )

    def count(row: Any, path: str | None) -> AskedCount:
        return AskedCount(
            clarification_id=row.clarification_id,
            item_id=row.item_id,
            region_path=path,
            asks=int(row.asks),
            people=int(row.people),
        )

    return [count(r, None) for r in per_claim], [count(r, r.path) for r in per_region]


async def clarification_heads(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, Any]:
    if not ids:
        return {}
    rows = await conn.execute(
        select(
            clarifications.c.id,
            clarifications.c.claim,
            clarifications.c.verdict,
            clarifications.c.status,
        ).where(clarifications.c.id.in_(list(ids)))
    )
    return {row.id: row for row in rows}


async def item_heads(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, Any]:
    if not ids:
        return {}
    rows = await conn.execute(
        select(items.c.id, items.c.sample, items.c.status).where(items.c.id.in_(list(ids)))
    )
    return {row.id: row for row in rows}


# -- retention -------------------------------------------------------------------------------


async def purge_rumors(conn: AsyncConnection, *, cutoff: datetime) -> dict[str, int]:
    """Delete residents' questions (their texts are personal data) asked before ``cutoff``.

    Review items keep their counts and sample; deliveries keep who received which version,
    without any text, so that corrections still reach them.
    """
    result = await conn.execute(delete(questions).where(questions.c.asked_at < cutoff))
    return {"rumor_questions": int(result.rowcount or 0)}
