"""The check-in board of one grid: who answered today, who has not (with household; phone
numbers in full only for the grid's warden), abnormal answers with their alert, and a button
that reminds the non-responders through the check-in reminder service."""

from __future__ import annotations

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
from flows.checkin_push import local_day
from flows.checkin_schedule import remind_grid_now
from storage import checkin as store
from storage import repo
from storage.models import MAX_ID, RegionLevel, Role, utcnow

REMINDERS = (Role.WARDEN, Role.ADMIN)
"""Who may remind a grid's residents (doctors see the board, wardens and admins act)."""


def install(console: Console) -> None:
    console.add_page("GET", "/grids/{code}/checkin", board, name="checkin_board")
    console.add_page(
        "POST", "/grids/{code}/checkin/remind", remind, name="checkin_remind", roles=REMINDERS
    )
    console.add_page("GET", "/checkin", my_board, name="checkin_mine")
    console.add_nav("checkin", "checkin_mine")


async def my_board(request: web.Request) -> web.StreamResponse:
    """The board of the user's own grid when they have exactly one; else the overview,
    where every grid links to its board."""
    user = user_of(request)
    roots = user.roots()
    if len(roots) == 1 and roots[0].level == RegionLevel.GRID:
        raise redirect(request, "checkin_board", code=roots[0].code)
    raise redirect(request, "overview")


async def _grid(conn: AsyncConnection, request: web.Request, *role_names: str) -> repo.RegionInfo:
    grid = await scoped_region(conn, request, request.match_info["code"], *role_names)
    if grid.level != RegionLevel.GRID:
        raise PageError(400, "not_a_grid", code=grid.code)
    return grid


async def board(request: web.Request) -> web.Response:
    """Today's check-ins of one grid."""
    console = console_of(request)
    user = user_of(request)
    size = console.settings.page_size
    after = query_int(request, "after", 0, 0, MAX_ID)
    missing_page = query_int(request, "missing_page", 1, 1, 100_000)
    day = local_day(utcnow(), console.config.tz)
    async with console.db.write() as conn:
        grid = await _grid(conn, request)
        paths = [grid.path]
        counts = await store.day_counts(conn, paths, day)
        answered = await store.records_in_scope(conn, paths, day, limit=size, after_id=after)
        missing_total, missing = await store.missing_people(
            conn, paths, day, limit=size, offset=(missing_page - 1) * size
        )
        abnormal = await store.abnormal_records(conn, paths, day)
        full_phone = repo.sees_full_phone(user.person, grid)
        await audit(
            conn,
            request,
            "console.checkin.board",
            target_type="region",
            target_id=grid.code,
            region=grid,
            detail={
                "date": day.isoformat(),
                "answered": len(answered),
                "missing": len(missing),
                "abnormal": len(abnormal),
                "full_phone": full_phone,
            },
        )
    return await render(
        request,
        "console/checkin_board.html",
        grid=grid,
        day=day,
        counts=counts[0] if counts else store.DayCounts(grid.id, 0, 0, 0, 0, 0),
        answered=answered,
        next_after=answered[-1].id if len(answered) == size else None,
        after=after,
        missing=missing,
        missing_total=missing_total,
        missing_page=missing_page,
        missing_pages=max(1, -(-missing_total // size)),
        abnormal=abnormal,
        full_phone=full_phone,
        can_remind=user.person.can_act_on(grid, *REMINDERS),
    )


async def remind(request: web.Request) -> web.StreamResponse:
    """Queue the check-in reminder to the grid's residents without a complete check-in."""
    console = console_of(request)
    async with console.db.read() as conn:
        grid = await _grid(conn, request, *REMINDERS)
    result = await remind_grid_now(
        console.db, console.config.checkin, console.config.tz, console.texts, grid, utcnow()
    )
    async with console.db.write() as conn:
        await audit(
            conn,
            request,
            "console.checkin.remind",
            target_type="region",
            target_id=grid.code,
            region=grid,
            detail={"queued": result.queued, "held": result.held},
        )
    if result.queued:
        console.wake_delivery()
    if result.held:
        await flash(request, "remind_held", "warn")
    elif result.queued:
        await flash(
            request,
            "reminded",
            "ok",
            count=result.queued,
            at=result.send_at.astimezone(console.config.tz).strftime("%H:%M"),
        )
    else:
        await flash(request, "remind_none", "info")
    raise redirect(request, "checkin_board", code=grid.code)
