"""REST API of residents' requests: lists within scope, one request with its timeline, and the
handler's actions (accept, note, transfer, resolve, hand to a volunteer, press), plus the
overdue list that supervision works from.

Actions go through the same :class:`flows.requests.Desk` as chat, so scope and state rules are
one; a refusal becomes a 4xx with the same reason a chat user reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from bot.api import (
    CALLER,
    MAX_ID,
    ApiError,
    Handler,
    Operation,
    _json,
    _path,
    _query,
    json_body,
    scoped_region,
)
from bot.config import Config
from flows.requests import Desk, RequestDenied, normalize_number, queue_notices
from flows.texts import Texts
from storage import repo
from storage import requests_repo as rq
from storage.db import Database
from storage.models import Role, utcnow
from storage.outbox import outbox
from storage.requests_models import RequestStatus

STAFF = (Role.WARDEN, Role.ADMIN)
MAX_LIMIT = 200

_NUMBER = _path("number", "Request number, e.g. Q20261128-0042")
OPERATIONS = [
    Operation(
        "GET",
        "/requests",
        "list_requests",
        "Requests in a region of the caller's scope, newest first",
        [
            _query("region", "Region code (default: the caller's first scope)", {"type": "string"}),
            _query(
                "status",
                "Only these statuses (comma-separated)",
                {"type": "string", "example": "pending,accepted"},
            ),
            _query("limit", f"Page size (1-{MAX_LIMIT})", {"type": "integer"}),
            _query("before", "Only requests with id below this (paging)", {"type": "integer"}),
        ],
    ),
    Operation(
        "GET",
        "/requests/overdue",
        "list_overdue_requests",
        "Open requests past their deadline in a region's subtree, longest overdue first",
        [
            _query("region", "Region code (default: the caller's first scope)", {"type": "string"}),
            _query("limit", f"Page size (1-{MAX_LIMIT})", {"type": "integer"}),
            _query("offset", "Skip this many", {"type": "integer"}),
        ],
    ),
    Operation(
        "GET", "/requests/{number}", "get_request", "One request with its timeline", [_NUMBER]
    ),
    Operation("POST", "/requests/{number}/accept", "accept_request", "Accept", [_NUMBER]),
    Operation(
        "POST", "/requests/{number}/notes", "note_request", 'Add a note: {"text"}', [_NUMBER]
    ),
    Operation(
        "POST",
        "/requests/{number}/transfer",
        "transfer_request",
        'Transfer to another grid: {"grid": code}',
        [_NUMBER],
    ),
    Operation(
        "POST",
        "/requests/{number}/resolve",
        "resolve_request",
        'Resolve with a reply to the resident: {"reply"}',
        [_NUMBER],
    ),
    Operation(
        "POST",
        "/requests/{number}/volunteer",
        "hand_request_to_volunteer",
        'Hand to a volunteer: {"volunteer": id or name}',
        [_NUMBER],
    ),
    Operation(
        "POST",
        "/requests/{number}/press",
        "press_request",
        'Press (督办) the current handler: {"text"} (optional)',
        [_NUMBER],
    ),
]


class RequestsApi:
    """Handlers of the requests endpoints; ``wake`` nudges delivery after queueing notices."""

    def __init__(self, db: Database, config: Config, texts: Texts, wake: Callable[[], None]):
        self.db = db
        self.config = config
        self.texts = texts
        self.wake = wake
        self._outbox_insert = db.insert_ignore(outbox)

    def handlers(self) -> dict[str, Handler]:
        return {
            "list_requests": self.list_requests,
            "list_overdue_requests": self.list_overdue,
            "get_request": self.get_request,
            "accept_request": self.accept,
            "note_request": self.note,
            "transfer_request": self.transfer,
            "resolve_request": self.resolve,
            "hand_request_to_volunteer": self.hand_to_volunteer,
            "press_request": self.press,
        }

    def _desk(self, conn: Any) -> Desk:
        return Desk(
            conn=conn,
            settings=self.config.requests,
            tz=self.config.tz,
            now=utcnow(),
            row_lock=not self.db.is_sqlite,
        )

    def _denied(self, denied: RequestDenied, desk: Desk) -> ApiError:
        message = self.texts.render(denied.template, **desk.values(**denied.values))
        return ApiError(denied.status, denied.code, message)

    async def _region(self, conn: Any, request: web.Request) -> repo.RegionInfo:
        person = request[CALLER]
        code = request.query.get("region")
        if not code:
            scopes = person.scope_regions(*STAFF)
            if not scopes:
                raise ApiError(403, "forbidden", "requests are for wardens and admins")
            code = scopes[0].code
        region = await scoped_region(conn, person, code)
        if not person.can_act_on(region, *STAFF):
            raise ApiError(403, "out_of_scope", f"region {code} is outside your scope")
        return region

    # -- lists -------------------------------------------------------------------------------

    async def list_requests(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        limit = _int(request, "limit", 50, 1, MAX_LIMIT)
        before = request.query.get("before")
        before_id = _int(request, "before", 0, 1, MAX_ID) if before is not None else None
        statuses = [s for s in request.query.get("status", "").split(",") if s]
        known = {s.value for s in RequestStatus}
        if any(s not in known for s in statuses):
            raise ApiError(400, "bad_parameter", f"status must be among {sorted(known)}")
        async with self.db.write() as conn:
            region = await self._region(conn, request)
            rows = await rq.list_in_region(
                conn, region, statuses=statuses, limit=limit, before_id=before_id
            )
            await repo.record_audit(
                conn,
                actor_id=person.id,
                action="api.requests.list",
                target_type="region",
                target_id=region.code,
                region_id=region.id,
                detail={"count": len(rows), "status": statuses},
            )
        items = [_request_json(r) for r in rows]
        next_before = rows[-1].id if len(rows) == limit else None
        return _json({"requests": items, "next_before": next_before})

    async def list_overdue(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        limit = _int(request, "limit", 50, 1, MAX_LIMIT)
        offset = _int(request, "offset", 0, 0, 1_000_000)
        now = utcnow()
        async with self.db.write() as conn:
            region = await self._region(conn, request)
            total, rows = await rq.overdue_in_region(
                conn, region, now=now, limit=limit, offset=offset
            )
            await repo.record_audit(
                conn,
                actor_id=person.id,
                action="api.requests.overdue",
                target_type="region",
                target_id=region.code,
                region_id=region.id,
                detail={"count": len(rows)},
            )
        return _json(
            {
                "region": region.code,
                "total": total,
                "requests": [
                    {**_request_json(r), "overdue_minutes": _minutes(now - r.sla_due_at)}
                    for r in rows
                ],
            }
        )

    # -- one request -------------------------------------------------------------------------

    async def get_request(self, request: web.Request) -> web.Response:
        number = _number(request)
        async with self.db.write() as conn:
            desk = self._desk(conn)
            try:
                view = await desk.staff_view(request[CALLER], number)
            except RequestDenied as denied:
                raise self._denied(denied, desk) from None
        body = _request_json(view["req"])
        body.update(
            resident={"name": view["resident_name"], "phone": view["phone"]},
            address=view["address"],
            handler_name=view["handler"],
            volunteer_name=view["volunteer"],
            timeline=[
                {k: v for k, v in event.items() if k not in ("actor", "person")}
                | {"actor_name": event["actor"], "person_name": event["person"]}
                for event in view["timeline"]
            ],
        )
        return _json(body)

    async def _act(
        self,
        request: web.Request,
        action: Callable[[Desk, repo.PersonInfo, str, dict[str, Any]], Awaitable[Any]],
    ) -> web.Response:
        number = _number(request)
        body = await json_body(request)
        async with self.db.write() as conn:
            desk = self._desk(conn)
            try:
                req = await action(desk, request[CALLER], number, body)
            except RequestDenied as denied:
                raise self._denied(denied, desk) from None
            queued = await queue_notices(conn, self.texts, desk.notices, self._outbox_insert)
        if queued:
            self.wake()
        return _json(_request_json(req))

    async def accept(self, request: web.Request) -> web.Response:
        return await self._act(request, lambda d, p, n, b: d.accept(p, n))

    async def note(self, request: web.Request) -> web.Response:
        return await self._act(request, lambda d, p, n, b: d.note(p, n, _text(b, "text")))

    async def transfer(self, request: web.Request) -> web.Response:
        return await self._act(request, lambda d, p, n, b: d.transfer(p, n, _text(b, "grid")))

    async def resolve(self, request: web.Request) -> web.Response:
        return await self._act(request, lambda d, p, n, b: d.resolve(p, n, _text(b, "reply")))

    async def hand_to_volunteer(self, request: web.Request) -> web.Response:
        return await self._act(
            request, lambda d, p, n, b: d.hand_to_volunteer(p, n, _text(b, "volunteer"))
        )

    async def press(self, request: web.Request) -> web.Response:
        return await self._act(
            request, lambda d, p, n, b: d.press(p, n, _text(b, "text", required=False))
        )


def install_requests_api(api: Any, db: Database, config: Config, wake: Callable[[], None]) -> Any:
    """Add the requests endpoints to ``api`` (a ``bot.api.Api``); returns it."""
    handlers = RequestsApi(db, config, Texts(), wake).handlers()
    api.extend(OPERATIONS, handlers)
    return api


# -- helpers -------------------------------------------------------------------------------


def _number(request: web.Request) -> str:
    parsed = normalize_number(request.match_info["number"])
    if parsed is None or parsed[1]:
        raise ApiError(400, "bad_parameter", "number must look like Q20261128-0042")
    return parsed[0]


def _text(body: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name, "" if not required else None)
    if value is None and required:
        raise ApiError(400, "bad_body", f"{name} is required")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ApiError(400, "bad_body", f"{name} must be a string")
    return value


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer {low}-{high}")
    return int(raw)


def _minutes(delta: Any) -> int:
    return int(delta.total_seconds() // 60)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _request_json(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "number": r.number,
        "status": r.status,
        "category": r.category,
        "urgency": r.urgency,
        "description": r.description,
        "items": r.items,
        "quantity": r.quantity,
        "attachments": r.attachments,
        "level": r.level,
        "region_id": r.region_id,
        "handler_id": r.handler_id,
        "volunteer_id": r.volunteer_id,
        "volunteer_status": r.volunteer_status,
        "accept_due_at": _iso(r.accept_due_at),
        "resolve_due_at": _iso(r.resolve_due_at),
        "due_at": _iso(r.sla_due_at),
        "escalations": r.escalations,
        "reopen_count": r.reopen_count,
        "reply": r.reply,
        "satisfied": r.satisfied,
        "rating": r.rating,
        "created_at": _iso(r.created_at),
        "accepted_at": _iso(r.accepted_at),
        "resolved_at": _iso(r.resolved_at),
        "closed_at": _iso(r.closed_at),
    }
