"""The day's check-ins of a region as an XLSX file, in bounded memory however large the region.

Rows are read from the database a page at a time (by record id) and appended to an openpyxl
write-only workbook, which streams each row to a temporary file: neither the rows nor the sheet
are ever held whole, so a district of a million records costs the memory of one page.  The
workbook is written in a worker thread (openpyxl is pure Python and would stall the event loop
for the length of a big export).

The headers and cell words are ``templates/<locale>/export/checkins.yaml``; the answer columns
are the configured questions, labelled as staff know them (``checkin.questions[].label``).
Every export is written to the audit log with who, which region, which day and how many rows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

from flows.checkin_config import CheckinConfig, QuestionConfig
from flows.texts import TEMPLATE_ROOT
from storage import checkin as store
from storage import repo
from storage.db import Database

PAGE_SIZE = 2000
MAX_SHEET_ROWS = 1_048_576
"""Excel's row limit; a larger export continues on a second sheet."""
MAX_SHEET_TITLE = 31


@dataclass(frozen=True, slots=True)
class ExportLabels:
    """Sheet name, column headers and cell words of the export, from the locale's YAML."""

    sheet: str
    columns: dict[str, str]
    values: dict[str, Any]

    @classmethod
    def load(cls, locale: str = "zh_CN", root: Path = TEMPLATE_ROOT) -> ExportLabels:
        path = root / locale / "export" / "checkins.yaml"
        if not path.is_file():
            path = root / "zh_CN" / "export" / "checkins.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return cls(str(data["sheet"]), dict(data["columns"]), dict(data["values"]))


FIXED_COLUMNS = (
    "date",
    "name",
    "grid",
    "household",
    "reported_by",
    "status",
    "risk",
    "reasons",
)


class _RowWriter:
    """Turns record rows into sheet rows (runs in the worker thread)."""

    def __init__(
        self,
        workbook: Workbook,
        cfg: CheckinConfig,
        labels: ExportLabels,
        tz: ZoneInfo,
        max_rows: int,
    ) -> None:
        self.workbook = workbook
        self.max_rows = max_rows
        self.questions = cfg.questions
        self.labels = labels
        self.tz = tz
        self.values = labels.values
        self.header = [labels.columns[c] for c in FIXED_COLUMNS]
        self.header += [q.label for q in self.questions]
        self.header.append(labels.columns["answered_at"])
        self.sheets = 0
        self.sheet: WriteOnlyWorksheet | None = None
        self.sheet_rows = 0

    def _new_sheet(self) -> WriteOnlyWorksheet:
        self.sheets += 1
        title = self.labels.sheet if self.sheets == 1 else f"{self.labels.sheet} ({self.sheets})"
        sheet = self.workbook.create_sheet(title=title[:MAX_SHEET_TITLE])
        sheet.append([self._cell(sheet, h) for h in self.header])
        self.sheet, self.sheet_rows = sheet, 1
        return sheet

    def append(self, rows: list[Any]) -> None:
        for row in rows:
            sheet = self.sheet
            if sheet is None or self.sheet_rows >= self.max_rows:
                sheet = self._new_sheet()
            sheet.append([self._cell(sheet, v) for v in self._values(row)])
            self.sheet_rows += 1

    def finish(self) -> None:
        if self.sheet is None:
            self._new_sheet()  # an empty day still has its headers

    def _values(self, row: Any) -> list[Any]:
        words = self.values
        household = f"{row.building or ''}{row.door or ''}"
        reporter = row.reporter_name if row.reporter_id not in (None, row.person_id) else ""
        answers = dict(row.answers or {})
        cells: list[Any] = [
            row.day.isoformat(),
            row.name,
            row.region_code,
            household,
            reporter or "",
            words["status"].get(row.status, row.status),
            words["risk"].get(row.risk, row.risk),
            words["separator"].join(row.reasons or []),
        ]
        cells += [self._answer(q, answers.get(q.id)) for q in self.questions]
        cells.append(row.created_at.astimezone(self.tz).strftime("%Y-%m-%d %H:%M"))
        return cells

    def _answer(self, question: QuestionConfig, value: Any) -> str:
        words = self.values
        if value is None:
            return str(words["unanswered"])
        if question.type == "number":
            return f"{value}{question.unit}"
        if question.type == "yes_no":
            return str(words["yes"] if value else words["no"])
        if question.type in ("single", "multiple"):
            chosen = value if isinstance(value, list) else [value]
            labels = [o.label for o in question.options if o.id in chosen]
            return str(words["separator"]).join(labels)
        return str(value)

    @staticmethod
    def _cell(sheet: WriteOnlyWorksheet, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = ILLEGAL_CHARACTERS_RE.sub("", value)
        if value.startswith("="):
            # openpyxl would store a leading "=" as a formula: a name typed by a resident
            # must never run in the admin's spreadsheet.
            cell = WriteOnlyCell(sheet, value=value)
            cell.data_type = "s"
            return cell
        return value


async def write_checkins_xlsx(
    db: Database,
    cfg: CheckinConfig,
    region: repo.RegionInfo,
    day: date,
    path: Path,
    *,
    tz: ZoneInfo,
    labels: ExportLabels,
    page_size: int = PAGE_SIZE,
    sheet_rows: int = MAX_SHEET_ROWS,
) -> int:
    """Write the current check-in records of ``day`` of people living under ``region`` to
    ``path`` (XLSX); returns the number of records written.

    A sheet holds at most ``sheet_rows`` rows (with its header); the rest go on more sheets.
    """
    workbook = Workbook(write_only=True)
    writer = _RowWriter(workbook, cfg, labels, tz, sheet_rows)
    count, after = 0, 0
    while True:
        # A short read per page: a long export never holds a transaction open.
        async with db.read() as conn:
            rows = await store.records_in_scope(
                conn, [region.path], day, limit=page_size, after_id=after
            )
        if not rows:
            break
        await asyncio.to_thread(writer.append, rows)
        count += len(rows)
        after = rows[-1].id
        if len(rows) < page_size:
            break
    writer.finish()
    await asyncio.to_thread(workbook.save, str(path))
    return count


async def export_checkins(
    db: Database,
    person: repo.PersonInfo,
    cfg: CheckinConfig,
    region: repo.RegionInfo,
    day: date,
    path: Path,
    *,
    tz: ZoneInfo,
    labels: ExportLabels,
    page_size: int = PAGE_SIZE,
) -> int:
    """Export a region the caller may see (checked by the caller) and audit it: the file is
    written first, the audit entry before anyone reads it."""
    count = await write_checkins_xlsx(
        db, cfg, region, day, path, tz=tz, labels=labels, page_size=page_size
    )
    async with db.write() as conn:
        await repo.record_audit(
            conn,
            actor_id=person.id,
            action="checkin.export",
            target_type="region",
            target_id=region.code,
            region_id=region.id,
            detail={"date": day.isoformat(), "rows": count},
        )
    return count
