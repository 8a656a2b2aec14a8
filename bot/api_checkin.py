"""Check-in endpoints of /api/v1: records by region and date, and a day's summary per grid.

Both are scoped to the caller's regions and every call is written to the audit log (these are
health data).  Phone numbers are never part of a check-in answer.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from aiohttp import web

from bot.api import (
    CALLER,
    MAX_ID,
    STAFF_ROLES,
    Api,
    ApiError,
    Operation,
    _int_param,
    _json,
    _query,
    scoped_region,
)
from bot.config import Config
from flows.checkin_push import local_day
from storage import checkin as store
from storage import repo
from storage.db import Database
from storage.models import utcnow

_REGION = _query("region", "Region code (default: the caller's first scope)", {"type": "string"})
_DATE = _query(
    "date", "Local day, YYYY-MM-DD (default: today)", {"type": "string", "format": "date"}
)

OPERATIONS = [
    Operation(
        "GET",
        "/checkin/records",
        "checkin_records",
        "Check-in records of a day for people living in a region of the caller's scope",
        [
            _REGION,
            _DATE,
            _query("limit", "Page size (1-500)", {"type": "integer", "minimum": 1, "maximum": 500}),
            _query("after", "Return records with id greater than this", {"type": "integer"}),
            _query(
                "history",
                "Also return records replaced by a later answer the same day",
                {"type": "boolean"},
            ),
        ],
    ),
    Operation(
        "GET",
        "/checkin/summary",
        "checkin_summary",
        "A day's check-in counts per grid of a region in the caller's scope",
        [_REGION, _DATE],
    ),
]


def install_checkin_api(api: Api, db: Database, config: Config) -> Api:
    """Add the check-in operations to ``api``; returns it (for the composition root)."""
    handlers = CheckinApi(config, db)
    api.extend(
        OPERATIONS, {"checkin_records": handlers.records, "checkin_summary": handlers.summary}
    )
    return api


class CheckinApi:
    def __init__(self, config: Config, db: Database) -> None:
        self.config = config
        self.db = db

    def _day(self, request: web.Request) -> date:
        raw = request.query.get("date")
        if raw is None:
            return local_day(utcnow(), self.config.tz)
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise ApiError(400, "bad_parameter", "date must be YYYY-MM-DD") from None

    async def records(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        limit = _int_param(request, "limit", 100, 1, 500)
        after = _int_param(request, "after", 0, 0, MAX_ID)
        history = request.query.get("history", "false").lower()
        if history not in ("true", "false", "1", "0"):
            raise ApiError(400, "bad_parameter", "history must be true or false")
        day = self._day(request)
        code = request.query.get("region") or person.scope_regions(*STAFF_ROLES)[0].code
        async with self.db.write() as conn:
            region = await scoped_region(conn, person, code)
            rows = await store.records_in_scope(
                conn,
                [region.path],
                day,
                limit=limit,
                after_id=after,
                history=history in ("true", "1"),
            )
            await repo.record_audit(
                conn,
                actor_id=person.id,
                action="api.checkin.records",
                target_type="region",
                target_id=region.code,
                region_id=region.id,
                detail={"date": day.isoformat(), "count": len(rows)},
            )
        items = [_record_json(r) for r in rows]
        next_after = items[-1]["id"] if len(items) == limit else None
        return _json({"date": day.isoformat(), "records": items, "next_after": next_after})

    async def summary(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        day = self._day(request)
        code = request.query.get("region") or person.scope_regions(*STAFF_ROLES)[0].code
        async with self.db.write() as conn:
            region = await scoped_region(conn, person, code)
            grids = await store.grid_day_counts(conn, [region], day)
            await repo.record_audit(
                conn,
                actor_id=person.id,
                action="api.checkin.summary",
                target_type="region",
                target_id=region.code,
                region_id=region.id,
                detail={"date": day.isoformat()},
            )
        items = [
            {
                "grid": grid.code,
                "name": grid.name,
                "residents": c.total,
                "complete": c.complete,
                "incomplete": c.incomplete,
                "missing": c.missing,
                "moderate": c.moderate,
                "high": c.high,
                "rate": round(c.complete / c.total, 4) if c.total else None,
            }
            for grid, c in grids
        ]
        return _json({"date": day.isoformat(), "region": region.code, "grids": items})


def _record_json(row: Any) -> dict[str, Any]:
    household = f"{row.building or ''}{row.door or ''}" if row.building or row.door else ""
    return {
        "id": row.id,
        "person": {"id": row.person_id, "name": row.name},
        "reported_by": (
            None
            if row.reporter_id in (None, row.person_id)
            else {"id": row.reporter_id, "name": row.reporter_name}
        ),
        "region": row.region_code,
        "household": household,
        "date": row.day.isoformat(),
        "slot": row.slot,
        "status": row.status,
        "risk": row.risk,
        "reasons": list(row.reasons or []),
        "answers": dict(row.answers or {}),
        "created_at": row.created_at.isoformat(),
        "replaced_at": row.replaced_at.isoformat() if row.replaced_at else None,
    }
