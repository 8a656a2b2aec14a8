"""REST API of rumor clarification: the knowledge base, the review queue, pushes and the report.

Admins manage clarifications inside their scope (one for everyone needs an admin of a whole
city); the review queue shows the items asked about by people in the caller's scope; the report
is open to admins and wardens.  Rules live in :mod:`flows.rumors`; a refusal becomes a 4xx whose
``code`` is the reason and whose ``message`` is rendered from ``templates/zh_CN/rumors/refused``.
Everything that changes something, and every view of what residents asked, is audited.

A clarification body is a JSON object::

    {"claim": "...", "verdict": "false" | "misleading" | "true" | "unverified",
     "explanation": "...", "source_name": "市卫健委", "source_url": "https://...",
     "region": "S01" | null, "expires_at": "2026-12-01T00:00:00+08:00" | null}

An edit (``PATCH``) takes any of these plus ``"notify": false`` to correct silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bot.api import (
    CALLER,
    MAX_ID,
    Api,
    ApiError,
    Handler,
    Operation,
    _int_param,
    _json,
    _path,
    _query,
    refusal_error,
)
from bot.config import Config
from flows import notices, rumors
from flows.texts import Texts
from storage import repo
from storage import rumors as store
from storage.db import Database
from storage.models import utcnow
from storage.rumor_models import ClarificationStatus, ReviewStatus

MAX_LIMIT = 200
_ID = _path("id", "Clarification id")
_ITEM = _path("id", "Review item id")
_BASE = "/rumors/clarifications"

OPERATIONS = [
    Operation("POST", _BASE, "create_rumor_clarification", "Create a draft clarification"),
    Operation(
        "GET",
        _BASE,
        "list_rumor_clarifications",
        "Clarifications for everyone or for regions related to the caller's scope, newest first",
        [
            _query(
                "status",
                "Only this status",
                {"type": "string", "enum": [s.value for s in ClarificationStatus]},
            ),
            _query("limit", f"Page size (1-{MAX_LIMIT})", {"type": "integer"}),
            _query(
                "before", "Only clarifications with id below this (paging)", {"type": "integer"}
            ),
        ],
    ),
    Operation(
        "GET",
        _BASE + "/{id}",
        "get_rumor_clarification",
        "One clarification with its history and pushes",
        [_ID],
    ),
    Operation(
        "PATCH",
        _BASE + "/{id}",
        "edit_rumor_clarification",
        "Edit a clarification; a published one keeps history and its recipients get the update",
        [_ID],
    ),
    Operation(
        "POST",
        _BASE + "/{id}/publish",
        "publish_rumor_clarification",
        "Publish; everyone who asked about it (or anything grouped with it) is told once",
        [_ID],
    ),
    Operation(
        "POST",
        _BASE + "/{id}/withdraw",
        "withdraw_rumor_clarification",
        "Withdraw a published clarification: no longer answered, and everyone who received it "
        "(people, and regions it was pushed to) is told",
        [_ID],
    ),
    Operation(
        "POST",
        _BASE + "/{id}/push",
        "push_rumor_clarification",
        'Push to regions in the caller\'s scope as a notice: {"regions": [...], "groups": true, '
        '"individuals": true, "urgent": false}',
        [_ID],
    ),
    Operation(
        "GET",
        "/rumors/review",
        "list_rumor_review",
        "Review items asked about in the caller's scope, most askers first (audited)",
        [
            _query(
                "status",
                "Items of this status (default pending)",
                {"type": "string", "enum": [s.value for s in ReviewStatus]},
            ),
            _query("limit", f"Page size (1-{MAX_LIMIT})", {"type": "integer"}),
            _query("offset", "Skip this many items", {"type": "integer"}),
        ],
    ),
    Operation(
        "POST",
        "/rumors/review/{id}/attach",
        "attach_rumor_review",
        'Answer the item with an existing clarification: {"clarification_id": 12}',
        [_ITEM],
    ),
    Operation(
        "POST",
        "/rumors/review/{id}/clarification",
        "clarify_rumor_review",
        'Create a clarification for the item (body as for create, plus "publish": true)',
        [_ITEM],
    ),
    Operation(
        "POST",
        "/rumors/review/{id}/dismiss",
        "dismiss_rumor_review",
        "Dismiss the item (not a rumor worth answering)",
        [_ITEM],
    ),
    Operation(
        "GET",
        "/rumors/report",
        "rumor_report",
        "Most asked claims over a period, answered and unanswered, per region below",
        [
            _query("region", "Region code (default: the caller's scope)", {"type": "string"}),
            _query("days", "Period in days, up to now (1-366)", {"type": "integer"}),
            _query("limit", "Claims per list (1-100)", {"type": "integer"}),
        ],
    ),
]


class RumorsApi:
    """Handlers of /api/v1/rumors."""

    def __init__(self, db: Database, config: Config, wake_delivery: Callable[[], None]) -> None:
        self.db = db
        self.config = config
        self.wake_delivery = wake_delivery
        self.texts = Texts()

    def handlers(self) -> dict[str, Handler]:
        return {
            "create_rumor_clarification": self.create,
            "list_rumor_clarifications": self.list,
            "get_rumor_clarification": self.get,
            "edit_rumor_clarification": self.edit,
            "publish_rumor_clarification": self.publish,
            "withdraw_rumor_clarification": self.withdraw,
            "push_rumor_clarification": self.push,
            "list_rumor_review": self.review,
            "attach_rumor_review": self.attach,
            "clarify_rumor_review": self.clarify,
            "dismiss_rumor_review": self.dismiss,
            "rumor_report": self.report,
        }

    async def _after_commit(self, delivered: rumors.Delivered) -> None:
        await rumors.queue_corrections(
            self.db, delivered, texts=self.texts, settings=self.config, now=utcnow()
        )
        self.wake_delivery()

    # -- clarifications ----------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        body = await self._body(request)
        try:
            async with self.db.write() as conn:
                cid = await rumors.create_clarification(
                    conn, self.db, person, body, settings=self.config, now=utcnow()
                )
                row = await store.get_clarification(conn, cid)
                data = await _clarification_json(conn, row)
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        return _json(data, status=201)

    async def list(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        status = request.query.get("status")
        if status is not None and status not in {s.value for s in ClarificationStatus}:
            raise refusal_error(
                self.texts,
                rumors.RumorRefused(
                    "bad_field",
                    field="status",
                    expected="、".join(s.value for s in ClarificationStatus),
                ),
            )
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        before = _int_param(request, "before", MAX_ID, 1, MAX_ID)
        try:
            async with self.db.read() as conn:
                rows = await rumors.list_managed_clarifications(
                    conn, person, status=status, limit=limit, before=before
                )
                items = [await _clarification_json(conn, row) for row in rows]
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        next_before = items[-1]["id"] if len(items) == limit else None
        return _json({"clarifications": items, "next_before": next_before})

    async def get(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        cid = _id(request)
        try:
            async with self.db.read() as conn:
                record = await rumors.read_clarification(conn, person, cid)
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        data = _record_json(record.row, record.region)
        data["history"] = [
            {
                "version": h.version,
                "claim": h.claim,
                "verdict": h.verdict,
                "explanation": h.explanation,
                "source_name": h.source_name,
                "source_url": h.source_url,
                "region_id": h.region_id,
                "expires_at": h.expires_at,
                "status": h.status,
                "edited_by": h.edited_by,
                "replaced_at": h.replaced_at,
            }
            for h in record.history
        ]
        data["pushes"] = [
            {
                "version": p.version,
                "notice_id": p.notice_id,
                "pushed_by": p.pushed_by,
                "pushed_at": p.pushed_at,
            }
            for p in record.pushes
        ]
        return _json(data)

    async def edit(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        cid = _id(request)
        body = await self._body(request)
        now = utcnow()
        try:
            async with self.db.write() as conn:
                delivered = await rumors.edit_clarification(
                    conn,
                    self.db,
                    person,
                    cid,
                    body,
                    settings=self.config,
                    texts=self.texts,
                    now=now,
                )
                data = await _clarification_json(conn, await store.get_clarification(conn, cid))
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        await self._after_commit(delivered)
        return _json({**data, "delivered": _delivered_json(delivered)})

    async def publish(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        cid = _id(request)
        now = utcnow()
        try:
            async with self.db.write() as conn:
                delivered = await rumors.publish_clarification(
                    conn, self.db, person, cid, settings=self.config, texts=self.texts, now=now
                )
                data = await _clarification_json(conn, await store.get_clarification(conn, cid))
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        await self._after_commit(delivered)
        return _json({**data, "delivered": _delivered_json(delivered)})

    async def withdraw(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        cid = _id(request)
        try:
            async with self.db.write() as conn:
                delivered = await rumors.withdraw_clarification(
                    conn,
                    self.db,
                    person,
                    cid,
                    settings=self.config,
                    texts=self.texts,
                    now=utcnow(),
                )
                data = await _clarification_json(conn, await store.get_clarification(conn, cid))
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        await self._after_commit(delivered)
        told = {"withdrawn": delivered.withdrawn, "withdrawal_notices": delivered.notice_ids}
        return _json({**data, "delivered": told})

    async def push(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        cid = _id(request)
        body = await self._body(request)
        regions = body.get("regions")
        if (
            not isinstance(regions, list)
            or not regions
            or not all(isinstance(code, str) and code for code in regions)
        ):
            raise refusal_error(
                self.texts,
                rumors.RumorRefused("bad_field", field="regions", expected="地区编码的列表"),
            )
        flags = {}
        for name, default in (("groups", True), ("individuals", True), ("urgent", False)):
            value = body.get(name, default)
            if not isinstance(value, bool):
                raise refusal_error(self.texts, rumors.RumorRefused("bad_flag", field=name))
            flags[name] = value
        unknown = sorted(set(body) - {"regions", *flags})
        if unknown:
            raise refusal_error(self.texts, rumors.RumorRefused("unknown_field", field=unknown[0]))
        now = utcnow()
        try:
            async with self.db.write() as conn:
                created = await rumors.push_clarification(
                    conn,
                    person,
                    cid,
                    region_codes=regions,
                    settings=self.config,
                    texts=self.texts,
                    now=now,
                    **flags,
                )
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        await notices.queue_notice(
            self.db, created.notice_id, texts=self.texts, settings=self.config, now=now
        )
        self.wake_delivery()
        return _json(
            {
                "notice_id": created.notice_id,
                "code": created.code,
                "people": created.people,
                "groups": created.groups,
                "deliver_at": created.deliver_at,
            },
            status=201,
        )

    # -- review queue ------------------------------------------------------------------------

    async def review(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        status = request.query.get("status", ReviewStatus.PENDING.value)
        if status not in {s.value for s in ReviewStatus}:
            raise refusal_error(
                self.texts,
                rumors.RumorRefused(
                    "bad_field", field="status", expected="、".join(s.value for s in ReviewStatus)
                ),
            )
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, 100_000)
        try:
            async with self.db.write() as conn:
                rows = await rumors.list_review(
                    conn, person, status=status, limit=limit, offset=offset, via="api"
                )
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        return _json(
            {
                "items": [
                    {
                        "id": r.id,
                        "sample": r.sample,
                        "ask_count": r.ask_count,
                        "asker_count": r.asker_count,
                        "first_asked_at": r.first_asked_at,
                        "last_asked_at": r.last_asked_at,
                        "status": r.status,
                        "clarification_id": r.clarification_id,
                    }
                    for r in rows
                ]
            }
        )

    async def attach(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        item_id = _id(request)
        body = await self._body(request)
        cid = body.get("clarification_id")
        if not isinstance(cid, int) or isinstance(cid, bool) or not 0 < cid <= MAX_ID:
            raise refusal_error(
                self.texts,
                rumors.RumorRefused("bad_field", field="clarification_id", expected="辟谣信息编号"),
            )
        try:
            async with self.db.write() as conn:
                delivered = await rumors.attach_item(
                    conn,
                    self.db,
                    person,
                    item_id,
                    cid,
                    settings=self.config,
                    texts=self.texts,
                    now=utcnow(),
                )
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        await self._after_commit(delivered)
        return _json(
            {"item_id": item_id, "clarification_id": cid, "delivered": _delivered_json(delivered)}
        )

    async def clarify(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        item_id = _id(request)
        body = await self._body(request)
        try:
            async with self.db.write() as conn:
                cid, delivered = await rumors.clarify_item(
                    conn,
                    self.db,
                    person,
                    item_id,
                    body,
                    settings=self.config,
                    texts=self.texts,
                    now=utcnow(),
                )
                data = await _clarification_json(conn, await store.get_clarification(conn, cid))
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        await self._after_commit(delivered)
        return _json({**data, "delivered": _delivered_json(delivered)}, status=201)

    async def dismiss(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        item_id = _id(request)
        try:
            async with self.db.write() as conn:
                await rumors.dismiss_item(conn, person, item_id, now=utcnow())
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        return _json({"item_id": item_id, "status": ReviewStatus.DISMISSED.value})

    # -- report ------------------------------------------------------------------------------

    async def report(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        config = self.config.rumors
        days = _int_param(request, "days", config.report_days, 1, 366)
        limit = _int_param(request, "limit", config.report_limit, 1, 100)
        code = request.query.get("region")
        try:
            async with self.db.write() as conn:
                root, result = await rumors.report_for(
                    conn, person, region_code=code, days=days, limit=limit, now=utcnow(), via="api"
                )
        except rumors.RumorRefused as refused:
            raise refusal_error(self.texts, refused) from None
        return _json(
            {
                "region": root.code if root else None,
                "since": result.since,
                "until": result.until,
                "asks": result.asks,
                "answered": [_line_json(line) for line in result.answered],
                "unanswered": [_line_json(line) for line in result.unanswered],
            }
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise refusal_error(self.texts, rumors.RumorRefused("bad_body"))
        return body


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= MAX_ID:
        raise ApiError(400, "bad_parameter", "id must be a positive number")
    return int(raw)


async def _clarification_json(conn: Any, row: Any) -> dict[str, Any]:
    region = await repo.get_region(conn, row.region_id) if row.region_id is not None else None
    return _record_json(row, region)


def _record_json(row: Any, region: repo.RegionInfo | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "claim": row.claim,
        "verdict": row.verdict,
        "explanation": row.explanation,
        "source_name": row.source_name,
        "source_url": row.source_url,
        "region": region.code if region else None,
        "expires_at": row.expires_at,
        "status": row.status,
        "version": row.version,
        "published_at": row.published_at,
        "withdrawn_at": row.withdrawn_at,
        "created_by": row.created_by,
        "updated_by": row.updated_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _delivered_json(delivered: rumors.Delivered) -> dict[str, Any]:
    return {
        "notified": delivered.notified,
        "updated": delivered.updated,
        "correction_notices": delivered.notice_ids,
    }


def _line_json(line: rumors.ReportLine) -> dict[str, Any]:
    return {
        "kind": line.kind,
        "id": line.id,
        "text": line.text,
        "verdict": line.verdict,
        "status": line.status,
        "asks": line.asks,
        "people": line.people,
        "regions": [{"code": c, "name": n, "asks": k} for c, n, k in line.regions],
    }


def install_rumors_api(
    api: Api, db: Database, config: Config, wake_delivery: Callable[[], None]
) -> Api:
    """Add the rumor operations to ``api`` (returns it, for the composition root)."""
    handlers = RumorsApi(db, config, wake_delivery)
    api.extend(OPERATIONS, handlers.handlers())
    return api
