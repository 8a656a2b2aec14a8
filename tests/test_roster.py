"""Roster import (flows/roster.py) on SQLite and PostgreSQL: checks first, writes all or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from flows.roster import RosterError, describe_problem, import_roster
from flows.texts import Texts
from storage import repo
from storage.models import AuditEntry, Household, Person, PersonRole, Region

PEOPLE_HEADER = "姓名,手机号,网格编码,角色,楼栋,门牌,管辖编码"
REGIONS_HEADER = "编码,名称,级别,上级编码"


def csv_file(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def table_counts(db) -> dict[str, int]:
    result = {}
    async with db.read() as conn:
        for model in (Person, PersonRole, Household, Region, AuditEntry):
            table = model.__table__
            result[table.name] = int(
                (await conn.execute(select(func.count()).select_from(table))).scalar() or 0
            )
    return result


async def scopes_of(db, name: str) -> list[tuple[str, str]]:
    people, roles, regions = Person.__table__, PersonRole.__table__, Region.__table__
    async with db.read() as conn:
        rows = await conn.execute(
            select(roles.c.role, regions.c.code)
            .join(people, people.c.id == roles.c.person_id)
            .join(regions, regions.c.id == roles.c.scope_region_id)
            .where(people.c.name == name)
            .order_by(roles.c.id)
        )
        return [(r.role, r.code) for r in rows]


async def test_staff_scopes_come_from_the_file_or_the_grids_community(demo, db, tmp_path):
    path = csv_file(
        tmp_path,
        "staff.csv",
        [
            PEOPLE_HEADER,
            "钱网格,13811112222,G0101,网格员,,,",
            "孙医生,13811113333,G0103,医生,,,",
            "李志愿,13811114444,G0201,志愿者,,,",
            "周街道,13811115555,G0101,管理员,,,S01",
            "吴双职,13811116666,G0102,网格员,,,G0102",
            "吴双职,13811116666,G0102,志愿者,,,",
        ],
    )
    async with db.write() as conn:
        report = await import_roster(conn, path, actor_id=demo.admin_id)
    assert (report.kind, report.rows, report.created, report.unchanged) == ("people", 6, 5, 1)
    assert report.errors == [] and report.written
    assert await scopes_of(db, "钱网格") == [("warden", "G0101")]
    assert await scopes_of(db, "孙医生") == [("doctor", "C0102")]
    assert await scopes_of(db, "李志愿") == [("volunteer", "C0201")]
    assert await scopes_of(db, "周街道") == [("admin", "S01")]
    assert await scopes_of(db, "吴双职") == [("warden", "G0102"), ("volunteer", "C0101")]

    async with db.read() as conn:
        entry = (
            await conn.execute(
                select(AuditEntry.__table__).where(
                    AuditEntry.__table__.c.action == "roster.import.people"
                )
            )
        ).one()
    assert (entry.actor_id, entry.target_id) == (demo.admin_id, "staff.csv")
    assert entry.detail == {"rows": 6, "created": 5, "errors": 0}


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("张三,1380013800,G0101,居民,,,", "1380013800"),
        ("张三,23800138000,G0101,居民,,,", "23800138000"),
        ("张三,13800138000,,居民,,,", "网格编码不能为空"),
        ("张三,13800138000,C0101,居民,,,", "不是网格"),
        ("张三,13800138000,G0101,保安,,,", "保安"),
        ("张三,13800138000,G0101,网格员,,,NOPE", "NOPE"),
        ("张" * 65 + ",13800138000,G0101,居民,,,", "姓名"),
        ("张三,13800138000,G0101,居民," + "栋" * 65 + ",101,", "楼栋"),
        ("张三,13800138000,G0101,居民,1栋," + "1" * 65 + ",", "门牌"),
    ],
    ids=[
        "short-phone",
        "bad-phone-prefix",
        "no-grid",
        "not-a-grid",
        "unknown-role",
        "unknown-scope",
        "long-name",
        "long-building",
        "long-door",
    ],
)
async def test_each_bad_people_row_is_reported_and_nothing_written(
    demo, db, tmp_path, row, problem
):
    path = csv_file(
        tmp_path, "people.csv", [PEOPLE_HEADER, "好人甲,13900001111,G0101,居民,2栋,201,", row]
    )
    before = await table_counts(db)
    async with db.write() as conn:
        report = await import_roster(conn, path)
    assert len(report.errors) == 1
    assert report.errors[0].line == 3
    assert problem in describe_problem(Texts(), report.errors[0])
    assert not report.written and report.created == 0
    assert await table_counts(db) == before


async def test_regions_are_checked_against_the_tree(demo, db, tmp_path):
    path = csv_file(
        tmp_path,
        "regions.csv",
        [
            REGIONS_HEADER,
            "s03,北湖街道,街道,d01",
            "C0301,莲花社区,社区,S03",
            "G0301,莲花第1网格,网格,C0301",
            "G0302,跳级网格,网格,S03",
            "C0301,重复社区,社区,S03",
            "X1,无级别,乡镇,S03",
            ",无编码,社区,S03",
            "C2,新城市,市,D01",
            "G0399,孤儿网格,网格,NOPE",
            "G0303,挂在孤儿下,网格,G0399",
            "G" + "9" * 64 + ",编码太长,网格,C0301",
            "G0304," + "名" * 129 + ",网格,C0301",
        ],
    )
    before = await table_counts(db)
    async with db.write() as conn:
        report = await import_roster(conn, path)
    assert [p.line for p in report.errors] == [5, 6, 7, 8, 9, 10, 11, 12, 13]
    messages = {p.line: describe_problem(Texts(), p) for p in report.errors}
    assert "网格不能直接挂在街道之下" in messages[5]
    assert "重复" in messages[6]
    assert "乡镇" in messages[7]
    assert "NOPE" in messages[10]
    assert "G0399" in messages[11]
    assert "编码最长" in messages[12] and "名称最长" in messages[13]
    assert await table_counts(db) == before

    async with db.write() as conn:
        report = await import_roster(conn, path, skip_bad=True)
    assert (report.created, report.unchanged, report.written) == (3, 0, True)
    async with db.read() as conn:
        grid = await repo.get_region_by_code(conn, "G0301")
        street = await repo.get_region_by_code(conn, "S03")
    assert grid is not None and street is not None
    assert grid.level == "grid" and street.contains(grid) and demo.district.contains(street)

    async with db.write() as conn:
        again = await import_roster(conn, path, skip_bad=True)
    assert (again.created, again.unchanged) == (0, 3)


async def test_files_that_cannot_be_read_raise_roster_error(demo, db, tmp_path):
    cases = {
        "headers.csv": [PEOPLE_HEADER],
        "unknown.csv": ["名字,号码", "张三,13800138000"],
    }
    for name, lines in cases.items():
        path = csv_file(tmp_path, name, lines)
        async with db.write() as conn:
            with pytest.raises(RosterError):
                await import_roster(conn, path)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("姓名,网格编码\n".encode() + b"\xff\xfe\xfd,G0101\n")
    async with db.write() as conn:
        with pytest.raises(RosterError, match="UTF-8 or GBK"):
            await import_roster(conn, latin)
