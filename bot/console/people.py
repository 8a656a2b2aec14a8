"""People and regions: the region tree of the user's scope, the people of a region (phones in
full only for the grid's warden; every view audited), roster import (upload, a row-by-row
report, confirm), the day's check-ins as XLSX, and printable grid QR posters.

Each page calls the service layer the REST API uses (``flows.roster``, ``flows.checkin_export``,
``flows.posters``, ``bot.posters``); nothing here decides what a row or a poster is.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.api_people import XLSX, export_filename, stream_file
from bot.console.site import (
    ADMIN_ROLES,
    STAFF_ROLES,
    Console,
    PageError,
    audit,
    console_of,
    flash,
    is_number,
    query_int,
    redirect,
    render,
    scoped_region,
    user_of,
)
from bot.posters import QrCodeError
from flows import roster
from flows.checkin_export import ExportLabels, export_checkins
from flows.checkin_push import local_day
from flows.posters import grid_posters
from storage import repo
from storage.models import MAX_ID, utcnow

UPLOAD_FIELD = "file"


def install(console: Console) -> None:
    # Roster files are larger than ordinary forms (the form's other fields fit in the margin).
    console.max_upload_bytes = max(console.max_upload_bytes, roster.MAX_UPLOAD_BYTES + 64 * 1024)
    console.add_page("GET", "/regions", region_tree, name="regions")
    console.add_page("GET", "/regions/{code}/people", region_people, name="region_people")
    console.add_page("GET", "/regions/{code}/checkins.xlsx", export_day, name="region_export")
    console.add_page("GET", "/regions/{code}/posters", posters, name="region_posters")
    console.add_page("POST", "/regions/{code}/qrcodes", create_qrcodes, name="region_qrcodes")
    console.add_page("GET", "/roster", roster_form, name="roster", roles=ADMIN_ROLES)
    console.add_page("POST", "/roster", roster_upload, name="roster_upload", roles=ADMIN_ROLES)
    console.add_page(
        "GET", "/roster/{upload}", roster_report, name="roster_report", roles=ADMIN_ROLES
    )
    console.add_page(
        "POST", "/roster/{upload}/import", roster_import, name="roster_import", roles=ADMIN_ROLES
    )
    console.add_nav("regions", "regions")
    console.add_nav("roster", "roster", roles=ADMIN_ROLES)


# -- the region tree -------------------------------------------------------------------------


@dataclass
class Node:
    """A region of the tree with the people living in it (itself and below) and its children."""

    region: repo.RegionInfo
    people: int = 0
    children: list[Node] = field(default_factory=list)


async def _resident_counts(conn: AsyncConnection, roots: list[repo.RegionInfo]) -> dict[int, int]:
    """People living in each region (directly) under the roots: one grouped query."""
    people, regions = repo.people, repo.regions
    counts: dict[int, int] = {}
    for root in roots:
        rows = await conn.execute(
            select(people.c.region_id, func.count())
            .join(regions, regions.c.id == people.c.region_id)
            .where(regions.c.path.startswith(root.path))
            .group_by(people.c.region_id)
        )
        counts.update({int(r[0]): int(r[1]) for r in rows})
    return counts


async def region_tree(request: web.Request) -> web.Response:
    """Every region the user acts on, as a tree, with how many people live in each."""
    console, user = console_of(request), user_of(request)
    roots = user.roots()
    trees: list[Node] = []
    async with console.db.read() as conn:
        counts = await _resident_counts(conn, roots)
        for root in sorted(roots, key=lambda r: r.code):
            nodes: dict[int, Node] = {}
            for region in await repo.list_subregions(conn, root):
                nodes[region.id] = Node(region, counts.get(region.id, 0))
            for node in sorted(nodes.values(), key=lambda n: n.region.code):
                parent = nodes.get(node.region.parent_id or 0)
                if parent is not None and node.region.id != root.id:
                    parent.children.append(node)
            # The people of a region are those of its whole subtree: add leaves upwards.
            for node in sorted(nodes.values(), key=lambda n: -len(n.region.path)):
                parent = nodes.get(node.region.parent_id or 0)
                if parent is not None and node.region.id != root.id:
                    parent.people += node.people
            trees.append(nodes[root.id])
    return await render(
        request,
        "console/regions.html",
        trees=trees,
        today=local_day(utcnow(), console.config.tz),
        may_import=user.has_role(*ADMIN_ROLES),
    )


# -- people of a region ----------------------------------------------------------------------


async def region_people(request: web.Request) -> web.Response:
    """The people living in a region, a page at a time; phones in full only for its warden."""
    console, user = console_of(request), user_of(request)
    size = console.settings.page_size
    after = query_int(request, "after", 0, 0, MAX_ID)
    async with console.db.write() as conn:
        region = await scoped_region(conn, request, request.match_info["code"])
        rows = await repo.list_people(conn, region, limit=size, after_id=after)
        roles = await repo.roles_by_person(conn, [r.id for r in rows])
        households = await _households(conn, [r.household_id for r in rows])
        chain = await repo.region_chain(conn, region)
        full_phone = repo.sees_full_phone(user.person, region)
        await audit(
            conn,
            request,
            "console.people.list",
            target_type="region",
            target_id=region.code,
            region=region,
            detail={"after": after, "count": len(rows), "full_phone": full_phone},
        )
    return await render(
        request,
        "console/region_people.html",
        region=region,
        # Breadcrumbs from the top of the user's scope down to this region.
        chain=[r for r in reversed(chain) if user.person.can_act_on(r, *STAFF_ROLES)],
        rows=rows,
        roles=roles,
        households=households,
        full_phone=full_phone,
        after=after,
        next_after=rows[-1].id if len(rows) == size else None,
        today=local_day(utcnow(), console.config.tz),
    )


async def _households(conn: AsyncConnection, ids: list[int | None]) -> dict[int, str]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    table = repo.households
    rows = await conn.execute(select(table).where(table.c.id.in_(wanted)))
    return {r.id: f"{r.building}{r.door}" for r in rows}


# -- the day's check-ins as XLSX -------------------------------------------------------------


async def export_day(request: web.Request) -> web.StreamResponse:
    """Download a day's check-ins of a region (audited before the file leaves)."""
    console, user = console_of(request), user_of(request)
    raw = request.query.get("date", "")
    try:
        day = date.fromisoformat(raw) if raw else local_day(utcnow(), console.config.tz)
    except ValueError:
        raise PageError(400, "bad_date") from None
    async with console.db.read() as conn:
        region = await scoped_region(conn, request, request.match_info["code"])
    handle, name = tempfile.mkstemp(prefix="gridbot-export-", suffix=".xlsx")
    os.close(handle)
    path = Path(name)
    try:
        await export_checkins(
            console.db,
            user.person,
            console.config.checkin,
            region,
            day,
            path,
            tz=console.config.tz,
            labels=ExportLabels.load(),
        )
        return await stream_file(request, path, export_filename(region, day), XLSX)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


# -- QR posters ------------------------------------------------------------------------------


async def posters(request: web.Request) -> web.Response:
    """Printable posters: one grid's, or every grid's of a community (or larger region)."""
    console = console_of(request)
    async with console.db.read() as conn:
        region = await scoped_region(conn, request, request.match_info["code"])
        found = await grid_posters(conn, region)
    qrcodes = console.qrcodes
    return await render(
        request,
        "console/posters.html",
        region=region,
        posters=found,
        enabled=qrcodes is not None and qrcodes.enabled,
        missing=sum(1 for p in found if p.qr is None and p.scene),
    )


async def create_qrcodes(request: web.Request) -> web.StreamResponse:
    """Make the missing QR codes of a grid, or of every grid under a region (once each)."""
    console, user = console_of(request), user_of(request)
    qrcodes = console.qrcodes
    async with console.db.read() as conn:
        region = await scoped_region(conn, request, request.match_info["code"])
        found = await grid_posters(conn, region)
    if qrcodes is None or not qrcodes.enabled:
        raise PageError(409, "qr_disabled")
    made, failed = 0, 0
    for poster in found:
        if poster.qr is not None or poster.scene is None:
            continue
        try:
            await qrcodes.ensure(poster.grid, actor_id=user.id)
            made += 1
        except QrCodeError:
            failed += 1
    if failed:
        await flash(request, "qr_failed", "warn", made=made, failed=failed)
    else:
        await flash(request, "qr_made", "ok", made=made)
    raise redirect(request, "region_posters", code=region.code)


# -- roster import ---------------------------------------------------------------------------


async def roster_form(request: web.Request) -> web.Response:
    return await render(
        request,
        "console/roster.html",
        max_mb=roster.MAX_UPLOAD_BYTES // (1024 * 1024),
        max_rows=roster.MAX_ROWS,
        problem=None,
    )


async def _uploaded_file(request: web.Request) -> tuple[str, bytes]:
    """The file of the upload form (the CSRF middleware has read the form already)."""
    form = await request.post()
    field_value = form.get(UPLOAD_FIELD)
    if not isinstance(field_value, web.FileField) or not field_value.filename:
        raise _NoFile()
    data = await asyncio.to_thread(field_value.file.read, roster.MAX_UPLOAD_BYTES + 1)
    if not data:
        raise _NoFile()
    return field_value.filename, data


class _NoFile(Exception):
    pass


async def roster_upload(request: web.Request) -> web.StreamResponse:
    """Keep the uploaded file and show its report (nothing is imported yet)."""
    console, user = console_of(request), user_of(request)
    try:
        filename, data = await _uploaded_file(request)
        upload_id, report = await roster.stage_file(console.db, user.person, filename, data)
    except _NoFile:
        return await _form_again(request, "no_file", {})
    except roster.RosterError as exc:
        return await _form_again(request, exc.code, exc.values)
    async with console.db.write() as conn:
        await audit(
            conn,
            request,
            "console.roster.upload",
            target_type="roster_upload",
            target_id=upload_id,
            detail={"file": filename, "rows": report.rows, "errors": len(report.errors)},
        )
    raise redirect(request, "roster_report", upload=str(upload_id))


async def _form_again(request: web.Request, code: str, values: dict[str, Any]) -> web.Response:
    console = console_of(request)
    problem = console.texts.render("roster/file_problem", code=code, **values)
    return await render(
        request,
        "console/roster.html",
        max_mb=roster.MAX_UPLOAD_BYTES // (1024 * 1024),
        max_rows=roster.MAX_ROWS,
        problem=problem,
        _status=400,
    )


def _upload_id(request: web.Request) -> int:
    raw = request.match_info["upload"]
    if not is_number(raw) or int(raw) > MAX_ID:
        raise PageError(404, "not_found")
    return int(raw)


async def roster_report(request: web.Request) -> web.Response:
    """The row-by-row report of a staged file, checked again now, with the confirm form."""
    console, user = console_of(request), user_of(request)
    upload_id = _upload_id(request)
    try:
        filename, report = await roster.check_staged(console.db, user.person, upload_id)
    except LookupError:
        raise PageError(404, "upload_gone") from None
    return await _report_page(request, upload_id, filename, report)


async def _report_page(
    request: web.Request, upload_id: int, filename: str, report: roster.ImportReport
) -> web.Response:
    console = console_of(request)
    problems = [(p.line, roster.describe_problem(console.texts, p)) for p in report.errors]
    return await render(
        request,
        "console/roster_report.html",
        upload_id=upload_id,
        filename=filename,
        report=report,
        problems=problems,
    )


async def roster_import(request: web.Request) -> web.StreamResponse:
    """Import a staged file in one transaction (the good rows only when asked)."""
    console, user = console_of(request), user_of(request)
    upload_id = _upload_id(request)
    form = await request.post()
    skip_bad = form.get("skip_bad") == "1"
    try:
        filename, report = await roster.import_staged(
            console.db, user.person, upload_id, skip_bad=skip_bad
        )
    except LookupError:
        raise PageError(404, "upload_gone") from None
    if not report.written:
        # The rows changed meaning since the report (someone else imported?): show it again.
        await flash(request, "roster_not_imported", "warn", errors=len(report.errors))
        raise redirect(request, "roster_report", upload=str(upload_id))
    await flash(
        request,
        "roster_imported",
        "ok",
        file=filename,
        created=report.created,
        unchanged=report.unchanged,
        skipped=len(report.errors),
    )
    raise redirect(request, "regions")
