"""The audit log page (admins): who viewed or changed what, within the admin's scope, filtered
by actor (person id or exact name), action (prefix, e.g. ``console.``) and local date range."""

from __future__ import annotations

from datetime import date, time, timedelta

from aiohttp import web

from bot.console.site import (
    ADMIN_ROLES,
    Console,
    PageError,
    audit,
    console_of,
    query_int,
    render,
    user_of,
)
from flows.checkin_push import at_local
from storage import repo

MAX_RANGE_DAYS = 366


def install(console: Console) -> None:
    console.add_page("GET", "/audit", audit_page, name="audit", roles=ADMIN_ROLES)
    console.add_nav("audit", "audit", roles=ADMIN_ROLES)


FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(9998, 12, 31)


def _day(request: web.Request, name: str) -> date | None:
    raw = request.query.get(name, "").strip()
    if not raw:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise PageError(400, "bad_date", name=name) from None
    # The log holds no day outside these, and at the calendar's ends the day's bounds in
    # UTC overflow.
    if not FIRST_DAY <= day <= LAST_DAY:
        raise PageError(400, "bad_date", name=name)
    return day


def _text_filter(request: web.Request, name: str) -> str:
    value = request.query.get(name, "").strip()[:64]
    if "\x00" in value:  # PostgreSQL refuses to compare text holding a NUL
        raise PageError(400, "bad_parameter", name=name)
    return value


async def audit_page(request: web.Request) -> web.Response:
    """One page of the audit log of the admin's scope, newest first."""
    console = console_of(request)
    user = user_of(request)
    tz = console.config.tz
    size = console.settings.page_size
    page = query_int(request, "page", 1, 1, 100_000)
    actor = _text_filter(request, "actor")
    action = _text_filter(request, "action")
    first, last = _day(request, "from"), _day(request, "to")
    if first and last and (last < first or (last - first).days > MAX_RANGE_DAYS):
        raise PageError(400, "bad_range")
    actor_id = int(actor) if actor.isascii() and actor.isdigit() and len(actor) < 19 else None
    filters = repo.AuditFilter(
        paths=tuple(user.paths(*ADMIN_ROLES)),
        actor_id=actor_id,
        actor_name=actor if actor and actor_id is None else None,
        action=action or None,
        since=at_local(first, time(0), tz) if first else None,
        until=at_local(last + timedelta(days=1), time(0), tz) if last else None,
    )
    async with console.db.write() as conn:
        total, rows = await repo.list_audit(conn, filters, limit=size, offset=(page - 1) * size)
        await audit(
            conn,
            request,
            "console.audit.view",
            target_type="audit_log",
            detail={"actor": actor, "action": action, "page": page, "count": len(rows)},
        )
    query = {
        k: v
        for k, v in {
            "actor": actor,
            "action": action,
            "from": first.isoformat() if first else "",
            "to": last.isoformat() if last else "",
        }.items()
        if v
    }
    return await render(
        request,
        "console/audit.html",
        rows=rows,
        total=total,
        page=page,
        pages=max(1, -(-total // size)),
        query=query,
    )
