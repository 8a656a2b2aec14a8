"""REST API of notices: create (now or scheduled), list, one notice with its receipts, edit or
cancel a scheduled one, remind those who have not acknowledged, and the recipient list.

The rules are the chat's (:mod:`flows.notices`): only wardens and admins, only within their
scope; a refusal becomes a 4xx whose ``code`` is the reason and whose ``message`` is the same
sentence a chat user reads.  Request bodies are JSON objects::

    {"text": "...", "regions": ["G0101"], "groups": true, "individuals": true,
     "roles": ["volunteer"], "person_status": "quarantined", "ack_required": true,
     "urgent": false, "send_at": "2026-12-01T09:00:00+08:00" | "明天8点" | null}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
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
    is_number,
    refusal_error,
)
from bot.config import Config
from flows import notices
from flows.notice_input import NoticeInputError, parse_send_time
from flows.texts import Texts
from storage import notices as store
from storage import repo
from storage.db import Database
from storage.models import utcnow

MAX_LIMIT = 200
_ID = _path("id", "Notice id")

OPERATIONS = [
    Operation(
        "POST",
        "/notices",
        "create_notice",
        "Create a notice, sent now (send_at null) or at send_at; body described in the module",
    ),
    Operation(
        "GET",
        "/notices",
        "list_notices",
        "Notices the caller sent or whose audience lies in their scope, newest first",
        [
            _query(
                "status",
                "Only this status",
                {"type": "string", "enum": ["scheduled", "queuing", "sent", "cancelled"]},
            ),
            _query("limit", f"Page size (1-{MAX_LIMIT})", {"type": "integer"}),
            _query("before", "Only notices with id below this (paging)", {"type": "integer"}),
        ],
    ),
    Operation(
        "GET", "/notices/{id}", "get_notice", "One notice with delivery and ack counts", [_ID]
    ),
    Operation(
        "PATCH",
        "/notices/{id}",
        "edit_notice",
        "Edit a scheduled notice (any field of the create body)",
        [_ID],
    ),
    Operation("POST", "/notices/{id}/cancel", "cancel_notice", "Cancel a scheduled notice", [_ID]),
    Operation(
        "POST",
        "/notices/{id}/resend",
        "resend_notice",
        "Remind the recipients and groups that have not acknowledged",
        [_ID],
    ),
    Operation(
        "GET",
        "/notices/{id}/recipients",
        "notice_recipients",
        "Individual recipients with delivery status and acknowledgement (audited)",
        [
            _ID,
            _query("unacknowledged", "Only those who have not acknowledged", {"type": "boolean"}),
            _query("limit", f"Page size (1-{MAX_LIMIT})", {"type": "integer"}),
            _query("after", "Only people with id above this (paging)", {"type": "integer"}),
        ],
    ),
]


class NoticesApi:
    """Handlers of /api/v1/notices."""

    def __init__(self, db: Database, config: Config, wake_delivery: Callable[[], None]) -> None:
        self.db = db
        self.config = config
        self.wake_delivery = wake_delivery
        self.texts = Texts()

    def handlers(self) -> dict[str, Handler]:
        return {
            "create_notice": self.create,
            "list_notices": self.list,
            "get_notice": self.get,
            "edit_notice": self.edit,
            "cancel_notice": self.cancel,
            "resend_notice": self.resend,
            "notice_recipients": self.recipients,
        }

    def _bad_field(self, name: str, expected: str) -> ApiError:
        return refusal_error(
            self.texts, notices.NoticeRefused("bad_field", field=name, expected=expected)
        )

    # -- handlers ----------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        body = await _body(request)
        now = utcnow()
        try:
            notices.check_sender(person)
            fields = self._fields(body, now, defaults=None)
            created = await notices.submit_notice(
                self.db,
                person,
                texts=self.texts,
                settings=self.config,
                now=now,
                via="api",
                **fields,
            )
        except notices.NoticeRefused as refused:
            raise refusal_error(self.texts, refused) from None
        self.wake_delivery()
        async with self.db.read() as conn:
            data = await _stored_notice_json(conn, created.notice_id)
        return _json(data, status=201)

    async def list(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        self._sender(person)
        status = request.query.get("status")
        if status is not None and status not in {s.value for s in notices.NoticeStatus}:
            raise self._bad_field("status", "scheduled / queuing / sent / cancelled")
        limit = _int_param(request, "limit", 20, 1, MAX_LIMIT)
        before = _int_param(request, "before", MAX_ID, 1, MAX_ID)
        async with self.db.write() as conn:
            rows = await notices.list_visible(
                conn, person, status=status, limit=limit, before_id=before, via="api"
            )
        items = [_notice_json(row, receipt) for row, receipt in rows]
        next_before = items[-1]["id"] if len(items) == limit else None
        return _json({"notices": items, "next_before": next_before})

    async def get(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        self._sender(person)
        try:
            async with self.db.write() as conn:
                notice, receipt = await notices.view_notice(
                    conn, person, _notice_id(request), via="api"
                )
        except notices.NoticeRefused as refused:
            raise refusal_error(self.texts, refused) from None
        return _json(_notice_json(notice, receipt))

    async def edit(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        body = await _body(request)
        now = utcnow()
        try:
            async with self.db.write() as conn:
                notice = await self._managed(conn, person, request)
                if notice.status != notices.NoticeStatus.SCHEDULED:
                    raise notices.NoticeRefused(
                        "not_editable", 409, code=notice.code, status=notice.status
                    )
                fields = self._fields(body, now, defaults=notice)
                draft = await notices.validate(conn, person, now=now, **fields)
                await notices.edit_notice(conn, person, notice, draft, now=now)
                data = await _stored_notice_json(conn, notice.id)
        except notices.NoticeRefused as refused:
            raise refusal_error(self.texts, refused) from None
        return _json(data)

    async def cancel(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        now = utcnow()
        try:
            async with self.db.write() as conn:
                notice = await self._managed(conn, person, request)
                await notices.cancel_notice(conn, person, notice, now=now)
                data = await _stored_notice_json(conn, notice.id)
        except notices.NoticeRefused as refused:
            raise refusal_error(self.texts, refused) from None
        return _json(data)

    async def resend(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        now = utcnow()
        try:
            async with self.db.write() as conn:
                notice = await self._managed(conn, person, request)
                reminded = await notices.remind_unacknowledged(
                    conn, person, notice, texts=self.texts, settings=self.config, now=now
                )
        except notices.NoticeRefused as refused:
            raise refusal_error(self.texts, refused) from None
        self.wake_delivery()
        return _json(
            {
                "id": notice.id,
                "code": notice.code,
                "round": reminded.round_no,
                "targets": reminded.targets,
                "deliver_at": reminded.deliver_at,
            }
        )

    async def recipients(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        raw = request.query.get("unacknowledged", "false").lower()
        if raw not in ("true", "false", "1", "0"):
            raise self._bad_field("unacknowledged", "true 或 false")
        limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
        after = _int_param(request, "after", 0, 0, MAX_ID)
        async with self.db.write() as conn:
            notice = await self._managed(conn, person, request)
            rows = await notices.list_recipients(
                conn,
                person,
                notice,
                unacked_only=raw in ("true", "1"),
                limit=limit,
                after_id=after,
                via="api",
            )
        items = [
            {
                "person_id": r.id,
                "name": r.name,
                "region": r.region_code,
                "delivery": r.status,
                "sent_at": r.sent_at,
                "acknowledged_at": r.acked_at,
            }
            for r in rows
        ]
        next_after = items[-1]["person_id"] if len(items) == limit else None
        return _json({"recipients": items, "next_after": next_after})

    # -- helpers -----------------------------------------------------------------------------

    def _sender(self, person: repo.PersonInfo) -> None:
        try:
            notices.check_sender(person)
        except notices.NoticeRefused as refused:
            raise refusal_error(self.texts, refused) from None

    async def _managed(self, conn: Any, person: repo.PersonInfo, request: web.Request) -> Any:
        self._sender(person)
        try:
            return await notices.find_managed(conn, person, notice_id=_notice_id(request))
        except notices.NoticeRefused as refused:
            raise refusal_error(self.texts, refused) from None

    def _fields(self, body: dict[str, Any], now: datetime, defaults: Any) -> dict[str, Any]:
        """The create/edit body as ``notices.validate`` arguments; an edit starts from the
        stored notice (``defaults``)."""
        audience = defaults.audience if defaults is not None else {}

        def pick(name: str, fallback: Any) -> Any:
            return body.get(name, fallback)

        text = pick("text", defaults.text if defaults is not None else None)
        regions = pick("regions", audience.get("region_codes"))
        if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
            raise notices.NoticeRefused(
                "bad_field", field="regions", expected='区域编码的列表，如 ["G0101"]'
            )
        flags = {}
        for name, fallback in (
            ("groups", audience.get("groups", True)),
            ("individuals", audience.get("individuals", True)),
            ("ack_required", defaults.ack_required if defaults is not None else False),
            ("urgent", defaults.urgent if defaults is not None else False),
        ):
            value = pick(name, fallback)
            if not isinstance(value, bool):
                raise notices.NoticeRefused("bad_field", field=name, expected="true 或 false")
            flags[name] = value
        roles = pick("roles", audience.get("roles", []))
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise notices.NoticeRefused("bad_field", field="roles", expected="字符串列表")
        status = pick("person_status", audience.get("status"))
        if status is not None and not isinstance(status, str):
            raise notices.NoticeRefused(
                "bad_field", field="person_status", expected="字符串或 null"
            )
        if "send_at" in body:
            send_at = self._send_at(body["send_at"], now)
        else:
            send_at = defaults.send_at if defaults is not None else None
            if send_at is not None and send_at <= now:
                # Due already and held (the quiet hours): it stays due, at its own time.
                send_at = None
        return {
            "text": text,
            "region_words": regions,
            "roles": roles,
            "status": status,
            "send_at": send_at,
            "max_chars": self.config.notices.max_text_chars,
            **flags,
        }

    def _send_at(self, value: Any, now: datetime) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise notices.NoticeRefused(
                "bad_field", field="send_at", expected="ISO 8601 时间、“明天8点”这样的时间或 null"
            )
        try:
            return parse_send_time(value, now, self.config.tz)
        except NoticeInputError as error:
            raise notices.NoticeRefused.from_input(error) from None


def _notice_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not is_number(raw) or int(raw) > MAX_ID:
        raise ApiError(404, "not_found", f"no notice with id {raw}")
    return int(raw)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", "body must be a JSON object")
    return body


async def _stored_notice_json(conn: Any, notice_id: int) -> dict[str, Any]:
    """The notice as stored now, with its receipts."""
    notice = await store.get_notice(conn, notice_id)
    assert notice is not None
    receipt = (await store.receipts(conn, [notice_id]))[notice_id]
    return _notice_json(notice, receipt)


def _notice_json(notice: Any, receipt: store.Receipt) -> dict[str, Any]:
    audience = notice.audience
    return {
        "id": notice.id,
        "code": notice.code,
        "status": notice.status,
        "text": notice.text,
        "rendered": notice.rendered,
        "sender_id": notice.sender_id,
        "audience": {
            "regions": audience.get("region_codes", []),
            "groups": audience.get("groups"),
            "individuals": audience.get("individuals"),
            "roles": audience.get("roles", []),
            "person_status": audience.get("status"),
        },
        "ack_required": notice.ack_required,
        "urgent": notice.urgent,
        "send_at": notice.send_at,
        "created_at": notice.created_at,
        "updated_at": notice.updated_at,
        "queued_at": notice.queued_at,
        "cancelled_at": notice.cancelled_at,
        "resend_count": notice.resend_count,
        "last_resent_at": notice.last_resent_at,
        "receipts": receipt.as_dict(),
    }


def install_notices_api(
    api: Api, db: Database, config: Config, wake_delivery: Callable[[], None]
) -> Api:
    """Add the notices operations to ``api`` (returns it, for the composition root)."""
    handlers = NoticesApi(db, config, wake_delivery)
    api.extend(OPERATIONS, handlers.handlers())
    return api
