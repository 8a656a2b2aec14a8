"""The overview: today's check-in rate per grid (chart and sortable table), a 14-day trend,
abnormal answers and open alerts today, overdue requests and unanswered rumor questions, all
within the user's scope.  Every figure comes from the features' own storage queries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from bot.console.site import Console, audit, console_of, render, user_of
from flows import rumors
from flows.checkin_push import local_day
from flows.requests import LABELS as REQUEST_LABELS
from flows.requests import STAFF as REQUEST_ROLES
from storage import checkin as checkin_store
from storage import requests_repo
from storage import rumors as rumor_store
from storage.models import utcnow
from storage.rumor_models import ReviewStatus

TREND_DAYS = 14
LIST_LIMIT = 10


def install(console: Console) -> None:
    console.add_page("GET", "/", overview, name="overview")
    console.add_nav("overview", "overview")


async def overview(request: web.Request) -> web.Response:
    """The dashboard of the user's scope."""
    console = console_of(request)
    user = user_of(request)
    roots = user.roots()
    paths = [r.path for r in roots]
    now = utcnow()
    today = local_day(now, console.config.tz)
    first = today - timedelta(days=TREND_DAYS - 1)
    async with console.db.write() as conn:
        grids = await checkin_store.grid_day_counts(conn, roots, today)
        by_day = await checkin_store.complete_by_day(conn, paths, first, today)
        abnormal = await checkin_store.abnormal_records(conn, paths, today, limit=LIST_LIMIT)
        alerts_total, alerts = await checkin_store.open_alerts(conn, paths, limit=LIST_LIMIT)
        overdue: list[dict[str, Any]] = []
        for root in user.roots(*REQUEST_ROLES) if user.has_role(*REQUEST_ROLES) else []:
            total, rows = await requests_repo.overdue_in_region(
                conn, root, now=now, limit=LIST_LIMIT
            )
            overdue.append({"region": root, "total": total, "rows": rows})
        rumor_paths = rumors.staff_paths(user.person)
        pending = (
            await rumor_store.list_items(
                conn,
                paths=rumor_paths,
                status=ReviewStatus.PENDING,
                limit=LIST_LIMIT,
                offset=0,
            )
            if rumor_paths
            else []
        )
        await audit(
            conn,
            request,
            "console.overview",
            target_type="region",
            target_id=",".join(r.code for r in roots),
            region=roots[0] if len(roots) == 1 else None,
            detail={
                "date": today.isoformat(),
                "abnormal": len(abnormal),
                "alerts": len(alerts),
            },
        )
    residents = sum(c.total for _, c in grids)
    complete = sum(c.complete for _, c in grids)
    rows = [
        {
            "code": grid.code,
            "name": grid.name,
            "residents": c.total,
            "complete": c.complete,
            "incomplete": c.incomplete,
            "missing": c.missing,
            "moderate": c.moderate,
            "high": c.high,
            "rate": _percent(c.complete, c.total),
        }
        for grid, c in grids
    ]
    days = [first + timedelta(days=n) for n in range(TREND_DAYS)]
    charts = {
        "rate": {
            "grids": [r["name"] for r in rows],
            "codes": [r["code"] for r in rows],
            "rates": [r["rate"] for r in rows],
        },
        "trend": {
            "days": [f"{d.month}/{d.day}" for d in days],
            "rates": [_percent(by_day.get(d, 0), residents) for d in days],
        },
    }
    return await render(
        request,
        "console/overview.html",
        today=today,
        roots=roots,
        rows=rows,
        residents=residents,
        complete=complete,
        rate=_percent(complete, residents),
        abnormal=abnormal,
        alerts=alerts,
        alerts_total=alerts_total,
        overdue=overdue,
        pending=pending,
        charts=charts,
        L=REQUEST_LABELS,
        now=now,
    )


def _percent(part: int, whole: int) -> float | None:
    """A share in percent with one decimal (``None`` when there is nobody to count)."""
    return round(100 * part / whole, 1) if whole else None
