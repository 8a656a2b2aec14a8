"""People-and-regions endpoints of /api/v1: grid QR codes, roster import, check-in export.

- ``POST /regions/{code}/qrcode`` makes a grid's permanent official-account QR code (once: later
  calls return the stored one); ``GET`` reads it, ``GET .../qrcode.svg`` draws it locally.
- ``POST /roster/check`` reports on an uploaded roster (CSV or XLSX, form field ``file``) without
  writing; ``POST /roster/import`` imports it in one transaction when it is clean, or with
  ``skip_bad=true`` imports the good rows.  Only admins import, into their own regions.
- ``GET /checkin/export`` is the day's check-ins of a region as XLSX, streamed from a file the
  export wrote page by page.

Everything is scoped to the caller's regions and audited.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.api import (
    CALLER,
    STAFF_ROLES,
    Api,
    ApiError,
    Operation,
    _json,
    _path,
    _query,
    scoped_region,
)
from bot.config import Config
from bot.posters import GridQrCodes, QrCodeError
from bot.uploads import UploadError, read_uploaded_file
from flows import roster
from flows.checkin_export import ExportLabels, export_checkins
from flows.checkin_push import local_day
from flows.posters import qr_svg
from flows.texts import Texts
from storage import repo
from storage.db import Database
from storage.models import utcnow
from storage.qrcodes import StoredQr, stored_qr

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_CODE = _path("code", "Grid code")
_FILE_NOTE = " Send multipart/form-data with the file in the field 'file' (.csv or .xlsx)."

OPERATIONS = [
    Operation(
        "POST",
        "/regions/{code}/qrcode",
        "create_grid_qrcode",
        "Create (the first time only) the permanent official-account QR code of a grid",
        [_CODE],
    ),
    Operation(
        "GET",
        "/regions/{code}/qrcode",
        "get_grid_qrcode",
        "The stored official-account QR code of a grid",
        [_CODE],
    ),
    Operation(
        "GET",
        "/regions/{code}/qrcode.svg",
        "get_grid_qrcode_svg",
        "The grid's QR code drawn as SVG (no call to the platform)",
        [_CODE],
    ),
    Operation(
        "POST",
        "/roster/check",
        "check_roster",
        "Report every bad row of a roster file without writing anything." + _FILE_NOTE,
    ),
    Operation(
        "POST",
        "/roster/import",
        "import_roster",
        "Import a roster file in one transaction if it has no bad rows (or skip them)."
        + _FILE_NOTE,
        [_query("skip_bad", "Import the good rows of a file with bad rows", {"type": "boolean"})],
    ),
    Operation(
        "GET",
        "/checkin/export",
        "export_checkins",
        "The day's check-ins of a region in the caller's scope, as an XLSX file",
        [
            _query("region", "Region code (default: the caller's first scope)", {"type": "string"}),
            _query(
                "date",
                "Local day, YYYY-MM-DD (default: today)",
                {"type": "string", "format": "date"},
            ),
        ],
    ),
]


def install_people_api(api: Api, db: Database, config: Config, qrcodes: GridQrCodes) -> Api:
    """Add the people-and-regions operations to ``api``; returns it."""
    handlers = PeopleApi(db, config, qrcodes)
    api.extend(
        OPERATIONS,
        {
            "create_grid_qrcode": handlers.create_qrcode,
            "get_grid_qrcode": handlers.get_qrcode,
            "get_grid_qrcode_svg": handlers.get_qrcode_svg,
            "check_roster": handlers.check_roster,
            "import_roster": handlers.import_roster,
            "export_checkins": handlers.export_checkins,
        },
    )
    return api


QR_ERRORS = {
    "channel_disabled": 409,
    "not_a_grid": 400,
    "bad_scene": 409,
    "busy": 503,
    "platform": 502,
}


class PeopleApi:
    def __init__(self, db: Database, config: Config, qrcodes: GridQrCodes) -> None:
        self.db = db
        self.config = config
        self.qrcodes = qrcodes
        self.texts = Texts()
        self.labels = ExportLabels.load()

    # -- QR codes --------------------------------------------------------------------------

    async def create_qrcode(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        async with self.db.read() as conn:
            grid = await scoped_region(conn, person, request.match_info["code"])
        try:
            qr = await self.qrcodes.ensure(grid, actor_id=person.id)
        except QrCodeError as exc:
            raise ApiError(QR_ERRORS[exc.code], exc.code, str(exc)) from None
        return _json(_qr_json(grid, qr))

    async def _stored(self, request: web.Request) -> tuple[repo.RegionInfo, StoredQr]:
        person = request[CALLER]
        async with self.db.read() as conn:
            grid = await scoped_region(conn, person, request.match_info["code"])
            qr = await stored_qr(conn, grid.id)
        if qr is None:
            raise ApiError(
                404, "no_qrcode", f"grid {grid.code} has no QR code yet: POST to create it"
            )
        return grid, qr

    async def get_qrcode(self, request: web.Request) -> web.Response:
        grid, qr = await self._stored(request)
        return _json(_qr_json(grid, qr))

    async def get_qrcode_svg(self, request: web.Request) -> web.Response:
        _grid, qr = await self._stored(request)
        return web.Response(
            text=qr_svg(qr.url),
            content_type="image/svg+xml",
            headers={"Cache-Control": "private, max-age=3600"},
        )

    # -- roster ----------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> tuple[str, bytes]:
        person = request[CALLER]
        try:
            roster.importer_scope(person)
        except roster.ImportForbidden:
            raise ApiError(403, "forbidden", "only admins import rosters") from None
        try:
            filename, data, _fields = await read_uploaded_file(
                request, limit=roster.MAX_UPLOAD_BYTES
            )
        except UploadError as exc:
            raise ApiError(exc.status, exc.code, str(exc)) from None
        return filename, data

    def _file_error(self, exc: roster.RosterError) -> ApiError:
        status = 413 if exc.code in ("too_large", "too_many_rows") else 400
        if exc.code == "not_csv_or_xlsx":
            status = 415
        return ApiError(status, exc.code, roster.describe_error(self.texts, exc))

    async def check_roster(self, request: web.Request) -> web.Response:
        filename, data = await self._upload(request)
        try:
            report = await roster.check_file(self.db, request[CALLER], filename, data)
        except roster.RosterError as exc:
            raise self._file_error(exc) from None
        return _json(self._report_json(filename, report))

    async def import_roster(self, request: web.Request) -> web.Response:
        skip = request.query.get("skip_bad", "false").lower()
        if skip not in ("true", "false", "1", "0"):
            raise ApiError(400, "bad_parameter", "skip_bad must be true or false")
        filename, data = await self._upload(request)
        try:
            report = await roster.import_file(
                self.db, request[CALLER], filename, data, skip_bad=skip in ("true", "1")
            )
        except roster.RosterError as exc:
            raise self._file_error(exc) from None
        body = self._report_json(filename, report)
        if not report.written:
            raise ApiError(
                422,
                "bad_rows",
                f"{len(report.errors)} bad rows; nothing imported (fix them, or skip_bad=true)",
                report=body,
            )
        return _json(body)

    def _report_json(self, filename: str, report: roster.ImportReport) -> dict[str, Any]:
        return {
            "file": Path(filename).name,
            "kind": report.kind,
            "rows": report.rows,
            "written": report.written,
            "created": report.created,
            "unchanged": report.unchanged,
            "errors": [
                {
                    "line": p.line,
                    "code": p.code,
                    "reason": roster.describe_problem(self.texts, p),
                }
                for p in report.errors
            ],
        }

    # -- export ----------------------------------------------------------------------------

    async def export_checkins(self, request: web.Request) -> web.StreamResponse:
        person = request[CALLER]
        raw_day = request.query.get("date")
        try:
            day = date.fromisoformat(raw_day) if raw_day else local_day(utcnow(), self.config.tz)
        except ValueError:
            raise ApiError(400, "bad_parameter", "date must be YYYY-MM-DD") from None
        code = request.query.get("region") or person.scope_regions(*STAFF_ROLES)[0].code
        async with self.db.read() as conn:
            region = await scoped_region(conn, person, code)
        handle, name = tempfile.mkstemp(prefix="gridbot-export-", suffix=".xlsx")
        os.close(handle)
        path = Path(name)
        try:
            await export_checkins(
                self.db,
                person,
                self.config.checkin,
                region,
                day,
                path,
                tz=self.config.tz,
                labels=self.labels,
            )
            return await stream_file(request, path, export_filename(region, day), XLSX)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)


def export_filename(region: repo.RegionInfo, day: date) -> str:
    """An ASCII file name for a region's export (codes may hold anything)."""
    code = re.sub(r"[^A-Za-z0-9_-]", "_", region.code)[:40] or "region"
    return f"checkins-{code}-{day.isoformat()}.xlsx"


async def stream_file(
    request: web.Request, path: Path, filename: str, content_type: str
) -> web.StreamResponse:
    """Send a file as an attachment, read in chunks off the event loop."""
    response = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        }
    )
    response.content_length = (await asyncio.to_thread(path.stat)).st_size
    await response.prepare(request)
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, 256 * 1024):
            await response.write(chunk)
    await response.write_eof()
    return response


def _qr_json(grid: repo.RegionInfo, qr: StoredQr) -> dict[str, Any]:
    return {
        "region": grid.code,
        "scene": qr.scene,
        "ticket": qr.ticket,
        "url": qr.url,
        "created_at": qr.created_at,
        "svg": f"/api/v1/regions/{grid.code}/qrcode.svg",
    }
