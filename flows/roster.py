"""Roster import from CSV or XLSX with Chinese headers: regions, or people with roles.

A people file has 姓名, 手机号, 网格编码, 角色, 楼栋, 门牌 (and optionally 管辖编码, the region a
staff member is responsible for).  A regions file has 编码, 名称, 级别, 上级编码.  Every row is
checked first; every bad row is reported with its line number, and nothing is written from a
file with errors unless ``skip_bad`` is set.  Importing the same file twice creates nothing new.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import repo
from storage.models import LEVEL_ORDER, RegionLevel, Role

PHONE = re.compile(r"^1[3-9]\d{9}$")
# Column sizes (storage/models.py): a longer value is a bad row, not a database error.
MAX_CODE = 64
MAX_REGION_NAME = 128
MAX_ADDRESS_PART = 64

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


class RosterError(ValueError):
    """The file as a whole cannot be read (format, headers)."""


@dataclass
class ImportReport:
    kind: str
    rows: int = 0
    created: int = 0
    unchanged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    written: bool = False


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {header: value}) from a CSV (UTF-8 or GBK) or XLSX file."""
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        yield from _xlsx_rows(path)
    elif suffix == ".csv":
        yield from _csv_rows(path)
    else:
        raise RosterError(f"{path.name}: only .csv and .xlsx files can be imported")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise RosterError(f"{path.name}: not UTF-8 or GBK text")
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise RosterError(f"{path.name}: the file is empty")
    names = [h.strip() for h in header]
    for number, row in enumerate(reader, start=2):
        if any(cell.strip() for cell in row):
            yield (
                number,
                {names[i]: (row[i] if i < len(row) else "").strip() for i in range(len(names))},
            )


def _xlsx_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several unrelated types for a broken file
        raise RosterError(f"{path.name}: not a readable XLSX file ({exc})") from None
    try:
        rows = workbook.active.iter_rows(values_only=True) if workbook.active else iter(())
        header = next(rows, None)
        if not header:
            raise RosterError(f"{path.name}: the first sheet is empty")
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
    if {"编码", "级别"} <= headers:
        return "regions"
    if {"姓名", "网格编码"} <= headers:
        return "people"
    raise RosterError(
        "headers not recognised: a people file needs 姓名 and 网格编码 (and optionally 手机号, "
        "角色, 楼栋, 门牌, 管辖编码); a regions file needs 编码, 名称, 级别, 上级编码"
    )


async def import_roster(
    conn: AsyncConnection, path: Path, *, skip_bad: bool = False, actor_id: int | None = None
) -> ImportReport:
    """Check every row, then write all good rows in the caller's transaction."""
    rows = list(read_rows(path))
    if not rows:
        raise RosterError(f"{path.name}: no data rows")
    kind = detect_kind(set(rows[0][1]))
    report = ImportReport(kind=kind, rows=len(rows))
    if kind == "regions":
        await _import_regions(conn, rows, report, skip_bad)
    else:
        await _import_people(conn, rows, report, skip_bad)
    if report.written:
        await repo.record_audit(
            conn,
            actor_id=actor_id,
            action=f"roster.import.{kind}",
            target_type="file",
            target_id=path.name,
            detail={"rows": report.rows, "created": report.created, "errors": len(report.errors)},
        )
    return report


async def _import_regions(
    conn: AsyncConnection,
    rows: list[tuple[int, dict[str, str]]],
    report: ImportReport,
    skip_bad: bool,
) -> None:
    planned: dict[str, tuple[str, RegionLevel, str]] = {}
    good: list[tuple[int, str]] = []
    for line, raw in rows:
        row = _map_headers(raw, REGION_HEADERS)
        code, name = row.get("code", "").upper(), row.get("name", "")
        level = LEVEL_WORDS.get(row.get("level", ""))
        parent = row.get("parent", "").upper()
        problem = None
        if not code or not name:
            problem = "编码和名称不能为空"
        elif len(code) > MAX_CODE or len(name) > MAX_REGION_NAME:
            problem = f"编码最长 {MAX_CODE} 个字符，名称最长 {MAX_REGION_NAME} 个字符"
        elif level is None:
            problem = f"级别“{row.get('level', '')}”无效，应为 市/区/街道/社区/网格"
        elif code in planned:
            problem = f"编码 {code} 在文件中重复"
        else:
            parent_level = await _level_of(conn, parent, planned) if parent else None
            if level is RegionLevel.CITY and parent:
                problem = "市级区域不能有上级编码"
            elif level is not RegionLevel.CITY and parent_level is None:
                problem = f"上级编码 {parent or '（空）'} 不存在"
            elif parent_level is not None and (
                LEVEL_ORDER.index(level) != LEVEL_ORDER.index(parent_level) + 1
            ):
                problem = f"{level.value} 不能挂在 {parent_level.value} 之下"
        if problem:
            report.errors.append((line, problem))
            continue
        assert level is not None
        planned[code] = (name, level, parent)
        good.append((line, code))
    if report.errors and not skip_bad:
        return
    for _line, code in good:
        name, level, parent_code = planned[code]
        if await repo.get_region_by_code(conn, code) is not None:
            report.unchanged += 1
            continue
        above = await repo.get_region_by_code(conn, parent_code) if parent_code else None
        await repo.create_region(conn, code=code, name=name, level=level, parent=above)
        report.created += 1
    report.written = True


async def _level_of(
    conn: AsyncConnection, code: str, planned: dict[str, tuple[str, RegionLevel, str]]
) -> RegionLevel | None:
    if code in planned:
        return planned[code][1]
    region = await repo.get_region_by_code(conn, code)
    return RegionLevel(region.level) if region else None


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


async def _import_people(
    conn: AsyncConnection,
    rows: list[tuple[int, dict[str, str]]],
    report: ImportReport,
    skip_bad: bool,
) -> None:
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
        problem = None
        if not name:
            problem = "姓名不能为空"
        elif len(name) > 64:
            problem = "姓名过长"
        elif len(row.get("building", "")) > MAX_ADDRESS_PART:
            problem = f"楼栋最长 {MAX_ADDRESS_PART} 个字符"
        elif len(row.get("door", "")) > MAX_ADDRESS_PART:
            problem = f"门牌最长 {MAX_ADDRESS_PART} 个字符"
        elif phone is not None and not PHONE.match(phone):
            problem = f"手机号“{phone}”格式不对，应为 11 位手机号"
        elif grid is None:
            problem = f"网格编码“{grid_code}”不存在" if grid_code else "网格编码不能为空"
        elif grid.level != RegionLevel.GRID:
            problem = f"“{grid_code}”不是网格（是{grid.level}）"
        elif role is None:
            problem = f"角色“{row.get('role')}”无效，应为 居民/网格员/医生/志愿者/管理员"
        if problem:
            report.errors.append((line, problem))
            continue
        assert grid is not None and role is not None
        scope = grid
        scope_code = row.get("scope", "").upper()
        if scope_code:
            found = await region(scope_code)
            if found is None:
                report.errors.append((line, f"管辖编码“{scope_code}”不存在"))
                continue
            scope = found
        elif role in (Role.DOCTOR, Role.VOLUNTEER) and grid.parent_id is not None:
            scope = await repo.get_region(conn, grid.parent_id) or grid
        good.append(
            _PersonRow(
                line, name, phone, grid, role, scope, row.get("building", ""), row.get("door", "")
            )
        )
    if report.errors and not skip_bad:
        return
    people = repo.people
    for item in good:
        existing = (
            await conn.execute(
                select(people.c.id).where(
                    people.c.name == item.name,
                    people.c.region_id == item.grid.id,
                    people.c.phone.is_(None)
                    if item.phone is None
                    else people.c.phone == item.phone,
                )
            )
        ).scalar()
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
        await repo.grant_role(conn, int(existing), item.role, item.scope.id)
    report.written = True
