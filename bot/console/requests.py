"""Residents' requests in the console: a board of a region's requests (new, accepted, overdue,
resolved; filtered by category, urgency and the level handling them; paged), one request with
its timeline, and the handler's actions: accept, add a note, transfer, resolve with a reply to
the resident, hand to a volunteer, press (督办).

Every action goes through :class:`flows.requests.Desk`, the same as chat and the API, so scope
and state rules are one: a refusal for scope or an unknown number is an error page (403, 404);
a refusal of the input or the request's state shows the request again with the reason (400,
409) and nothing stored.  The notices an action produces (to the resident, the new
handler, the volunteer) are queued in the same transaction, and every view and change is
written to the audit log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.console.site import (
    Console,
    PageError,
    audit,
    console_of,
    flash,
    query_int,
    redirect,
    render,
    scoped_region,
    user_of,
)
from flows.requests import (
    LABELS,
    STAFF,
    VOLUNTEER_CATEGORIES,
    Desk,
    RequestDenied,
    normalize_number,
    queue_notices,
)
from storage import repo
from storage import requests_board as board_store
from storage.models import RegionLevel, utcnow
from storage.outbox import outbox
from storage.requests_models import OPEN_STATUSES, RequestStatus

MAX_PAGE = 10_000
MAX_TRANSFER_GRIDS = 500
MAX_TEXT = 1000
LEVELS = [level.value for level in RegionLevel]

Action = Callable[[Desk, repo.PersonInfo, str, Any], Awaitable[Any]]


def install(console: Console) -> None:
    console.add_page("GET", "/requests", board, name="requests_board", roles=STAFF)
    console.add_page("GET", "/requests/{number}", detail, name="request_detail", roles=STAFF)
    for verb, action in ACTIONS.items():
        console.add_page(
            "POST",
            f"/requests/{{number}}/{verb}",
            _action_page(verb, action),
            name=f"request_{verb}",
            roles=STAFF,
        )
    console.add_nav("requests", "requests_board", roles=STAFF)


# -- the board -----------------------------------------------------------------------------


def _choice(request: web.Request, name: str, allowed: Any) -> str | None:
    """An optional query parameter that must be one of ``allowed``; a 400 page otherwise."""
    value = request.query.get(name) or None
    if value is not None and value not in allowed:
        raise PageError(400, "bad_parameter", name=name)
    return value


async def board(request: web.Request) -> web.Response:
    """A region's requests in four tabs, one page at a time."""
    console = console_of(request)
    user = user_of(request)
    size = console.settings.page_size
    tab = _choice(request, "tab", board_store.TABS) or "new"
    filters = board_store.BoardFilter(
        category=_choice(request, "category", LABELS["category"]),
        urgency=_choice(request, "urgency", LABELS["urgency"]),
        level=_choice(request, "level", LEVELS),
    )
    page = query_int(request, "page", 1, 1, MAX_PAGE)
    roots = user.roots(*STAFF)
    code = request.query.get("region") or roots[0].code
    now = utcnow()
    async with console.db.write() as conn:
        region = await scoped_region(conn, request, code, *STAFF)
        counts = await board_store.board_counts(conn, region, filters, now=now)
        rows = await board_store.board_page(
            conn, region, tab, filters, now=now, limit=size, offset=(page - 1) * size
        )
        trail = [
            r
            for r in reversed(await repo.region_chain(conn, region))
            if user.person.can_act_on(r, *STAFF)
        ]
        children = await board_store.child_regions(conn, region)
        await audit(
            conn,
            request,
            "console.requests.board",
            target_type="region",
            target_id=region.code,
            region=region,
            detail={
                "tab": tab,
                "page": page,
                "count": len(rows),
                **{k: v for k, v in _filter_query(filters).items() if v},
            },
        )
    pages = max(1, -(-counts[tab] // size))
    query = {"region": region.code, "tab": tab, **_filter_query(filters)}
    return await render(
        request,
        "console/requests/board.html",
        region=region,
        trail=trail,
        children=children,
        roots=roots if len(roots) > 1 else [],
        tab=tab,
        tabs=board_store.TABS,
        counts=counts,
        filters=filters,
        rows=rows,
        page=page,
        pages=pages,
        query={k: v for k, v in query.items() if v},
        now=now,
        L=LABELS,
        levels=LEVELS,
    )


def _filter_query(filters: board_store.BoardFilter) -> dict[str, str]:
    """The filters as query parameters (empty when not set)."""
    return {
        "category": filters.category or "",
        "urgency": filters.urgency or "",
        "level": filters.level or "",
    }


# -- one request ---------------------------------------------------------------------------


def _number(request: web.Request) -> str:
    parsed = normalize_number(request.match_info["number"])
    if parsed is None or parsed[1]:
        raise PageError(404, "request_not_found", number=request.match_info["number"][:40])
    return parsed[0]


def _desk(console: Console, conn: AsyncConnection, *, lock: bool) -> Desk:
    return Desk(
        conn=conn,
        settings=console.config.requests,
        tz=console.config.tz,
        now=utcnow(),
        row_lock=lock and not console.db.is_sqlite,
    )


def _page_error(console: Console, denied: RequestDenied, desk: Desk) -> PageError:
    """A refusal as an error page, with the same sentence chat gives."""
    message = console.texts.render(denied.template, **desk.values(**denied.values))
    return PageError(denied.status, "request_denied", message=message)


async def detail(request: web.Request) -> web.Response:
    """One request: who, what, where, its deadline, the timeline, and the actions."""
    return await _detail_page(request, _number(request))


async def _detail_page(
    request: web.Request,
    number: str,
    *,
    error: str | None = None,
    missing: str | None = None,
    status: int = 200,
    form: dict[str, str] | None = None,
) -> web.Response:
    console = console_of(request)
    user = user_of(request)
    async with console.db.write() as conn:
        desk = _desk(console, conn, lock=False)
        try:
            view = await desk.staff_view(user.person, number)
        except RequestDenied as denied:
            raise _page_error(console, denied, desk) from None
        req = view["req"]
        region = view["region"]
        is_open = req.status in OPEN_STATUSES
        volunteers = (
            await board_store.volunteers_for(conn, region)
            if is_open and req.category in VOLUNTEER_CATEGORIES
            else []
        )
        grids = (
            await board_store.transfer_grids(
                conn, region, user.paths(*STAFF), limit=MAX_TRANSFER_GRIDS
            )
            if is_open
            else []
        )
    overdue = is_open and req.sla_due_at is not None and req.sla_due_at < desk.now
    return await render(
        request,
        "console/requests/detail.html",
        _status=status,
        view=view,
        req=req,
        region=region,
        is_open=is_open,
        overdue=overdue,
        overdue_minutes=int((desk.now - req.sla_due_at).total_seconds() // 60) if overdue else 0,
        can_accept=req.status == RequestStatus.PENDING,
        can_press=is_open and req.handler_id is not None and req.handler_id != user.id,
        volunteers=volunteers,
        grids=grids,
        error=error,
        missing=missing,
        form=form or {},
        L=LABELS,
    )


# -- actions -------------------------------------------------------------------------------


def _field(form: Any, name: str) -> str:
    value = form.get(name, "")
    return value[: MAX_TEXT + 1] if isinstance(value, str) else ""


REQUIRED = {"note": "text", "transfer": "grid", "resolve": "reply", "volunteer": "volunteer"}
"""The form field each action cannot do without (asked for before the desk is involved)."""

ACTIONS: dict[str, Action] = {
    "accept": lambda d, p, n, f: d.accept(p, n),
    "note": lambda d, p, n, f: d.note(p, n, _field(f, "text")),
    "transfer": lambda d, p, n, f: d.transfer(p, n, _field(f, "grid")),
    "resolve": lambda d, p, n, f: d.resolve(p, n, _field(f, "reply")),
    "volunteer": lambda d, p, n, f: d.hand_to_volunteer(p, n, _field(f, "volunteer")),
    "press": lambda d, p, n, f: d.press(p, n, _field(f, "text")),
}
"""What each form does, through the desk; the form's fields are named as in the API."""


def _action_page(verb: str, action: Action) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        console = console_of(request)
        user = user_of(request)
        number = _number(request)
        form = await request.post()
        typed = {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf_token"}
        required = REQUIRED.get(verb)
        if required is not None and not typed.get(required, "").strip():
            return await _detail_page(request, number, missing=required, status=400, form=typed)
        try:
            async with console.db.write() as conn:
                desk = _desk(console, conn, lock=True)
                req = await action(desk, user.person, number, form)
                region = await desk.region_of(req)
                queued = await queue_notices(
                    conn, console.texts, desk.notices, console.db.insert_ignore(outbox)
                )
                await audit(
                    conn,
                    request,
                    f"console.requests.{verb}",
                    target_type="request",
                    target_id=number,
                    region=region,
                    detail=_audit_detail(verb, typed, req),
                )
        except RequestDenied as denied:
            # Rolled back: nothing of the refused action is stored.
            if denied.status in (403, 404):
                raise _page_error(console, denied, desk) from None
            message = console.texts.render(denied.template, **desk.values(**denied.values))
            return await _detail_page(
                request, number, error=message, status=denied.status, form=typed
            )
        if queued:
            console.wake_delivery()
        await flash(request, "request_done", "ok", action=verb, number=number)
        raise redirect(request, "request_detail", number=number)

    handle.__doc__ = f"The {verb} form of a request."
    return handle


def _audit_detail(verb: str, typed: dict[str, str], req: Any) -> dict[str, Any]:
    """What an audit entry keeps of an action: where it went, not what was written (the text
    is on the request's timeline)."""
    detail: dict[str, Any] = {"status": req.status}
    if verb == "transfer":
        detail["grid"] = typed.get("grid", "")[:32]
    elif verb == "volunteer":
        detail["volunteer_id"] = req.volunteer_id
    return detail
