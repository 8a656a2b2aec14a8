"""Roster import from CSV or XLSX with Chinese headers: regions, or people with roles.

A people file has 姓名, 手机号, 网格编码, 角色, 楼栋, 门牌 (and optionally 管辖编码, the region a
staff member is responsible for).  A regions file has 编码, 名称, 级别, 上级编码.  Every row is
checked first; every bad row is reported with its line number, and nothing is written from a
file with errors unless ``skip_bad`` is set.  Importing the same file twice creates nothing new.

Two ways in: a file on disk (the ``import-roster`` command, no scope) and uploaded bytes (the
console and the API), which are checked against the uploader's scope: a street admin can neither
put people into another street nor create regions outside it.  :func:`check_upload` reports
without writing; :func:`import_upload` checks again and writes in the caller's transaction.

What is wrong with a row or a file is a code with values (:class:`RowProblem`,
:class:`RosterError`); the sentences people read are ``templates/zh_CN/roster/*.j2``.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from flows.texts import Texts
from storage import repo, rosters
from storage.db import Database
from storage.models import LEVEL_ORDER, RegionLevel, Role, utcnow

PHONE = re.compile(r"^1[3-9]\d{9}$")
# Column sizes (storage/models.py): a longer value is a bad row, not a database error.
MAX_CODE = 64
MAX_REGION_NAME = 128
MAX_PERSON_NAME = 64
MAX_ADDRESS_PART = 64

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
"""Largest roster file accepted: a street's people as CSV is a few MB."""
MAX_ROWS = 50_000
"""Most data rows in one file; the whole report is held in memory, so larger files are split."""
MAX_XLSX_UNPACKED = 128 * 1024 * 1024
"""An XLSX is a zip: refuse one that would unpack to more than this (a zip bomb)."""

PEOPLE_HEADERS = {
    "姓名": "name",
    "手机号": "phone",
    "手机": "phone",
    "电话": "phone",
    "网格编码": "grid",
    "角色": "role",
    "楼栋": "building",
    "门牌": "door",
    "门牌号": "door",
    "管辖编码": "scope",
}
REGION_HEADERS = {"编码": "code", "名称": "name", "级别": "level", "上级编码": "parent"}

ROLE_WORDS = {
    "居民": Role.RESIDENT,
    "网格员": Role.WARDEN,
    "医生": Role.DOCTOR,
    "签约医生": Role.DOCTOR,
    "志愿者": Role.VOLUNTEER,
    "管理员": Role.ADMIN,
    **{role.value: role for role in Role},
}
LEVEL_WORDS = {
    "市": RegionLevel.CITY,
    "区": RegionLevel.DISTRICT,
    "县": RegionLevel.DISTRICT,
    "街道": RegionLevel.STREET,
    "镇": RegionLevel.STREET,
    "社区": RegionLevel.COMMUNITY,
    "村": RegionLevel.COMMUNITY,
    "网格": RegionLevel.GRID,
    **{level.value: level for level in RegionLevel},
}

Rows = list[tuple[int, dict[str, str]]]
"""(line number in the file, {header: value}) of every non-empty data row."""


class RosterError(ValueError):
    """The file as a whole cannot be read (type, size, encoding, headers).

    ``str(exc)`` is an English sentence for logs and the command line; ``code`` and ``values``
    render ``roster/file_problem`` for the console.
    """

    def __init__(self, code: str, message: str, **values: Any) -> None:
        super().__init__(message)
        self.code = code
        self.values = values


@dataclass(frozen=True, slots=True)
class RowProblem:
    """What is wrong with one row: ``code`` names the sentence of ``roster/problem``."""

    line: int
    code: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportReport:
    """The outcome of a check or an import.  After a check, ``created`` and ``unchanged`` say
    what an import would do; ``written`` is true once rows were written."""

    kind: str
    rows: int = 0
    created: int = 0
    unchanged: int = 0
    errors: list[RowProblem] = field(default_factory=list)
    written: bool = False

    @property
    def clean(self) -> bool:
        return not self.errors


def describe_problem(texts: Texts, problem: RowProblem) -> str:
    """The sentence an admin reads for a bad row."""
    return texts.render("roster/problem", code=problem.code, **problem.values)


def describe_error(texts: Texts, error: RosterError) -> str:
    """The sentence an admin reads for a file that cannot be imported."""
    return texts.render("roster/file_problem", code=error.code, **error.values)


# -- reading -------------------------------------------------------------------------------


def read_rows(path: Path) -> Rows:
    """The data rows of a CSV (UTF-8 or GBK) or XLSX file on disk."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".xlsx"):
        raise _not_csv_or_xlsx(path.name)
    return read_upload(path.name, path.read_bytes())


def read_upload(filename: str, data: bytes) -> Rows:
    """The data rows of an uploaded CSV (UTF-8 or GBK) or XLSX file.

    The type is told by the name and checked against the content: an XLSX is a zip, a CSV is
    text.  Raises :class:`RosterError` for anything else, an oversized file or bad headers.
    """
    name = Path(filename or "").name or "upload"
    suffix = Path(name).suffix.lower()
    if len(data) > MAX_UPLOAD_BYTES:
        raise RosterError(
            "too_large",
            f"{name}: larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB",
            file=name,
            limit_mb=MAX_UPLOAD_BYTES // (1024 * 1024),
        )
    if suffix == ".xlsx":
        rows = list(_limited(_xlsx_rows(name, data), name))
    elif suffix == ".csv":
        if data.startswith(b"PK\x03\x04") or b"\x00" in data[:4096]:
            raise RosterError("not_text", f"{name}: binary content, not CSV text", file=name)
        rows = list(_limited(_csv_rows(name, data), name))
    else:
        raise _not_csv_or_xlsx(name)
    if not rows:
        raise RosterError("no_rows", f"{name}: no data rows", file=name)
    detect_kind(set(rows[0][1]))
    return rows


def _not_csv_or_xlsx(name: str) -> RosterError:
    return RosterError(
        "not_csv_or_xlsx", f"{name}: only .csv and .xlsx files can be imported", file=name
    )


def _limited(rows: Iterator[tuple[int, dict[str, str]]], name: str) -> Iterator[Any]:
    for count, row in enumerate(rows, start=1):
        if count > MAX_ROWS:
            raise RosterError(
                "too_many_rows", f"{name}: more than {MAX_ROWS} rows", file=name, limit=MAX_ROWS
            )
        yield row


def _csv_rows(name: str, raw: bytes) -> Iterator[tuple[int, dict[str, str]]]:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise RosterError("not_text", f"{name}: not UTF-8 or GBK text", file=name)
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if not header:
            raise RosterError("empty", f"{name}: the file is empty", file=name)
        names = [h.strip() for h in header]
        for number, row in enumerate(reader, start=2):
            if any(cell.strip() for cell in row):
                yield (
                    number,
                    {names[i]: (row[i] if i < len(row) else "").strip() for i in range(len(names))},
                )
    except csv.Error as exc:
        raise RosterError("not_text", f"{name}: not readable as CSV ({exc})", file=name) from None


def _xlsx_rows(name: str, data: bytes) -> Iterator[tuple[int, dict[str, str]]]:
    from openpyxl import load_workbook

    if not data.startswith(b"PK\x03\x04"):
        raise RosterError("bad_xlsx", f"{name}: not a readable XLSX file", file=name)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        raise RosterError("bad_xlsx", f"{name}: not a readable XLSX file", file=name) from None
    if unpacked > MAX_XLSX_UNPACKED:
        raise RosterError("bad_xlsx", f"{name}: unpacks to {unpacked} bytes", file=name)
    try:
        workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several unrelated types for a broken file
        raise RosterError(
            "bad_xlsx", f"{name}: not a readable XLSX file ({exc})", file=name
        ) from None
    try:
        rows = workbook.active.iter_rows(values_only=True) if workbook.active else iter(())
        header = next(rows, None)
        if not header:
            raise RosterError("empty", f"{name}: the first sheet is empty", file=name)
        names = [str(h).strip() if h is not None else "" for h in header]
        for number, row in enumerate(rows, start=2):
            cells = ["" if v is None else _cell_text(v) for v in row]
            if any(cells):
                yield (
                    number,
                    {names[i]: cells[i] if i < len(cells) else "" for i in range(len(names))},
                )
    finally:
        workbook.close()


def _cell_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # phone numbers typed as numbers
    return str(value).strip()


def _map_headers(row: dict[str, str], mapping: dict[str, str]) -> dict[str, str]:
    return {mapping[k]: v for k, v in row.items() if k in mapping}


def detect_kind(headers: set[str]) -> str:
    """``"regions"`` or ``"people"`` from a file's headers; RosterError when neither."""
    if {"编码", "级别"} <= headers:
        return "regions"
    if {"姓名", "网格编码"} <= headers:
        return "people"
    raise RosterError(
        "bad_headers",
        "headers not recognised: a people file needs 姓名 and 网格编码 (and optionally 手机号, "
        "角色, 楼栋, 门牌, 管辖编码); a regions file needs 编码, 名称, 级别, 上级编码",
    )


# -- checking and importing ----------------------------------------------------------------


Scope = Sequence[repo.RegionInfo] | None
"""The regions an importer administers; None for the command line (no limit)."""


def _in_scope(scope: Scope, region: repo.RegionInfo) -> bool:
    return scope is None or any(root.contains(region) for root in scope)


async def check_upload(conn: AsyncConnection, rows: Rows, *, scope: Scope) -> ImportReport:
    """Check every row against the database and the scope; write nothing.

    ``created`` and ``unchanged`` of the report say what an import would do now.
    """
    kind = detect_kind(set(rows[0][1]))
    report = ImportReport(kind=kind, rows=len(rows))
    if kind == "regions":
        await _plan_regions(conn, rows, report, scope)
    else:
        await _plan_people(conn, rows, report, scope)
    return report


async def import_upload(
    conn: AsyncConnection,
    rows: Rows,
    *,
    source: str,
    scope: Scope,
    skip_bad: bool = False,
    actor_id: int | None = None,
) -> ImportReport:
    """Check every row, then write all good rows in the caller's transaction.

    With bad rows and no ``skip_bad`` nothing is written (``report.written`` stays false).
    ``source`` (the file name) goes to the audit entry.
    """
    kind = detect_kind(set(rows[0][1]))
    report = ImportReport(kind=kind, rows=len(rows))
    if kind == "regions":
        planned_regions = await _plan_regions(conn, rows, report, scope)
        if report.errors and not skip_bad:
            return _nothing_written(report)
        await _write_regions(conn, planned_regions, report)
    else:
        planned_people = await _plan_people(conn, rows, report, scope)
        if report.errors and not skip_bad:
            return _nothing_written(report)
        await _write_people(conn, planned_people, report)
    await repo.record_audit(
        conn,
        actor_id=actor_id,
        action=f"roster.import.{kind}",
        target_type="file",
        target_id=source[:64],
        detail={"rows": report.rows, "created": report.created, "errors": len(report.errors)},
    )
    return report


def _nothing_written(report: ImportReport) -> ImportReport:
    report.created = report.unchanged = 0
    return report


async def import_roster(
    conn: AsyncConnection,
    path: Path,
    *,
    skip_bad: bool = False,
    actor_id: int | None = None,
    scope: Scope = None,
) -> ImportReport:
    """Import a file on disk (the command line): check every row, then write the good ones."""
    return await import_upload(
        conn, read_rows(path), source=path.name, scope=scope, skip_bad=skip_bad, actor_id=actor_id
    )


@dataclass
class _RegionRow:
    line: int
    code: str
    name: str
    level: RegionLevel
    parent: str
    exists: bool


async def _plan_regions(
    conn: AsyncConnection, rows: Rows, report: ImportReport, scope: Scope
) -> list[_RegionRow]:
    planned: dict[str, _RegionRow] = {}
    for line, raw in rows:
        row = _map_headers(raw, REGION_HEADERS)
        code, name = row.get("code", "").upper(), row.get("name", "")
        level = LEVEL_WORDS.get(row.get("level", ""))
        parent = row.get("parent", "").upper()
        problem: tuple[str, dict[str, Any]] | None = None
        existing = await repo.get_region_by_code(conn, code) if code else None
        if not code or not name:
            problem = ("code_or_name_empty", {})
        elif len(code) > MAX_CODE or len(name) > MAX_REGION_NAME:
            problem = ("code_or_name_too_long", {"max_code": MAX_CODE, "max_name": MAX_REGION_NAME})
        elif level is None:
            problem = ("bad_level", {"level": row.get("level", "")})
        elif code in planned:
            problem = ("duplicate_code", {"region": code})
        elif existing is not None and not _in_scope(scope, existing):
            problem = ("region_out_of_scope", {"region": code})
        else:
            parent_level = await _level_of(conn, parent, planned, scope) if parent else None
            if level is RegionLevel.CITY and parent:
                problem = ("city_with_parent", {})
            elif level is RegionLevel.CITY and scope is not None and existing is None:
                problem = ("city_needs_operator", {"region": code})
            elif parent_level == "out_of_scope":
                problem = ("parent_out_of_scope", {"parent": parent})
            elif level is not RegionLevel.CITY and parent_level is None:
                problem = ("parent_unknown", {"parent": parent})
            elif isinstance(parent_level, RegionLevel) and (
                LEVEL_ORDER.index(level) != LEVEL_ORDER.index(parent_level) + 1
            ):
                problem = (
                    "wrong_parent_level",
                    {"level": level.value, "parent_level": parent_level.value},
                )
        if problem:
            report.errors.append(RowProblem(line, problem[0], problem[1]))
            continue
        assert level is not None
        planned[code] = _RegionRow(line, code, name, level, parent, existing is not None)
    good = list(planned.values())
    report.unchanged = sum(1 for r in good if r.exists)
    report.created = len(good) - report.unchanged
    return good


async def _level_of(
    conn: AsyncConnection, code: str, planned: dict[str, _RegionRow], scope: Scope
) -> RegionLevel | str | None:
    """The level of a parent named in the file or the database; "out_of_scope" for a parent
    the importer may not add regions under."""
    if code in planned:
        return planned[code].level
    region = await repo.get_region_by_code(conn, code)
    if region is None:
        return None
    if not _in_scope(scope, region):
        return "out_of_scope"
    return RegionLevel(region.level)


async def _write_regions(
    conn: AsyncConnection, planned: list[_RegionRow], report: ImportReport
) -> None:
    report.created = report.unchanged = 0
    for item in planned:
        if await repo.get_region_by_code(conn, item.code) is not None:
            report.unchanged += 1
            continue
        above = await repo.get_region_by_code(conn, item.parent) if item.parent else None
        await repo.create_region(
            conn, code=item.code, name=item.name, level=item.level, parent=above
        )
        report.created += 1
    report.written = True


@dataclass
class _PersonRow:
    line: int
    name: str
    phone: str | None
    grid: repo.RegionInfo
    role: Role
    scope: repo.RegionInfo
    building: str
    door: str


async def _plan_people(
    conn: AsyncConnection, rows: Rows, report: ImportReport, scope: Scope
) -> list[_PersonRow]:
    good: list[_PersonRow] = []
    regions: dict[str, repo.RegionInfo | None] = {}

    async def region(code: str) -> repo.RegionInfo | None:
        if code not in regions:
            regions[code] = await repo.get_region_by_code(conn, code)
        return regions[code]

    for line, raw in rows:
        row = _map_headers(raw, PEOPLE_HEADERS)
        name = row.get("name", "")
        phone = re.sub(r"[\s\-]", "", row.get("phone", "")) or None
        grid_code = row.get("grid", "").upper()
        role = ROLE_WORDS.get(row.get("role", "") or "居民")
        grid = await region(grid_code) if grid_code else None
        problem: tuple[str, dict[str, Any]] | None = None
        if not name:
            problem = ("name_empty", {})
        elif len(name) > MAX_PERSON_NAME:
            problem = ("name_too_long", {"max": MAX_PERSON_NAME})
        elif len(row.get("building", "")) > MAX_ADDRESS_PART:
            problem = ("building_too_long", {"max": MAX_ADDRESS_PART})
        elif len(row.get("door", "")) > MAX_ADDRESS_PART:
            problem = ("door_too_long", {"max": MAX_ADDRESS_PART})
        elif phone is not None and not PHONE.match(phone):
            problem = ("bad_phone", {"phone": phone})
        elif not grid_code:
            problem = ("grid_empty", {})
        elif grid is None:
            problem = ("grid_unknown", {"region": grid_code})
        elif grid.level != RegionLevel.GRID:
            problem = ("not_a_grid", {"region": grid_code, "level": grid.level})
        elif not _in_scope(scope, grid):
            problem = ("grid_out_of_scope", {"region": grid_code})
        elif role is None:
            problem = ("bad_role", {"role": row.get("role", "")})
        if problem:
            report.errors.append(RowProblem(line, problem[0], problem[1]))
            continue
        assert grid is not None and role is not None
        responsible_for = grid
        scope_code = row.get("scope", "").upper()
        if scope_code:
            found = await region(scope_code)
            if found is None:
                report.errors.append(RowProblem(line, "scope_unknown", {"region": scope_code}))
                continue
            if not _in_scope(scope, found):
                report.errors.append(RowProblem(line, "scope_out_of_scope", {"region": scope_code}))
                continue
            responsible_for = found
        elif role in (Role.DOCTOR, Role.VOLUNTEER) and grid.parent_id is not None:
            responsible_for = await repo.get_region(conn, grid.parent_id) or grid
        good.append(
            _PersonRow(
                line,
                name,
                phone,
                grid,
                role,
                responsible_for,
                row.get("building", ""),
                row.get("door", ""),
            )
        )
    seen: set[tuple[str, int, str | None]] = set()
    for item in good:
        key = (item.name, item.grid.id, item.phone)
        if key in seen or await _existing_person(conn, item) is not None:
            report.unchanged += 1
        else:
            report.created += 1
        seen.add(key)
    return good


async def _existing_person(conn: AsyncConnection, item: _PersonRow) -> int | None:
    people = repo.people
    found = (
        await conn.execute(
            select(people.c.id).where(
                people.c.name == item.name,
                people.c.region_id == item.grid.id,
                people.c.phone.is_(None) if item.phone is None else people.c.phone == item.phone,
            )
        )
    ).scalar()
    return None if found is None else int(found)


async def _write_people(
    conn: AsyncConnection, planned: list[_PersonRow], report: ImportReport
) -> None:
    report.created = report.unchanged = 0
    for item in planned:
        existing = await _existing_person(conn, item)
        household = None
        if item.building or item.door:
            household = await repo.find_or_create_household(
                conn, item.grid.id, item.building, item.door
            )
        if existing is None:
            existing = await repo.create_person(
                conn,
                name=item.name,
                region_id=item.grid.id,
                phone=item.phone,
                household_id=household,
            )
            report.created += 1
        else:
            report.unchanged += 1
        await repo.grant_role(conn, existing, item.role, item.scope.id)
    report.written = True


# -- uploads (console and API) -------------------------------------------------------------


class ImportForbidden(Exception):
    """The person administers no region, so they may import nothing."""


def importer_scope(person: repo.PersonInfo) -> list[repo.RegionInfo]:
    """The regions a person may import into: those they administer.  Raises ImportForbidden."""
    regions = person.scope_regions(Role.ADMIN)
    if not regions:
        raise ImportForbidden(f"person {person.id} is no admin")
    return regions


async def check_file(
    db: Database, person: repo.PersonInfo, filename: str, data: bytes
) -> ImportReport:
    """The full report of an uploaded file (every bad row with its line), writing nothing."""
    scope = importer_scope(person)
    rows = read_upload(filename, data)
    async with db.read() as conn:
        return await check_upload(conn, rows, scope=scope)


async def import_file(
    db: Database, person: repo.PersonInfo, filename: str, data: bytes, *, skip_bad: bool
) -> ImportReport:
    """Check an uploaded file and, if clean (or ``skip_bad``), import it in one transaction."""
    scope = importer_scope(person)
    rows = read_upload(filename, data)
    async with db.write() as conn:
        return await import_upload(
            conn, rows, source=filename, scope=scope, skip_bad=skip_bad, actor_id=person.id
        )


async def stage_file(
    db: Database, person: repo.PersonInfo, filename: str, data: bytes
) -> tuple[int, ImportReport]:
    """Keep an uploaded file for a later confirmation and report on it: (upload id, report).

    An unreadable file is refused (RosterError) and not kept.
    """
    scope = importer_scope(person)
    rows = read_upload(filename, data)
    async with db.write() as conn:
        upload_id = await rosters.stage_upload(
            conn, person_id=person.id, filename=Path(filename).name, content=data
        )
    async with db.read() as conn:
        return upload_id, await check_upload(conn, rows, scope=scope)


async def import_staged(
    db: Database, person: repo.PersonInfo, upload_id: int, *, skip_bad: bool
) -> tuple[str, ImportReport]:
    """Import a file this person staged: (file name, report), in one transaction.

    The rows are checked again (the database may have changed since the report).  The staged
    file is deleted once imported.  Raises LookupError for an unknown, stale or foreign upload.
    """
    scope = importer_scope(person)
    async with db.write() as conn:
        staged = await rosters.staged_upload(
            conn, upload_id, person_id=person.id, newer_than=utcnow() - rosters.STAGED_FOR
        )
        if staged is None:
            raise LookupError(f"no roster upload {upload_id} for person {person.id}")
        rows = read_upload(staged.filename, bytes(staged.content))
        report = await import_upload(
            conn,
            rows,
            source=staged.filename,
            scope=scope,
            skip_bad=skip_bad,
            actor_id=person.id,
        )
        if report.written:
            await rosters.delete_upload(conn, upload_id)
        return staged.filename, report


async def check_staged(
    db: Database, person: repo.PersonInfo, upload_id: int
) -> tuple[str, ImportReport]:
    """The report of a file this person staged, checked again now: (file name, report).

    Raises LookupError for an unknown, stale or foreign upload.
    """
    scope = importer_scope(person)
    async with db.read() as conn:
        staged = await rosters.staged_upload(
            conn, upload_id, person_id=person.id, newer_than=utcnow() - rosters.STAGED_FOR
        )
        if staged is None:
            raise LookupError(f"no roster upload {upload_id} for person {person.id}")
        rows = read_upload(staged.filename, bytes(staged.content))
        return staged.filename, await check_upload(conn, rows, scope=scope)
