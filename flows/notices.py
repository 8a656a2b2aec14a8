"""Notices (通知): wardens and admins reach the groups and residents of their regions.

A notice is validated (sender's role and scope, text, regions, time), stored, and at its time
queued into the outbox: one row per recipient and per group chat, by ``INSERT ... SELECT`` in
pages (see ``storage.notices``).  Until then a scheduled notice can be edited or cancelled.
Non-urgent notices that fall in the quiet hours wait until they end: a scheduled one stays
scheduled until then, one queued in them gets rows due at their end.  Texts longer than a
channel allows are split into numbered parts (the table below, overridable in config).
Recipients acknowledge with "收到" or the notice's short code; in a group chat one member's
acknowledgement counts for the group.  Everything a sender does is audited.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from flows.notice_input import NoticeInputError
from flows.refusals import Refused
from flows.texts import Texts
from storage import notices as store
from storage import repo
from storage.db import Database
from storage.models import Role
from storage.notices import AudienceFilter, Receipt, RowTiming, TextPlan
from storage.notices_models import NoticeStatus

SENDER_ROLES = (Role.WARDEN, Role.ADMIN)
KNOWN_ROLES = tuple(role.value for role in Role)
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 4
CODE_PATTERN = re.compile(rf"^(?=.*[A-Z])(?=.*\d)[{CODE_ALPHABET}]{{{CODE_LENGTH}}}$")
HEAD_CHARS = 20
MAX_REGION_NAMES = 3
MAX_AHEAD = timedelta(days=366)
"""How far ahead a notice may be scheduled (a later time is a typo, and year 9999 overflows)."""


# -- channel length limits -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limit:
    """The longest text one message may carry on a channel, in characters or UTF-8 bytes."""

    size: int
    unit: Literal["chars", "bytes"] = "chars"

    def measure(self, text: str) -> int:
        return len(text.encode()) if self.unit == "bytes" else len(text)


CHANNEL_LIMITS: dict[str, Limit] = {
    "sim": Limit(10_000),  # the simulator page; same bound as the bridge
    "bridge": Limit(10_000),  # bridge.MAX_TEXT
    "wecom": Limit(2048, "bytes"),  # app message / app chat text content
    "wecom:robot": Limit(2048, "bytes"),  # group robot webhook text content
    "wechat_mp": Limit(2048, "bytes"),  # customer-service text message
}
"""Per channel (``channel`` or ``channel:kind``); ``notices.max_length`` in config overrides."""
DEFAULT_LIMIT = Limit(2000)
"""Any channel not in the table."""


def channel_limits(overrides: dict[str, int]) -> dict[str, Limit]:
    """The table with config overrides applied (an override keeps the channel's unit)."""
    limits = dict(CHANNEL_LIMITS)
    for key, size in overrides.items():
        known = limits.get(key) or limits.get(key.partition(":")[0]) or DEFAULT_LIMIT
        limits[key] = Limit(size, known.unit)
    return limits


def limit_for(limits: dict[str, Limit], channel: str, kind: str) -> Limit:
    """A target's limit: its ``channel:kind`` entry, else its channel's, else the default (the
    same choice as a notice's text plan makes)."""
    return limits.get(f"{channel}:{kind}") or limits.get(channel) or DEFAULT_LIMIT


def part_labeller(texts: Texts) -> Callable[[int, int], str]:
    """The label that starts each part of a split text: "（1/3）" and a line break."""

    def label(number: int, total: int) -> str:
        return texts.render("notices/part_label", number=number, total=total) + "\n"

    return label


_BREAKS = "\n。！？；!?;"


def _fitting_prefix(text: str, budget: int, limit: Limit) -> int:
    """Length of the longest prefix of ``text`` within ``budget`` (at least one character)."""
    if limit.unit == "chars":
        return max(1, min(len(text), budget))
    used = 0
    for index, char in enumerate(text):
        used += len(char.encode())
        if used > budget:
            return max(1, index)
    return len(text)


def split_text(text: str, limit: Limit, label: Callable[[int, int], str]) -> tuple[str, ...]:
    """The text as one message, or as numbered parts that each fit ``limit``.

    Parts break at a line end or a sentence end when one lies in the last third of a part.
    """
    if limit.measure(text) <= limit.size:
        return (text,)
    budget = max(1, limit.size - limit.measure(label(99, 99)))
    chunks: list[str] = []
    rest = text
    while rest:
        if limit.measure(rest) <= budget:
            chunks.append(rest)
            break
        cut = _fitting_prefix(rest, budget, limit)
        best = max(rest.rfind(mark, 0, cut) for mark in _BREAKS)
        if best >= cut * 2 // 3:
            cut = best + 1
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    return tuple(label(i + 1, len(chunks)) + chunk for i, chunk in enumerate(chunks))


def text_plan(text: str, limits: dict[str, Limit], texts: Texts) -> TextPlan:
    """How ``text`` goes out on each channel of the table (and on any other)."""
    label = part_labeller(texts)
    return TextPlan(
        base=split_text(text, DEFAULT_LIMIT, label),
        variants=tuple((key, split_text(text, lim, label)) for key, lim in limits.items()),
    )


# -- refusals ------------------------------------------------------------------------------


class NoticeRefused(Refused):
    """Bad input or a forbidden action: the template ``notices/refused/<reason>`` says why.

    ``http_status`` is what the API answers with.
    """

    feature = "notices"

    @classmethod
    def from_input(cls, error: NoticeInputError) -> NoticeRefused:
        return cls(error.reason, 400, **error.values)


# -- drafts: validation --------------------------------------------------------------------


@dataclass(frozen=True)
class Draft:
    """A validated notice, not stored yet."""

    text: str
    regions: tuple[repo.RegionInfo, ...]
    groups: bool
    individuals: bool
    roles: tuple[str, ...]
    status: str | None
    ack_required: bool
    urgent: bool
    send_at: datetime | None
    """UTC; ``None`` means now."""

    def audience_json(self) -> dict[str, Any]:
        return {
            "region_ids": [r.id for r in self.regions],
            "region_codes": [r.code for r in self.regions],
            "groups": self.groups,
            "individuals": self.individuals,
            "roles": list(self.roles),
            "status": self.status,
        }


def check_sender(person: repo.PersonInfo | None) -> repo.PersonInfo:
    if person is None or not person.has_role(*SENDER_ROLES):
        raise NoticeRefused("not_allowed", 403)
    return person


def sender_scopes(person: repo.PersonInfo) -> list[repo.RegionInfo]:
    """The regions a warden or admin may send to (without regions nested in another)."""
    regions = list({r.id: r for r in person.scope_regions(*SENDER_ROLES)}.values())
    return [r for r in regions if not any(o.id != r.id and o.contains(r) for o in regions)]


def clean_text(text: str) -> str:
    """The text as it may be stored and sent: NFC, line ends as "\\n", and no other control
    characters (a NUL cannot be stored in PostgreSQL text, and none means anything in a
    chat message)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc").strip()


def check_text(text: Any, max_chars: int) -> str:
    cleaned = clean_text(text) if isinstance(text, str) else ""
    if not cleaned:
        raise NoticeRefused("empty_text")
    if len(cleaned) > max_chars:
        raise NoticeRefused("too_long", limit=max_chars, length=len(cleaned))
    return cleaned


def check_send_at(send_at: datetime | None, now: datetime) -> datetime | None:
    """A time in the future (UTC), at most :data:`MAX_AHEAD` away, or ``None`` for now; a
    past time or one too far ahead is refused."""
    if send_at is None:
        return None
    if send_at <= now:
        raise NoticeRefused("past_time", when=send_at)
    if send_at - now > MAX_AHEAD:
        raise NoticeRefused("too_far", days=MAX_AHEAD.days)
    return send_at.astimezone(UTC)


async def resolve_regions(
    conn: AsyncConnection, person: repo.PersonInfo, words: Sequence[str], *, whole_scope: bool
) -> tuple[repo.RegionInfo, ...]:
    """Regions named by code (any case) or exact name, each inside the sender's scope."""
    found: dict[int, repo.RegionInfo] = {}
    if whole_scope:
        found.update({r.id: r for r in sender_scopes(person)})
    for word in words:
        region = await repo.get_region_by_code(conn, word)
        if region is None and word.upper() != word:
            region = await repo.get_region_by_code(conn, word.upper())
        if region is None:
            region = await _region_by_name(conn, person, word)
        if region is None:
            raise NoticeRefused("unknown_region", code=word)
        if not person.can_act_on(region, *SENDER_ROLES):
            raise NoticeRefused("out_of_scope", 403, code=word, region_name=region.name)
        found[region.id] = region
    if not found:
        raise NoticeRefused("no_regions")
    # A region inside another one of the list adds nobody.
    regions = list(found.values())
    return tuple(r for r in regions if not any(o.id != r.id and o.contains(r) for o in regions))


async def _region_by_name(
    conn: AsyncConnection, person: repo.PersonInfo, name: str
) -> repo.RegionInfo | None:
    if "\x00" in name:  # no name has one, and PostgreSQL refuses to compare text holding it
        return None
    rows = list(
        await conn.execute(repo.regions.select().where(repo.regions.c.name == name).limit(5))
    )
    candidates = [repo.RegionInfo(r.id, r.code, r.name, r.level, r.parent_id, r.path) for r in rows]
    inside = [r for r in candidates if person.can_act_on(r, *SENDER_ROLES)]
    if len(inside) > 1:
        raise NoticeRefused("ambiguous_region", code=name)
    if inside:
        return inside[0]
    return candidates[0] if candidates else None


async def validate(
    conn: AsyncConnection,
    person: repo.PersonInfo | None,
    *,
    text: Any,
    region_words: Sequence[str],
    whole_scope: bool = False,
    groups: bool = True,
    individuals: bool = True,
    roles: Sequence[str] = (),
    status: str | None = None,
    ack_required: bool = False,
    urgent: bool = False,
    send_at: datetime | None = None,
    now: datetime,
    max_chars: int,
) -> Draft:
    """Check everything about a notice before anything is stored; raises ``NoticeRefused``."""
    sender = check_sender(person)
    cleaned = check_text(text, max_chars)
    for role in roles:
        if role not in KNOWN_ROLES:
            raise NoticeRefused("unknown_role", role=role)
    if status is not None and status not in store.STATUS_FILTERS:
        raise NoticeRefused("unknown_status", status=status)
    if status is not None or roles:
        groups = False  # a filter on people cannot apply to a group chat
    if not groups and not individuals:
        raise NoticeRefused("nothing_to_send")
    regions = await resolve_regions(conn, sender, region_words, whole_scope=whole_scope)
    return Draft(
        text=cleaned,
        regions=regions,
        groups=groups,
        individuals=individuals,
        roles=tuple(dict.fromkeys(roles)),
        status=status,
        ack_required=ack_required,
        urgent=urgent,
        send_at=check_send_at(send_at, now),
    )


# -- quiet hours ---------------------------------------------------------------------------


def _clock(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def quiet_until(moment: datetime, settings: Any) -> datetime | None:
    """When the quiet hours around ``moment`` end (UTC), or ``None`` outside them."""
    config = settings.notices
    start, end = _clock(config.quiet_start), _clock(config.quiet_end)
    if not config.quiet_hours or start == end:
        return None
    local = moment.astimezone(settings.tz)
    now = local.time().replace(tzinfo=None)
    if start < end:
        if not start <= now < end:
            return None
        day = local.date()
    else:
        if end <= now < start:
            return None
        day = local.date() if now < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=settings.tz).astimezone(UTC)


def delivery_time(moment: datetime, *, urgent: bool, settings: Any) -> datetime:
    """When rows written at ``moment`` may go out: then, or when the quiet hours end."""
    if urgent:
        return moment
    return quiet_until(moment, settings) or moment


# -- content -------------------------------------------------------------------------------


def local_label(moment: datetime, settings: Any) -> str:
    local = moment.astimezone(settings.tz)
    return f"{local.month}月{local.day}日 {local:%H:%M}"


def region_label(names: Sequence[str]) -> str:
    if len(names) <= MAX_REGION_NAMES:
        return "、".join(names)
    return "、".join(names[:MAX_REGION_NAMES]) + f"等{len(names)}个区域"


def render_notice(
    texts: Texts,
    *,
    text: str,
    code: str,
    sender: repo.PersonInfo,
    region_names: Sequence[str],
    when: str,
    ack_required: bool,
    urgent: bool,
    for_group: bool,
) -> str:
    """The notice as its recipients read it (sender, region and time around the text)."""
    return texts.render(
        "notices/notice",
        text=text,
        code=code,
        sender=sender.name,
        sender_role="管理员" if sender.has_role(Role.ADMIN) else "网格员",
        region=region_label(region_names),
        when=when,
        ack_required=ack_required,
        urgent=urgent,
        for_group=for_group,
    )


async def new_code(conn: AsyncConnection) -> str:
    """A short code no other notice has: four letters and digits, never 0/O or 1/I/L."""
    while True:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        if CODE_PATTERN.match(code) and not await store.code_taken(conn, code):
            return code


def common_path(regions: Sequence[repo.RegionInfo]) -> str:
    """Path of the smallest region that holds all of ``regions``."""
    parts = [r.path.strip("/").split("/") for r in regions]
    shared: list[str] = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        shared.append(column[0])
    return "/" + "".join(p + "/" for p in shared)


# -- storing and queuing -------------------------------------------------------------------


@dataclass(frozen=True)
class Created:
    notice_id: int
    code: str
    send_at: datetime
    deliver_at: datetime
    people: int
    groups: int


async def audience_filter(
    conn: AsyncConnection, notice: Any, settings: Any, today_at: datetime
) -> AudienceFilter:
    audience = notice.audience
    region_rows = [await repo.get_region(conn, rid) for rid in audience["region_ids"]]
    return AudienceFilter(
        paths=tuple(r.path for r in region_rows if r is not None),
        groups=bool(audience["groups"]),
        individuals=bool(audience["individuals"]),
        roles=tuple(audience.get("roles") or ()),
        status=audience.get("status"),
        today=today_at.astimezone(settings.tz).date(),
        exclude_person_id=notice.sender_id,
        group_purposes=tuple(settings.notices.group_purposes),
    )


def draft_filter(draft: Draft, sender_id: int, settings: Any, now: datetime) -> AudienceFilter:
    return AudienceFilter(
        paths=tuple(r.path for r in draft.regions),
        groups=draft.groups,
        individuals=draft.individuals,
        roles=draft.roles,
        status=draft.status,
        today=(draft.send_at or now).astimezone(settings.tz).date(),
        exclude_person_id=sender_id,
        group_purposes=tuple(settings.notices.group_purposes),
    )


async def count_draft(
    conn: AsyncConnection, draft: Draft, sender_id: int, settings: Any, now: datetime
) -> tuple[int, int]:
    return await store.count_audience(conn, draft_filter(draft, sender_id, settings, now))


async def create_notice(
    conn: AsyncConnection,
    sender: repo.PersonInfo,
    draft: Draft,
    *,
    settings: Any,
    now: datetime,
    code: str | None = None,
    via: str,
) -> Created:
    """Store a validated notice (scheduled; for now when ``send_at`` is ``None``) and audit it."""
    if code is None or await store.code_taken(conn, code):
        code = await new_code(conn)
    send_at = draft.send_at or now
    path = common_path(draft.regions)
    people, groups = await count_draft(conn, draft, sender.id, settings, now)
    notice_id = await store.insert_notice(
        conn,
        code=code,
        sender_id=sender.id,
        text=draft.text,
        audience=draft.audience_json(),
        scope_path=path,
        ack_required=draft.ack_required,
        urgent=draft.urgent,
        status=NoticeStatus.SCHEDULED,
        send_at=send_at,
        created_at=now,
        updated_at=now,
        queue_cursor=0,
        groups_queued=False,
        resend_count=0,
    )
    await repo.record_audit(
        conn,
        actor_id=sender.id,
        action="notice.create",
        target_type="notice",
        target_id=notice_id,
        region_id=_region_id_of(path),
        detail={
            "code": code,
            "via": via,
            "regions": [r.code for r in draft.regions],
            "groups": draft.groups,
            "individuals": draft.individuals,
            "roles": list(draft.roles),
            "status": draft.status,
            "ack_required": draft.ack_required,
            "urgent": draft.urgent,
            "send_at": send_at.isoformat(),
            "people": people,
            "group_chats": groups,
        },
    )
    return Created(
        notice_id,
        code,
        send_at,
        delivery_time(max(send_at, now), urgent=draft.urgent, settings=settings),
        people,
        groups,
    )


def _region_id_of(path: str) -> int | None:
    parts = [p for p in path.strip("/").split("/") if p]
    return int(parts[-1]) if parts else None


@dataclass(frozen=True)
class QueueWork:
    """A notice being queued by this process: what its pages share, and the steps.

    Each step is idempotent (outbox keys) and records its progress on the notice, so the steps
    may run in one transaction (a small notice, inline) or one transaction each (the job), and
    a process that takes over after a crash continues from the last committed step.
    """

    notice: Any
    audience: AudienceFilter
    people_plan: TextPlan
    group_plan: TextPlan
    timing: RowTiming
    rendered: str
    page_size: int
    lease: timedelta

    async def people_page(
        self, conn: AsyncConnection, after_id: int, *, now: datetime
    ) -> int | None:
        """Queue the recipients after person ``after_id``, one page; the new cursor, or
        ``None`` when everyone is queued."""
        if not self.audience.individuals:
            return None
        last = await store.queue_people_page(
            conn,
            self.notice.id,
            self.audience,
            self.people_plan,
            self.timing,
            after_id=after_id,
            page_size=self.page_size,
        )
        if last is not None:
            await store.save_progress(
                conn, self.notice.id, cursor=last, lease_until=now + self.lease
            )
        return last

    async def group_rows(self, conn: AsyncConnection, *, now: datetime) -> None:
        """Queue the group chats (once)."""
        if not self.audience.groups or self.notice.groups_queued:
            return
        await store.queue_groups(conn, self.notice.id, self.audience, self.group_plan, self.timing)
        await store.save_progress(
            conn, self.notice.id, groups_done=True, lease_until=now + self.lease
        )

    async def finish(self, conn: AsyncConnection, *, now: datetime) -> None:
        await store.finish_queuing(conn, self.notice.id, now)
        await repo.record_audit(
            conn,
            actor_id=None,
            action="notice.queued",
            target_type="notice",
            target_id=self.notice.id,
            region_id=_region_id_of(self.notice.scope_path),
            detail={"code": self.notice.code, "deliver_at": self.timing.not_before.isoformat()},
        )


async def start_queuing(
    conn: AsyncConnection, notice_id: int, *, texts: Texts, settings: Any, now: datetime
) -> QueueWork | None:
    """Take a due notice for queuing (or take over one whose process died).

    Renders the text the recipients get (sender, regions, time around it, split per channel
    where a channel's limit is smaller) and fixes when the rows are due: the send time, or the
    end of the quiet hours for a non-urgent notice.  ``None`` when the notice is not due or
    another process holds it.
    """
    lease = timedelta(seconds=settings.notices.lease_s)
    notice = await store.take_lease(conn, notice_id, now=now, until=now + lease)
    if notice is None:
        return None
    sender = await repo.load_person(conn, notice.sender_id)
    if sender is None:
        raise LookupError(f"sender {notice.sender_id} of notice {notice.id} is gone")
    region_rows = [await repo.get_region(conn, rid) for rid in notice.audience["region_ids"]]
    names = [r.name for r in region_rows if r is not None]
    limits = channel_limits(settings.notices.max_length)
    rendered = {
        for_group: render_notice(
            texts,
            text=notice.text,
            code=notice.code,
            sender=sender,
            region_names=names,
            when=local_label(notice.send_at, settings),
            ack_required=notice.ack_required,
            urgent=notice.urgent,
            for_group=for_group,
        )
        for for_group in (False, True)
    }
    await store.set_rendered(conn, notice_id, rendered[False])
    start = max(notice.send_at, now)
    return QueueWork(
        notice=notice,
        audience=await audience_filter(conn, notice, settings, start),
        people_plan=text_plan(rendered[False], limits, texts),
        group_plan=text_plan(rendered[True], limits, texts),
        timing=RowTiming(
            not_before=delivery_time(start, urgent=notice.urgent, settings=settings),
            part_gap_s=settings.notices.part_gap_s,
            created_at=now,
        ),
        rendered=rendered[False],
        page_size=settings.notices.queue_page_size,
        lease=lease,
    )


async def queue_notice_inline(
    conn: AsyncConnection, notice_id: int, *, texts: Texts, settings: Any, now: datetime
) -> bool:
    """Queue a due notice completely inside the caller's transaction (small audiences)."""
    work = await start_queuing(conn, notice_id, texts=texts, settings=settings, now=now)
    if work is None:
        return False
    cursor: int | None = work.notice.queue_cursor
    while cursor is not None:
        cursor = await work.people_page(conn, cursor, now=now)
    await work.group_rows(conn, now=now)
    await work.finish(conn, now=now)
    return True


async def queue_notice(
    db: Database, notice_id: int, *, texts: Texts, settings: Any, now: datetime
) -> bool:
    """Queue a due notice page by page, one transaction each, so that writers elsewhere are
    never held up for long and a crash resumes from the last committed page.

    Returns ``False`` when the notice is not due or another process is queuing it.
    """
    async with db.write() as conn:
        work = await start_queuing(conn, notice_id, texts=texts, settings=settings, now=now)
    if work is None:
        return False
    cursor: int | None = work.notice.queue_cursor
    while cursor is not None:
        async with db.write() as conn:
            cursor = await work.people_page(conn, cursor, now=now)
    async with db.write() as conn:
        await work.group_rows(conn, now=now)
        await work.finish(conn, now=now)
    return True


async def queue_due_notices(
    db: Database, *, texts: Texts, settings: Any, now: datetime, limit: int = 50
) -> int:
    """The scheduler's job: queue every notice whose time has come (and resume any whose
    queuing process died).  Returns how many notices were queued.

    In the quiet hours only urgent notices are taken: a non-urgent one due then stays
    scheduled, so it can still be edited or cancelled and its audience is read when it goes,
    and the first run after the quiet hours queues it."""
    quiet = quiet_until(now, settings) is not None
    async with db.read() as conn:
        due = await store.due_notice_ids(conn, now, limit=limit, urgent_only=quiet)
    done = 0
    for notice_id in due:
        if await queue_notice(db, notice_id, texts=texts, settings=settings, now=now):
            done += 1
    return done


async def submit_notice(
    db: Database,
    person: repo.PersonInfo | None,
    *,
    texts: Texts,
    settings: Any,
    now: datetime,
    via: str,
    **fields: Any,
) -> Created:
    """Validate and store a notice in one transaction (nothing is stored when it is refused);
    one for now is then queued page by page.  ``fields`` are :func:`validate`'s arguments.
    The caller wakes the delivery worker."""
    async with db.write() as conn:
        draft = await validate(conn, person, now=now, **fields)
        assert person is not None  # validate refuses anyone else
        created = await create_notice(conn, person, draft, settings=settings, now=now, via=via)
    if draft.send_at is None:
        await queue_notice(db, created.notice_id, texts=texts, settings=settings, now=now)
    return created


# -- managing sent and scheduled notices ---------------------------------------------------


def can_manage(person: repo.PersonInfo, notice: Any) -> bool:
    """The sender, or a warden or admin whose scope holds the notice's whole audience."""
    if notice.sender_id == person.id:
        return True
    return any(notice.scope_path.startswith(r.path) for r in person.scope_regions(*SENDER_ROLES))


async def find_managed(
    conn: AsyncConnection, person: repo.PersonInfo, *, notice_id: int | None = None, code: str = ""
) -> Any:
    """A notice the person may manage, by id or code; refused as not found otherwise."""
    check_sender(person)
    if notice_id is not None:
        notice = await store.get_notice(conn, notice_id)
    else:
        notice = await store.get_notice_by_code(conn, code.upper())
    if notice is None or not can_manage(person, notice):
        raise NoticeRefused("not_found", 404, code=code or notice_id)
    return notice


async def list_visible(
    conn: AsyncConnection,
    person: repo.PersonInfo,
    *,
    status: str | None,
    limit: int,
    before_id: int | None,
    via: str,
) -> list[tuple[Any, Receipt]]:
    """Notices the person sent or whose audience lies in their scope, newest first, each with
    its receipt counts; the view is audited as ``<via>.notices.list``."""
    check_sender(person)
    rows = await store.list_notices(
        conn,
        sender_id=person.id,
        scope_paths=[r.path for r in sender_scopes(person)],
        status=status,
        limit=limit,
        before_id=before_id,
    )
    counts = await store.receipts(conn, [r.id for r in rows])
    await repo.record_audit(
        conn,
        actor_id=person.id,
        action=f"{via}.notices.list",
        target_type="notice",
        detail={"count": len(rows), "status": status},
    )
    return [(row, counts[row.id]) for row in rows]


async def view_notice(
    conn: AsyncConnection, person: repo.PersonInfo, notice_id: int, *, via: str
) -> tuple[Any, Receipt]:
    """A notice the person may manage with its receipt counts (audited ``<via>.notices.view``)."""
    notice = await find_managed(conn, person, notice_id=notice_id)
    receipt = (await store.receipts(conn, [notice.id]))[notice.id]
    await repo.record_audit(
        conn,
        actor_id=person.id,
        action=f"{via}.notices.view",
        target_type="notice",
        target_id=notice.id,
    )
    return notice, receipt


async def list_recipients(
    conn: AsyncConnection,
    person: repo.PersonInfo,
    notice: Any,
    *,
    unacked_only: bool,
    limit: int,
    after_id: int,
    via: str,
) -> list[Any]:
    """One page of a managed notice's recipients (names: personal data, so the view is
    audited as ``<via>.notices.recipients``)."""
    rows = await store.recipients(
        conn, notice.id, unacked_only=unacked_only, limit=limit, after_id=after_id
    )
    await repo.record_audit(
        conn,
        actor_id=person.id,
        action=f"{via}.notices.recipients",
        target_type="notice",
        target_id=notice.id,
        detail={"count": len(rows), "unacknowledged": unacked_only},
    )
    return rows


async def cancel_notice(
    conn: AsyncConnection, person: repo.PersonInfo, notice: Any, *, now: datetime
) -> None:
    """Cancel a notice that has not been sent yet."""
    done = await store.update_scheduled(
        conn, notice.id, status=NoticeStatus.CANCELLED, cancelled_at=now, updated_at=now
    )
    if not done:
        raise NoticeRefused("not_editable", 409, code=notice.code, status=notice.status)
    await repo.record_audit(
        conn,
        actor_id=person.id,
        action="notice.cancel",
        target_type="notice",
        target_id=notice.id,
        region_id=_region_id_of(notice.scope_path),
        detail={"code": notice.code},
    )


async def edit_notice(
    conn: AsyncConnection,
    person: repo.PersonInfo,
    notice: Any,
    draft: Draft,
    *,
    now: datetime,
) -> None:
    """Replace a scheduled notice's content, audience or time with a validated draft.  A draft
    for now keeps the time of a notice that is due already (held by the quiet hours)."""
    values = {
        "text": draft.text,
        "audience": draft.audience_json(),
        "scope_path": common_path(draft.regions),
        "ack_required": draft.ack_required,
        "urgent": draft.urgent,
        "send_at": draft.send_at or min(notice.send_at, now),
        "updated_at": now,
    }
    if not await store.update_scheduled(conn, notice.id, **values):
        raise NoticeRefused("not_editable", 409, code=notice.code, status=notice.status)
    changed = {
        key: (value.isoformat() if isinstance(value, datetime) else value)
        for key, value in values.items()
        if key != "updated_at" and getattr(notice, key) != value
    }
    await repo.record_audit(
        conn,
        actor_id=person.id,
        action="notice.edit",
        target_type="notice",
        target_id=notice.id,
        region_id=_region_id_of(common_path(draft.regions)),
        detail={"code": notice.code, "changed": changed},
    )


@dataclass(frozen=True)
class Reminded:
    round_no: int
    targets: int
    deliver_at: datetime


async def remind_unacknowledged(
    conn: AsyncConnection,
    person: repo.PersonInfo,
    notice: Any,
    *,
    texts: Texts,
    settings: Any,
    now: datetime,
) -> Reminded:
    """Send the notice again, marked as a reminder, to those who have not acknowledged it."""
    if not notice.ack_required:
        raise NoticeRefused("no_ack_needed", 409, code=notice.code)
    if notice.status != NoticeStatus.SENT:
        raise NoticeRefused("not_sent_yet", 409, code=notice.code)
    spacing = timedelta(seconds=settings.notices.resend_min_interval_s)
    if notice.last_resent_at is not None and now - notice.last_resent_at < spacing:
        wait = notice.last_resent_at + spacing - now
        raise NoticeRefused(
            "resend_too_soon",
            409,
            code=notice.code,
            minutes=max(1, int(wait.total_seconds() // 60)),
        )
    round_no = notice.resend_count + 1
    if not await store.note_resend(conn, notice.id, round_no, now):
        raise NoticeRefused("resend_too_soon", 409, code=notice.code, minutes=1)
    limits = channel_limits(settings.notices.max_length)
    reminder = texts.render("notices/reminder", notice=notice.rendered or notice.text)
    timing = RowTiming(
        not_before=delivery_time(now, urgent=notice.urgent, settings=settings),
        part_gap_s=settings.notices.part_gap_s,
        created_at=now,
    )
    targets = await store.queue_reminders(
        conn, notice.id, round_no, text_plan(reminder, limits, texts), timing
    )
    await repo.record_audit(
        conn,
        actor_id=person.id,
        action="notice.remind",
        target_type="notice",
        target_id=notice.id,
        region_id=_region_id_of(notice.scope_path),
        detail={"code": notice.code, "round": round_no, "targets": targets},
    )
    return Reminded(round_no, targets, timing.not_before)


# -- acknowledgements ----------------------------------------------------------------------

_POLITE = ("好的", "谢谢", "多谢", "ok")
_FILLERS = " ,，.。!！:：、~～了啦的"


def parse_ack(text: str) -> tuple[bool, str | None]:
    """Whether a message acknowledges a notice, and the code it names if any.

    "收到", "收到了，谢谢", "已收到 K7M2", "k7m2" are acknowledgements; "收到的是什么？" is not.
    """
    word = unicodedata.normalize("NFKC", text).strip().lower()
    for polite in _POLITE:
        word = word.replace(polite, "")
    word = "".join(char for char in word if char not in _FILLERS).upper()
    if CODE_PATTERN.match(word):
        return True, word
    for prefix in ("已收到", "收到"):
        if word.startswith(prefix):
            rest = word[len(prefix) :]
            if not rest:
                return True, None
            return (True, rest) if CODE_PATTERN.match(rest) else (False, None)
    return False, None


@dataclass(frozen=True)
class AckOutcome:
    """What an acknowledgement did: ``result`` names the reply template (``notices/ack_*``)."""

    result: Literal["thanks", "already", "not_needed", "unknown_code", "nothing", "group_thanks"]
    code: str = ""
    head: str = ""


def _head(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= HEAD_CHARS else line[:HEAD_CHARS] + "…"


async def acknowledge_person(
    conn: AsyncConnection, person: repo.PersonInfo, code: str | None, *, now: datetime
) -> AckOutcome:
    """A recipient's "收到": their newest notice waiting for it, or the one with ``code``."""
    if code is None:
        notice = await store.latest_unacked_for_person(conn, person.id)
        if notice is None:
            return AckOutcome("nothing")
    else:
        notice = await store.get_notice_by_code(conn, code)
        if notice is None or not await store.is_target(conn, notice.id, person_id=person.id):
            return AckOutcome("unknown_code", code)
        if not notice.ack_required:
            return AckOutcome("not_needed", notice.code, _head(notice.text))
    recorded = await store.record_ack(
        conn, notice.id, person_id=person.id, via="code" if code else "reply", now=now
    )
    return AckOutcome("thanks" if recorded else "already", notice.code, _head(notice.text))


async def acknowledge_group(
    conn: AsyncConnection,
    group: Any,
    member: repo.PersonInfo | None,
    member_name: str,
    code: str | None,
    *,
    now: datetime,
) -> AckOutcome:
    """A group member's "收到" acknowledges the group's newest notice (or the one with
    ``code``) for the whole group, and for the member too if they got it themselves."""
    if code is None:
        notice = await store.latest_for_group(conn, group.id)
    else:
        notice = await store.get_notice_by_code(conn, code)
        if notice is not None and not (
            notice.ack_required and await store.is_target(conn, notice.id, group_id=group.id)
        ):
            notice = None
    if notice is None:
        return AckOutcome("nothing")
    if member is not None and await store.is_target(conn, notice.id, person_id=member.id):
        await store.record_ack(conn, notice.id, person_id=member.id, via="group", now=now)
    recorded = await store.record_ack(
        conn,
        notice.id,
        group_id=group.id,
        member_person_id=member.id if member else None,
        member=member.name if member else member_name,
        via="code" if code else "reply",
        now=now,
    )
    return AckOutcome("group_thanks" if recorded else "already", notice.code, _head(notice.text))


# -- receipts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptLine:
    notice: Any
    receipt: Receipt
    head: str
    when: str


async def latest_receipts(
    conn: AsyncConnection, person: repo.PersonInfo, *, settings: Any, limit: int
) -> list[ReceiptLine]:
    """The sender's newest notices with their counts (what "通知回执" shows)."""
    rows = await store.list_notices(
        conn, sender_id=person.id, scope_paths=(), limit=limit, own_only=True
    )
    counts = await store.receipts(conn, [r.id for r in rows])
    return [
        ReceiptLine(r, counts[r.id], _head(r.text), local_label(r.send_at, settings)) for r in rows
    ]
