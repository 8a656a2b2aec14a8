"""Quarantine endpoints of /api/v1: who is under quarantine or health observation in a region,
start a period for a person, end one early.

The rules are the chat commands' (:class:`flows.quarantine.QuarantineDesk`): staff only, only
people in their scope, 1-60 days starting at most 60 days back and 7 ahead.  A refusal is a 4xx
whose ``code`` names the reason and whose ``message`` is the sentence a chat user reads.  Each
call runs in one transaction, so a refused call stores nothing.  Lists are health data: every
one is written to the audit log; phone numbers are not part of them.

Start body::

    {"person": 123, "kind": "quarantine" | "observation", "start": "2026-11-28",
     "days": 14, "reason": "密接", "household": false}

``kind`` (default quarantine), ``start`` (default today), ``days`` (default from config) and
``household`` (the whole household) are optional; ``reason`` is required.  A period of N days
from ``start_day`` covers the days up to ``release_day`` (= start + N), when it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from aiohttp import web
from sqlalchemy.exc import IntegrityError

from bot.api import (
    CALLER,
    MAX_ID,
    STAFF_ROLES,
    Api,
    ApiError,
    Operation,
    _int_param,
    _json,
    _path,
    _query,
    json_body,
    scoped_region,
)
from bot.config import Config
from flows.checkin_push import local_day
from flows.quarantine import KINDS, MAX_REASON_CHARS, CommandError, QuarantineDesk
from flows.texts import Texts
from storage import checkin as store
from storage import repo
from storage.db import Database
from storage.models import utcnow

MAX_LIMIT = 500

OPERATIONS = [
    Operation(
        "GET",
        "/quarantines",
        "list_quarantines",
        "Open quarantine and observation periods (current or starting later) of people living "
        "in a region of the caller's scope, by id",
        [
            _query("region", "Region code (default: the caller's first scope)", {"type": "string"}),
            _query(
                "limit",
                f"Page size (1-{MAX_LIMIT})",
                {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            ),
            _query("after", "Return periods with id greater than this", {"type": "integer"}),
        ],
    ),
    Operation(
        "POST",
        "/quarantines",
        "start_quarantine",
        'Start a period for a person in scope: {"person", "reason", "kind", "start", "days", '
        '"household"}',
    ),
    Operation(
        "POST",
        "/quarantines/{id}/end",
        "end_quarantine",
        'End an open period now, before its release day: {"reason"} (optional)',
        [_path("id", "Quarantine period id")],
    ),
]


def install_quarantine_api(api: Api, db: Database, config: Config, wake: Callable[[], None]) -> Api:
    """Add the quarantine operations to ``api``; returns it (for the composition root)."""
    handlers = QuarantineApi(db, config, Texts(), wake)
    api.extend(
        OPERATIONS,
        {
            "list_quarantines": handlers.list,
            "start_quarantine": handlers.start,
            "end_quarantine": handlers.end,
        },
    )
    return api


class QuarantineApi:
    """Handlers of /api/v1/quarantines; ``wake`` nudges delivery after telling residents."""

    def __init__(
        self, db: Database, config: Config, texts: Texts, wake: Callable[[], None]
    ) -> None:
        self.db = db
        self.config = config
        self.texts = texts
        self.wake = wake

    def _desk(self, conn: Any, person: repo.PersonInfo) -> QuarantineDesk:
        return QuarantineDesk(
            conn=conn,
            db=self.db,
            texts=self.texts,
            checkin=self.config.checkin,
            tz=self.config.tz,
            now=utcnow(),
            actor=person,
            via="api",
        )

    def _refusal(self, error: CommandError) -> ApiError:
        return ApiError(error.status, error.code, self.texts.render(error.template, **error.values))

    async def list(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
        after = _int_param(request, "after", 0, 0, MAX_ID)
        code = request.query.get("region") or person.scope_regions(*STAFF_ROLES)[0].code
        today = local_day(utcnow(), self.config.tz)
        async with self.db.write() as conn:
            region = await scoped_region(conn, person, code)
            rows = await store.open_quarantines_in_scope(
                conn, [region.path], limit=limit, after_id=after
            )
            await repo.record_audit(
                conn,
                actor_id=person.id,
                action="api.checkin.quarantines",
                target_type="region",
                target_id=region.code,
                region_id=region.id,
                detail={"count": len(rows)},
            )
        items = [_period_json(r, today) for r in rows]
        next_after = items[-1]["id"] if len(items) == limit else None
        return _json(
            {
                "region": region.code,
                "date": today.isoformat(),
                "quarantines": items,
                "next_after": next_after,
            }
        )

    async def start(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        body = await json_body(request)
        unknown = set(body) - {"person", "kind", "start", "days", "reason", "household"}
        if unknown:
            raise ApiError(400, "bad_body", f"unknown fields: {sorted(unknown)}")
        target_id = _id_field(body, "person")
        kind = body.get("kind", "quarantine")
        if kind not in KINDS:
            raise ApiError(400, "bad_body", f"kind must be one of {list(KINDS)}")
        start = _date_field(body, "start")
        days = body.get("days")
        if days is not None and (isinstance(days, bool) or not isinstance(days, int)):
            raise ApiError(400, "bad_body", "days must be an integer 1-60")
        reason = _reason(body, required=True)
        household = body.get("household", False)
        if not isinstance(household, bool):
            raise ApiError(400, "bad_body", "household must be true or false")
        try:
            async with self.db.write() as conn:
                desk = self._desk(conn, person)
                target = await desk.find_person(str(target_id))
                started = await desk.start(
                    await desk.members(target, household),
                    kind=kind,
                    start=start,
                    days=days,
                    reason=reason,
                )
                if not started.marked:
                    # Everyone named is already in an open period: nothing to store.
                    raise CommandError(
                        "checkin/quarantine_marked",
                        code="already_open",
                        status=409,
                        kind=kind,
                        marked=[],
                        skipped=started.skipped,
                        start_day=started.start_day,
                        end_day=started.end_day,
                        days=started.days,
                    )
        except CommandError as error:
            raise self._refusal(error) from None
        except IntegrityError:
            # Another request opened a period for the same person in the meantime.
            raise ApiError(
                409, "already_open", "a period was opened for this person at the same time"
            ) from None
        self.wake()
        return _json(
            {
                "kind": started.kind,
                "start_day": started.start_day.isoformat(),
                "release_day": started.end_day.isoformat(),
                "days": started.days,
                "reason": reason,
                "started": [
                    {"id": qid, "person": {"id": p.id, "name": p.name}} for p, qid in started.marked
                ],
                "skipped": [{"id": p.id, "name": p.name} for p in started.skipped],
            },
            status=201,
        )

    async def end(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        raw = request.match_info["id"]
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_ID:
            raise ApiError(400, "bad_parameter", "id must be a positive integer")
        body = await json_body(request)
        unknown = set(body) - {"reason"}
        if unknown:
            raise ApiError(400, "bad_body", f"unknown fields: {sorted(unknown)}")
        reason = _reason(body, required=False)
        try:
            async with self.db.write() as conn:
                desk = self._desk(conn, person)
                period = await desk.end_period(int(raw), reason=reason)
                target = await repo.load_person(conn, period.person_id)
        except CommandError as error:
            raise self._refusal(error) from None
        assert target is not None
        self.wake()
        return _json(
            {
                "id": period.id,
                "person": {"id": target.id, "name": target.name},
                "kind": period.kind,
                "start_day": period.start_day.isoformat(),
                "release_day": period.end_day.isoformat(),
                "status": "ended",
                "ended_at": desk.now.isoformat(),
            }
        )


# -- helpers -------------------------------------------------------------------------------


def _id_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if value is None:
        raise ApiError(400, "bad_body", f"{name} is required (a person id)")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise ApiError(400, "bad_body", f"{name} must be a person id (a positive integer)")
    return value


def _date_field(body: dict[str, Any], name: str) -> date | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "bad_body", f"{name} must be a date, YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "bad_body", f"{name} must be a date, YYYY-MM-DD") from None


def _reason(body: dict[str, Any], *, required: bool) -> str | None:
    value = body.get("reason")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, "bad_body", "reason is required (a non-empty string)")
    if len(value.strip()) > MAX_REASON_CHARS:
        raise ApiError(400, "bad_body", f"reason must be at most {MAX_REASON_CHARS} characters")
    return value.strip()


def _period_json(row: Any, today: date) -> dict[str, Any]:
    household = f"{row.building or ''}{row.door or ''}"
    started = row.start_day <= today
    return {
        "id": row.id,
        "person": {"id": row.person_id, "name": row.name},
        "region": row.region_code,
        "household": household,
        "kind": row.kind,
        "start_day": row.start_day.isoformat(),
        "release_day": row.end_day.isoformat(),
        "days": (row.end_day - row.start_day).days,
        "day_number": (today - row.start_day).days + 1 if started else None,
        "reason": row.reason,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
    }
