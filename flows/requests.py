"""Residents' requests (诉求): filing, handling, volunteers, the resident's word, supervision and
the deadline sweep.

:class:`Desk` carries out every action on a request for one person inside one transaction, the
same for chat and the API: it checks the actor's scope and the request's state, changes the row,
records a timeline event, and collects :class:`Notice` s for the people who must hear of it.
Chat hands the notices to the dispatcher (``ctx.send_to_person``); the API and the sweep queue
them with :func:`queue_notices`.  A refused action raises :class:`RequestDenied`, whose
template says why.

Scope: a warden or admin acts on requests in their regions' subtrees; a volunteer only on what
was handed to them; a resident only on their own.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from flows.answers import Option
from flows.texts import Texts
from storage import repo
from storage import requests_repo as rq
from storage.db import Database
from storage.models import Identity, Person, RegionLevel, Role
from storage.outbox import Target, enqueue, outbox, outbox_row
from storage.requests_models import OPEN_STATUSES, ClockStage, RequestStatus, VolunteerStatus

log = logging.getLogger(__name__)

NUMBER_PREFIX = "Q"
NUMBER = re.compile(r"^Q(\d{8})-?(\d{4,6})$")
_LEADING_NUMBER = re.compile(r"^\s*([QqＱｑ][0-9０-９\-－]+)(.*)$", re.DOTALL)

CATEGORIES = [
    Option("supplies", "物资", ("买菜", "食物", "生活物资", "蔬菜", "米面", "粮油", "买东西")),
    Option("medical", "就医", ("买药", "看病", "医疗", "药品", "就诊", "配药", "药", "医院")),
    Option("daily", "生活", ("生活困难", "日常", "维修", "生活问题")),
    Option("complaint", "投诉", ("举报",)),
    Option("suggestion", "建议", ("意见",)),
    Option("other", "其他", ("其它", "别的")),
]
URGENCIES = [
    Option("urgent", "紧急", ("急", "很急", "加急", "特急", "非常紧急", "着急")),
    Option("normal", "一般", ("不急", "普通", "不紧急", "还好", "不着急")),
]
VOLUNTEER_CATEGORIES = ("supplies", "daily")
STAFF = (Role.WARDEN, Role.ADMIN)

LABELS: dict[str, dict[str, str]] = {
    "category": {o.id: o.label for o in CATEGORIES},
    "urgency": {o.id: o.label for o in URGENCIES},
    "status": {
        RequestStatus.PENDING: "待受理",
        RequestStatus.ACCEPTED: "办理中",
        RequestStatus.RESOLVED: "已办结，待您确认",
        RequestStatus.CLOSED: "已关闭",
    },
    "level": {
        RegionLevel.GRID: "网格",
        RegionLevel.COMMUNITY: "社区",
        RegionLevel.STREET: "街道",
        RegionLevel.DISTRICT: "区",
        RegionLevel.CITY: "市",
    },
    "volunteer": {
        VolunteerStatus.HANDED: "待志愿者接单",
        VolunteerStatus.ACCEPTED: "志愿者已接单",
        VolunteerStatus.DELIVERED: "志愿者已送达",
        VolunteerStatus.RECEIVED: "居民已确认收到",
    },
    "event": {
        "created": "提交诉求",
        "assigned": "分派",
        "accepted": "受理",
        "note": "备注",
        "transferred": "转交",
        "handed": "派给志愿者",
        "volunteer_accepted": "志愿者接单",
        "delivered": "志愿者送达",
        "received": "居民确认收到",
        "resolved": "办结",
        "confirmed": "居民确认满意",
        "unsatisfied": "居民表示不满意",
        "reopened": "居民要求重新处理",
        "rated": "居民评分",
        "escalated": "超期升级",
        "deadline_missed": "超期（已无上级可升级）",
        "pressed": "督办",
        "auto_closed": "自动关闭",
    },
}


# -- results and refusals ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notice:
    """A message for someone other than the actor, idempotent by ``key``."""

    person_id: int
    template: str
    key: str
    values: dict[str, Any] = field(default_factory=dict)


class RequestDenied(Exception):
    """An action that cannot be done: ``template`` tells the person why; ``code`` and
    ``status`` are what the API answers."""

    STATUS: ClassVar[dict[str, int]] = {
        "not_found": 404,
        "out_of_scope": 403,
        "conflict": 409,
        "bad_input": 400,
    }

    def __init__(self, code: str, template: str, /, **values: Any) -> None:
        super().__init__(f"{code}: {template}")
        self.code = code
        self.template = template
        self.values = values

    @property
    def status(self) -> int:
        return self.STATUS[self.code]


def normalize_number(text: str) -> tuple[str, str] | None:
    """``q20261128-0042 受理`` -> (``Q20261128-0042``, ``受理``); ``None`` if no number leads.
    Full-width digits in the number are read as digits; the rest is kept as typed."""
    leading = _LEADING_NUMBER.match(text)
    if leading is None:
        return None
    token = unicodedata.normalize("NFKC", leading.group(1)).upper()
    match = NUMBER.match(token)
    if match is None:
        return None
    day, sequence = match.groups()
    return rq.format_number(NUMBER_PREFIX, day, int(sequence)), leading.group(2).strip()


def deadline_for(settings: Any, category: str, urgency: str) -> Any:
    """The configured (accept, resolve) minutes of a category and urgency."""
    table = settings.deadlines
    per_category = getattr(table, category, None) or table.other
    return getattr(per_category, urgency, None) or per_category.normal


def local_time(value: datetime | None, tz: ZoneInfo) -> str:
    """``11月28日 14:30`` in the configured time zone (empty for ``None``)."""
    if value is None:
        return ""
    local = value.astimezone(tz)
    return f"{local.month}月{local.day}日 {local:%H:%M}"


# -- the desk ------------------------------------------------------------------------------


@dataclass
class Desk:
    """Carries out actions on requests in one transaction (``conn``) at one moment (``now``).

    ``settings`` is the ``requests`` config section; ``row_lock`` takes the request's row lock
    before reading it (PostgreSQL; on SQLite writers are serialized already).
    """

    conn: AsyncConnection
    settings: Any
    tz: ZoneInfo
    now: datetime
    row_lock: bool
    notices: list[Notice] = field(default_factory=list)

    # -- shared helpers ----------------------------------------------------------------------

    def values(self, **extra: Any) -> dict[str, Any]:
        """What every request template gets: the labels and a time formatter."""
        return {"L": LABELS, "when": lambda v: local_time(v, self.tz), **extra}

    def notify(self, person_id: int | None, template: str, key: str, **values: Any) -> None:
        if person_id is not None:
            self.notices.append(Notice(person_id, template, key, self.values(**values)))

    async def load(self, number: str, *, lock: bool = True) -> Any:
        row = await rq.get_request(self.conn, number=number, for_update=lock and self.row_lock)
        if row is None:
            raise RequestDenied("not_found", "requests/denied/not_found", number=number)
        return row

    async def reload(self, request_id: int) -> Any:
        row = await rq.get_request(self.conn, request_id=request_id)
        assert row is not None
        return row

    async def region_of(self, req: Any) -> repo.RegionInfo:
        region = await repo.get_region(self.conn, req.region_id)
        assert region is not None
        return region

    async def require_staff(self, actor: repo.PersonInfo, req: Any) -> repo.RegionInfo:
        """The request's region, if ``actor`` is a warden or admin over it; else refused."""
        region = await self.region_of(req)
        if not actor.can_act_on(region, *STAFF):
            raise RequestDenied("out_of_scope", "requests/denied/out_of_scope", req=req)
        return region

    async def event(self, req: Any, kind: str, actor_id: int | None, **kw: Any) -> int:
        return await rq.add_event(self.conn, req.id, kind, at=self.now, actor_id=actor_id, **kw)

    @staticmethod
    def refuse_unless_open(req: Any, action: str) -> None:
        """Refuse acting on a resolved or closed request, saying when and why it ended."""
        if req.status in OPEN_STATUSES:
            return
        template = (
            "requests/denied/closed"
            if req.status == RequestStatus.CLOSED
            else "requests/denied/resolved"
        )
        raise RequestDenied("conflict", template, req=req, action=action)

    async def names(self, ids: Iterable[int | None]) -> dict[int, str]:
        wanted = {i for i in ids if i is not None}
        if not wanted:
            return {}
        rows = await self.conn.execute(
            select(repo.people.c.id, repo.people.c.name).where(repo.people.c.id.in_(wanted))
        )
        return {r.id: r.name for r in rows}

    # -- filing ------------------------------------------------------------------------------

    async def file(
        self,
        resident: repo.PersonInfo,
        *,
        category: str,
        urgency: str,
        description: str,
        items: str | None = None,
        quantity: str | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        channel: str = "",
    ) -> Any:
        """File a request for ``resident`` and assign it to their grid's warden (or the first
        level above with somebody responsible)."""
        region = resident.region
        if region is None:
            raise RequestDenied("bad_input", "requests/no_region")
        deadline = deadline_for(self.settings, category, urgency)
        accept_due = self.now + timedelta(minutes=deadline.accept_minutes)
        resolve_due = self.now + timedelta(minutes=deadline.resolve_minutes)
        responsible = await rq.first_responsible(self.conn, region)
        day = self.now.astimezone(self.tz).strftime("%Y%m%d")
        number = rq.format_number(NUMBER_PREFIX, day, await rq.next_number(self.conn, day))
        request_id = await rq.insert_request(
            self.conn,
            {
                "number": number,
                "resident_id": resident.id,
                "region_id": region.id,
                **await rq.ancestor_ids(self.conn, region),
                "category": category,
                "urgency": urgency,
                "description": description,
                "items": items,
                "quantity": quantity,
                "attachments": list(attachments),
                "channel": channel,
                "status": RequestStatus.PENDING,
                "level": responsible.level if responsible else region.level,
                "handler_id": responsible.person_id if responsible else None,
                "accept_due_at": accept_due,
                "resolve_due_at": resolve_due,
                "sla_due_at": accept_due,
                "escalate_at": accept_due,
                "escalations": 0,
                "reopen_count": 0,
                "created_at": self.now,
            },
        )
        req = await self.reload(request_id)
        await self.event(req, "created", resident.id, level=req.level)
        if responsible is not None:
            event_id = await self.event(
                req, "assigned", None, person_id=responsible.person_id, level=responsible.level
            )
            self.notify(
                responsible.person_id,
                "requests/alert_new",
                f"request:{event_id}:handler",
                req=req,
                resident=resident,
            )
        await repo.record_audit(
            self.conn,
            actor_id=resident.id,
            action="request.create",
            target_type="request",
            target_id=number,
            region_id=region.id,
        )
        return req

    # -- handlers ----------------------------------------------------------------------------

    async def accept(self, actor: repo.PersonInfo, number: str) -> Any:
        req = await self.load(number)
        await self.require_staff(actor, req)
        self.refuse_unless_open(req, "accept")
        if req.status == RequestStatus.ACCEPTED:
            raise RequestDenied("conflict", "requests/denied/already_accepted", req=req)
        await self._accept(actor, req)
        return await self.reload(req.id)

    async def _accept(self, actor: repo.PersonInfo, req: Any) -> None:
        await rq.update_request(
            self.conn,
            req.id,
            status=RequestStatus.ACCEPTED,
            handler_id=actor.id,
            accepted_at=self.now,
            sla_due_at=req.resolve_due_at,
            escalate_at=req.resolve_due_at,
        )
        event_id = await self.event(req, "accepted", actor.id, person_id=actor.id, level=req.level)
        self.notify(
            req.resident_id,
            "requests/notice_accepted",
            f"request:{event_id}:resident",
            req=req,
            handler=actor,
            resolve_by=req.resolve_due_at,
        )

    async def note(self, actor: repo.PersonInfo, number: str, text: str) -> Any:
        text = text.strip()
        if not text:
            raise RequestDenied("bad_input", "requests/denied/empty_note", number=number)
        req = await self.load(number)
        await self.require_staff(actor, req)
        await self.event(req, "note", actor.id, text=text[:1000])
        return req

    async def transfer(self, actor: repo.PersonInfo, number: str, grid_code: str) -> Any:
        """Move a request to another grid: a sibling grid of the same community, or any grid
        in the actor's own scope.  The new grid's warden must accept it afresh."""
        grid_code = grid_code.strip().upper()
        if not grid_code:
            raise RequestDenied("bad_input", "requests/denied/transfer_needs_grid", number=number)
        req = await self.load(number)
        region = await self.require_staff(actor, req)
        self.refuse_unless_open(req, "transfer")
        target = await repo.get_region_by_code(self.conn, grid_code)
        if target is None or target.level != RegionLevel.GRID:
            raise RequestDenied("bad_input", "requests/denied/not_a_grid", code=grid_code)
        if target.id == region.id:
            raise RequestDenied("bad_input", "requests/denied/same_grid", req=req, grid=target)
        sibling = target.parent_id is not None and target.parent_id == region.parent_id
        if not (sibling or actor.can_act_on(target, *STAFF)):
            raise RequestDenied(
                "out_of_scope", "requests/denied/transfer_out_of_scope", req=req, grid=target
            )
        responsible = await rq.first_responsible(self.conn, target)
        deadline = deadline_for(self.settings, req.category, req.urgency)
        accept_due = self.now + timedelta(minutes=deadline.accept_minutes)
        resolve_due = self.now + timedelta(minutes=deadline.resolve_minutes)
        await rq.update_request(
            self.conn,
            req.id,
            region_id=target.id,
            **await rq.ancestor_ids(self.conn, target),
            status=RequestStatus.PENDING,
            level=responsible.level if responsible else target.level,
            handler_id=responsible.person_id if responsible else None,
            accepted_at=None,
            accept_due_at=accept_due,
            resolve_due_at=resolve_due,
            sla_due_at=accept_due,
            escalate_at=accept_due,
            volunteer_id=None,
            volunteer_status=None,
        )
        event_id = await self.event(
            req,
            "transferred",
            actor.id,
            person_id=responsible.person_id if responsible else None,
            level=responsible.level if responsible else target.level,
            detail={"from": region.code, "to": target.code},
        )
        updated = await self.reload(req.id)
        resident = await repo.load_person(self.conn, req.resident_id)
        if responsible is not None:
            self.notify(
                responsible.person_id,
                "requests/alert_new",
                f"request:{event_id}:handler",
                req=updated,
                resident=resident,
                transferred_by=actor,
            )
        self.notify(
            req.resident_id,
            "requests/notice_transferred",
            f"request:{event_id}:resident",
            req=updated,
            grid=target,
        )
        return updated

    async def resolve(self, actor: repo.PersonInfo, number: str, reply: str) -> Any:
        reply = reply.strip()
        if not reply:
            raise RequestDenied("bad_input", "requests/denied/empty_reply", number=number)
        req = await self.load(number)
        await self.require_staff(actor, req)
        self.refuse_unless_open(req, "resolve")
        await rq.update_request(
            self.conn,
            req.id,
            status=RequestStatus.RESOLVED,
            handler_id=actor.id,
            accepted_at=req.accepted_at or self.now,
            resolved_at=self.now,
            reply=reply[:1000],
            sla_due_at=None,
            escalate_at=None,
        )
        event_id = await self.event(req, "resolved", actor.id, text=reply[:1000], level=req.level)
        updated = await self.reload(req.id)
        self.notify(
            req.resident_id,
            "requests/notice_resolved",
            f"request:{event_id}:resident",
            req=updated,
            handler=actor,
        )
        return updated

    async def hand_to_volunteer(self, actor: repo.PersonInfo, number: str, who: str) -> Any:
        """Hand a supplies or daily-life request to a volunteer of the request's community."""
        who = who.strip()
        if not who:
            raise RequestDenied("bad_input", "requests/denied/volunteer_needed", number=number)
        req = await self.load(number)
        region = await self.require_staff(actor, req)
        self.refuse_unless_open(req, "hand")
        if req.category not in VOLUNTEER_CATEGORIES:
            raise RequestDenied("bad_input", "requests/denied/not_for_volunteers", req=req)
        if req.volunteer_status == VolunteerStatus.DELIVERED:
            raise RequestDenied("conflict", "requests/denied/already_delivered", req=req)
        volunteer = await self._find_volunteer(region, who)
        if req.status == RequestStatus.PENDING:
            await self._accept(actor, req)
        await rq.update_request(
            self.conn,
            req.id,
            volunteer_id=volunteer.id,
            volunteer_status=VolunteerStatus.HANDED,
        )
        event_id = await self.event(req, "handed", actor.id, person_id=volunteer.id)
        updated = await self.reload(req.id)
        self.notify(
            volunteer.id,
            "requests/alert_volunteer",
            f"request:{event_id}:volunteer",
            req=updated,
            handler=actor,
        )
        self.notify(
            req.resident_id,
            "requests/notice_volunteer",
            f"request:{event_id}:resident",
            req=updated,
            volunteer=volunteer,
        )
        return updated

    async def _find_volunteer(self, region: repo.RegionInfo, who: str) -> repo.PersonInfo:
        """A volunteer whose scope covers ``region``, by id or by exact name."""
        roles = repo.roles
        rows = await self.conn.execute(
            select(repo.people.c.id, repo.people.c.name)
            .join(roles, roles.c.person_id == repo.people.c.id)
            .where(roles.c.role == Role.VOLUNTEER)
            .where(
                (repo.people.c.id == int(who))
                if who.isascii() and who.isdigit() and len(who) < 18
                else (repo.people.c.name == who)
            )
            .distinct()
        )
        candidates = []
        for row in rows:
            person = await repo.load_person(self.conn, row.id)
            if person is not None and person.can_act_on(region, Role.VOLUNTEER):
                candidates.append(person)
        if not candidates:
            raise RequestDenied("bad_input", "requests/denied/volunteer_not_found", who=who)
        if len(candidates) > 1:
            raise RequestDenied(
                "bad_input", "requests/denied/volunteer_ambiguous", who=who, people=candidates
            )
        return candidates[0]

    async def press(self, actor: repo.PersonInfo, number: str, text: str = "") -> Any:
        """督办: tell the current handler to get on with it (recorded on the timeline)."""
        req = await self.load(number)
        await self.require_staff(actor, req)
        self.refuse_unless_open(req, "press")
        if req.handler_id is None or req.handler_id == actor.id:
            raise RequestDenied("conflict", "requests/denied/press_self", req=req)
        text = text.strip()[:500]
        event_id = await self.event(
            req, "pressed", actor.id, person_id=req.handler_id, text=text or None
        )
        self.notify(
            req.handler_id,
            "requests/alert_pressed",
            f"request:{event_id}:handler",
            req=req,
            presser=actor,
            text=text,
        )
        return req

    # -- volunteers --------------------------------------------------------------------------

    async def _volunteer_request(self, actor: repo.PersonInfo, number: str) -> Any:
        req = await self.load(number)
        if req.volunteer_id != actor.id:
            raise RequestDenied("out_of_scope", "requests/denied/not_handed_to_you", req=req)
        return req

    async def volunteer_accept(self, actor: repo.PersonInfo, number: str) -> Any:
        req = await self._volunteer_request(actor, number)
        if req.volunteer_status != VolunteerStatus.HANDED:
            raise RequestDenied("conflict", "requests/denied/volunteer_state", req=req)
        self.refuse_unless_open(req, "volunteer_accept")
        await rq.update_request(self.conn, req.id, volunteer_status=VolunteerStatus.ACCEPTED)
        event_id = await self.event(req, "volunteer_accepted", actor.id)
        self.notify(
            req.handler_id,
            "requests/alert_volunteer_accepted",
            f"request:{event_id}:handler",
            req=req,
            volunteer=actor,
        )
        return await self.reload(req.id)

    async def deliver(self, actor: repo.PersonInfo, number: str) -> Any:
        req = await self._volunteer_request(actor, number)
        if req.volunteer_status not in (VolunteerStatus.HANDED, VolunteerStatus.ACCEPTED):
            raise RequestDenied("conflict", "requests/denied/volunteer_state", req=req)
        self.refuse_unless_open(req, "deliver")
        await rq.update_request(
            self.conn,
            req.id,
            volunteer_status=VolunteerStatus.DELIVERED,
            status=RequestStatus.RESOLVED,
            resolved_at=self.now,
            sla_due_at=None,
            escalate_at=None,
        )
        event_id = await self.event(req, "delivered", actor.id)
        updated = await self.reload(req.id)
        self.notify(
            req.resident_id,
            "requests/notice_delivered",
            f"request:{event_id}:resident",
            req=updated,
            volunteer=actor,
        )
        self.notify(
            req.handler_id,
            "requests/alert_delivered",
            f"request:{event_id}:handler",
            req=updated,
            volunteer=actor,
        )
        return updated

    async def volunteer_view(self, req: Any) -> dict[str, Any]:
        """What a volunteer may see: where to go and a masked phone number."""
        resident = await repo.load_person(self.conn, req.resident_id)
        assert resident is not None
        household = await repo.household_label(self.conn, resident.household_id)
        region = await self.region_of(req)
        return {
            "req": req,
            "resident_name": resident.name,
            "address": f"{region.name}{household}",
            "phone": repo.mask_phone(resident.phone),
        }

    # -- the resident's word -----------------------------------------------------------------

    async def own_request(self, resident: repo.PersonInfo, number: str) -> Any:
        req = await self.load(number)
        if req.resident_id != resident.id:
            raise RequestDenied("out_of_scope", "requests/denied/not_yours", number=number)
        return req

    async def confirm(self, resident: repo.PersonInfo, number: str, *, satisfied: bool) -> Any:
        """满意 / 不满意: the resident closes a resolved request with their verdict."""
        req = await self.own_request(resident, number)
        if req.status != RequestStatus.RESOLVED:
            raise RequestDenied("conflict", "requests/denied/not_resolved", req=req)
        received = req.volunteer_status == VolunteerStatus.DELIVERED
        await rq.update_request(
            self.conn,
            req.id,
            status=RequestStatus.CLOSED,
            closed_at=self.now,
            satisfied=satisfied,
            **({"volunteer_status": VolunteerStatus.RECEIVED} if received else {}),
        )
        if received:
            await self.event(req, "received", resident.id)
        event_id = await self.event(req, "confirmed" if satisfied else "unsatisfied", resident.id)
        if not satisfied:
            self.notify(
                req.handler_id,
                "requests/alert_unsatisfied",
                f"request:{event_id}:handler",
                req=req,
            )
        return await self.reload(req.id)

    async def confirm_receipt(self, resident: repo.PersonInfo, number: str) -> Any:
        """确认收到: the resident got what a volunteer delivered; the request closes."""
        req = await self.own_request(resident, number)
        if (
            req.volunteer_status != VolunteerStatus.DELIVERED
            or req.status != RequestStatus.RESOLVED
        ):
            raise RequestDenied("conflict", "requests/denied/nothing_delivered", req=req)
        await rq.update_request(
            self.conn,
            req.id,
            status=RequestStatus.CLOSED,
            closed_at=self.now,
            volunteer_status=VolunteerStatus.RECEIVED,
        )
        event_id = await self.event(req, "received", resident.id)
        self.notify(
            req.volunteer_id,
            "requests/alert_received",
            f"request:{event_id}:volunteer",
            req=req,
        )
        return await self.reload(req.id)

    async def reopen(self, resident: repo.PersonInfo, number: str) -> Any:
        """重新处理: back to the handler with a fresh resolve deadline.  Allowed while resolved,
        or after an unsatisfied close within ``auto_close_days``."""
        req = await self.own_request(resident, number)
        window = timedelta(days=self.settings.auto_close_days)
        unsatisfied_recently = (
            req.status == RequestStatus.CLOSED
            and req.satisfied is False
            and req.closed_at is not None
            and req.closed_at > self.now - window
        )
        if req.status in OPEN_STATUSES:
            raise RequestDenied("conflict", "requests/denied/still_open", req=req)
        if req.status == RequestStatus.CLOSED and not unsatisfied_recently:
            raise RequestDenied("conflict", "requests/denied/closed", req=req, action="reopen")
        deadline = deadline_for(self.settings, req.category, req.urgency)
        resolve_due = self.now + timedelta(minutes=deadline.resolve_minutes)
        await rq.update_request(
            self.conn,
            req.id,
            status=RequestStatus.ACCEPTED,
            resolved_at=None,
            closed_at=None,
            satisfied=None,
            resolve_due_at=resolve_due,
            sla_due_at=resolve_due,
            escalate_at=resolve_due,
            reopen_count=req.reopen_count + 1,
            volunteer_status=None if req.volunteer_id is None else VolunteerStatus.HANDED,
        )
        event_id = await self.event(req, "reopened", resident.id, person_id=req.handler_id)
        updated = await self.reload(req.id)
        self.notify(
            req.handler_id,
            "requests/alert_reopened",
            f"request:{event_id}:handler",
            req=updated,
        )
        if req.volunteer_id is not None:
            self.notify(
                req.volunteer_id,
                "requests/alert_volunteer",
                f"request:{event_id}:volunteer",
                req=updated,
                handler=None,
            )
        return updated

    async def rate(self, resident: repo.PersonInfo, request_id: int, rating: int) -> Any:
        req = await rq.get_request(self.conn, request_id=request_id, for_update=self.row_lock)
        if req is None or req.resident_id != resident.id:
            raise RequestDenied("not_found", "requests/denied/not_found", number="")
        await rq.update_request(self.conn, req.id, rating=rating)
        await self.event(req, "rated", resident.id, detail={"rating": rating})
        return await self.reload(req.id)

    # -- views -------------------------------------------------------------------------------

    async def timeline(self, req: Any) -> list[dict[str, Any]]:
        rows = await rq.list_events(self.conn, req.id)
        names = await self.names([r.actor_id for r in rows] + [r.person_id for r in rows])
        return [
            {
                "at": r.at,
                "kind": r.kind,
                "actor": names.get(r.actor_id) if r.actor_id else None,
                "actor_id": r.actor_id,
                "person": names.get(r.person_id) if r.person_id else None,
                "person_id": r.person_id,
                "level": r.level,
                "text": r.text,
                "detail": r.detail,
            }
            for r in rows
        ]

    async def staff_view(self, actor: repo.PersonInfo, number: str) -> dict[str, Any]:
        """A request with its resident, handler and timeline, for a warden or admin in scope.
        The full phone number only for the grid's warden (minimum necessary)."""
        req = await self.load(number, lock=False)
        region = await self.require_staff(actor, req)
        resident = await repo.load_person(self.conn, req.resident_id)
        assert resident is not None
        household = await repo.household_label(self.conn, resident.household_id)
        names = await self.names([req.handler_id, req.volunteer_id])
        await repo.record_audit(
            self.conn,
            actor_id=actor.id,
            action="request.view",
            target_type="request",
            target_id=req.number,
            region_id=region.id,
        )
        full_phone = actor.can_act_on(region, Role.WARDEN)
        return {
            "req": req,
            "region": region,
            "resident_name": resident.name,
            "phone": resident.phone if full_phone else repo.mask_phone(resident.phone),
            "address": f"{region.name}{household}",
            "handler": names.get(req.handler_id) if req.handler_id else None,
            "volunteer": names.get(req.volunteer_id) if req.volunteer_id else None,
            "timeline": await self.timeline(req),
        }


# -- the deadline sweep --------------------------------------------------------------------


@dataclass
class SweepReport:
    escalated: int = 0
    exhausted: int = 0
    closed: int = 0
    batches: int = 0
    alerts: int = 0


async def sweep_deadlines(db: Database, texts: Texts, config: Any, *, now: datetime) -> SweepReport:
    """Escalate every open request whose deadline has passed, one level up, alert the handlers,
    and close resolved requests the resident left unanswered.

    Escalation goes in bounded pages, one transaction each, and on PostgreSQL
    ``requests.sweep_workers`` pages at a time.  A page is a single set-based statement (see
    :func:`storage.requests_repo.escalate_due`): the clocks move and the timeline records each
    move, so a crash loses nothing and a restart goes on where it stopped.  Safe to run twice
    at once (two schedulers): a page's UPDATE is conditional on the clock's current level and
    due time, and on PostgreSQL it skips clocks another sweep holds.  Then
    :func:`alert_escalations` tells each handler once about everything the timeline recorded
    for them since the last alerts (this run's pages, or a run that died before its alerts).
    """
    settings = config.requests
    windows: dict[tuple[str, str, str], datetime] = {}
    for category in LABELS["category"]:
        for urgency in LABELS["urgency"]:
            deadline = deadline_for(settings, category, urgency)
            windows[(ClockStage.ACCEPT, category, urgency)] = now + timedelta(
                minutes=deadline.accept_minutes
            )
            windows[(ClockStage.RESOLVE, category, urgency)] = now + timedelta(
                minutes=deadline.resolve_minutes
            )
    default_due = windows[(ClockStage.ACCEPT, "other", "normal")]
    report = SweepReport()
    insert_ignore = db.insert_ignore(outbox)
    batch = settings.sweep_batch

    page = rq.EscalationPage(
        postgres=not db.is_sqlite,
        now=now,
        windows=windows,
        default_due=default_due,
        batch=batch,
    )

    due_from = rq.EARLIEST_DUE

    async def escalate_page() -> bool:
        """One page; ``True`` when it came back full (there may be more)."""
        nonlocal due_from
        async with db.write() as conn:
            await rq.hold_alert_mark(conn)
            moved = await page.run(conn, due_from=due_from)
        if moved.last_due is not None:
            due_from = max(due_from, moved.last_due)
        report.batches += 1
        report.escalated += moved.count - moved.exhausted
        report.exhausted += moved.exhausted
        return moved.count == batch

    async def escalate_pages() -> None:
        # Until a page comes back short: then every clock that was due has been moved, or is
        # held by another worker (or another sweep), which moves it in its own page.
        while await escalate_page():
            pass

    # Most ticks have nothing due: one index probe says so.  Usually one page does it.
    # When more than a page is due (a short walk of the due index says so), or the first
    # page came back full, pages claim their clocks with SKIP LOCKED, so on PostgreSQL
    # several run at once without waiting on each other; SQLite has one writer.
    async with db.read() as conn:
        due = await rq.any_due(conn, now=now)
        many = due and await rq.more_due_than(conn, now=now, count=batch)
    if many or (due and await escalate_page()):
        async with asyncio.TaskGroup() as workers:
            for _ in range(1 if db.is_sqlite else settings.sweep_workers):
                workers.create_task(escalate_pages())
    report.alerts = await alert_escalations(db, texts, config)
    resolved_before = now - timedelta(days=settings.auto_close_days)
    while True:
        async with db.write() as conn:
            closed = await rq.close_unanswered(
                conn,
                now=now,
                resolved_before=resolved_before,
                batch=batch,
                skip_locked=not db.is_sqlite,
            )
            if closed:
                await rq.record_auto_closed(conn, [r.id for r in closed], now=now)
                notices = [
                    Notice(
                        r.resident_id,
                        "requests/notice_auto_closed",
                        f"request:{r.id}:auto_closed",
                        {"L": LABELS, "number": r.number, "days": settings.auto_close_days},
                    )
                    for r in closed
                ]
                await queue_notices(conn, texts, notices, insert_ignore)
        report.closed += len(closed)
        if len(closed) < batch:
            break
    return report


ALERT_EVENTS = 200_000
"""Timeline events looked at per alert transaction (bounds its work after a long outage)."""


async def alert_escalations(db: Database, texts: Texts, config: Any) -> int:
    """Tell each handler, in one message, about the escalations the timeline recorded for them
    since the last alerts: those moved to them, and (separately) those that stayed with them
    with no level left.  Returns how many alerts were queued.

    The state row's mark moves past the events in the same transaction as the alerts for
    them, which are keyed by the first event they cover: a retry, a restart or a second sweep
    cannot alert twice, and a run that died after its pages is alerted by the next run."""
    async with db.read() as conn:
        if not await rq.events_after_mark(conn):
            return 0
    insert_ignore = db.insert_ignore(outbox)
    queued = 0
    while True:
        async with db.write() as conn:
            mark, newest = await rq.take_alert_mark(conn)
            if newest <= mark:
                return queued
            upto = min(newest, mark + ALERT_EVENTS)
            alerts = await rq.unalerted_escalations(conn, after=mark, upto=upto)
            notices = [escalation_notice(alert, config.tz) for alert in alerts]
            queued += await queue_notices(conn, texts, notices, insert_ignore)
            await rq.set_alert_mark(conn, upto)


def escalation_notice(alert: rq.EscalationAlert, tz: ZoneInfo) -> Notice:
    """The alert to a handler, keyed by the first escalation event it covers."""
    kind = "escalated" if alert.escalated else "missed"
    return Notice(
        alert.handler_id,
        "requests/alert_escalated" if alert.escalated else "requests/alert_missed",
        f"request-{kind}:{alert.handler_id}:e{alert.first_event_id}",
        {
            "level": LABELS["level"][alert.level],
            "count": alert.count,
            "numbers": "、".join(alert.numbers),
            "more": alert.count > len(alert.numbers),
            "due": local_time(alert.due, tz),
        },
    )


async def queue_notices(
    conn: AsyncConnection, texts: Texts, notices: Sequence[Notice], insert_ignore: Any
) -> int:
    """Render notices and put them in the outbox (people with no reachable account are
    skipped); returns how many were queued."""
    if not notices:
        return 0
    targets = await person_targets(conn, {n.person_id for n in notices})
    rows = []
    for notice in notices:
        target = targets.get(notice.person_id)
        if target is None:
            log.info("person %s is unreachable; notice %s not queued", notice.person_id, notice.key)
            continue
        rows.append(
            outbox_row(
                key=notice.key,
                target=target,
                payload={"text": texts.render(notice.template, **notice.values)},
                person_id=notice.person_id,
                ref_type="request",
            )
        )
    await enqueue(conn, rows, insert_ignore)
    return len(rows)


async def person_targets(conn: AsyncConnection, person_ids: Iterable[int]) -> dict[int, Target]:
    """Each person's last-seen channel account, for many people in one query (the same choice
    as ``storage.outbox.person_target``); opted-out people are left out."""
    ids = sorted(set(person_ids))
    if not ids:
        return {}
    identities = Identity.__table__
    people = Person.__table__
    rows = await conn.execute(
        select(identities.c.person_id, identities.c.channel, identities.c.external_id)
        .join(people, people.c.id == identities.c.person_id)
        .where(identities.c.person_id.in_(ids), people.c.opted_out.is_(False))
        .order_by(
            identities.c.person_id,
            identities.c.last_seen_at.desc().nulls_last(),
            identities.c.id.desc(),
        )
    )
    found: dict[int, Target] = {}
    for row in rows:
        found.setdefault(row.person_id, Target(row.channel, "user", row.external_id))
    return found
