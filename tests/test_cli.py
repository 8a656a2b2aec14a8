"""The command line (main.py), run in-process against SQLite files named by a temp config."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml
from openpyxl import Workbook
from sqlalchemy import create_engine, func, select

from bot.api import PREFIX
from bot.config import load_config
from storage.models import Household, Person, PersonRole, Region
from storage.rumor_models import Clarification

# main.py is the entry script beside the packages, not an installed module: load it by path.
_spec = importlib.util.spec_from_file_location(
    "gridbot_main", Path(__file__).resolve().parent.parent / "main.py"
)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
main = _module.main


def write_config(directory: Path, db_file: Path, **extra) -> Path:
    data = {
        "database": {"url": f"sqlite+aiosqlite:///{db_file}"},
        "scheduler": {"enabled": False},
        "log_level": "WARNING",
        **extra,
    }
    path = directory / "gridbot.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def seeded(tmp_path: Path, sqlite_template: Path, capsys) -> Path:
    """A migrated SQLite file with the demo city (60 residents); returns its config file."""
    db_file = tmp_path / "cli.db"
    shutil.copy(sqlite_template, db_file)
    config = write_config(tmp_path, db_file)
    assert main(["--config", str(config), "seed-demo", "--residents", "60"]) == 0
    capsys.readouterr()
    return config


def counts(config: Path) -> dict[str, int]:
    url = load_config(config).database.url.replace("+aiosqlite", "")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table.__tablename__: int(
                    conn.execute(select(func.count()).select_from(table.__table__)).scalar() or 0
                )
                for table in (Person, PersonRole, Household, Region, Clarification)
            }
    finally:
        engine.dispose()


def person_rows(config: Path, *names: str) -> dict[str, tuple]:
    url = load_config(config).database.url.replace("+aiosqlite", "")
    engine = create_engine(url)
    people, regions, roles = Person.__table__, Region.__table__, PersonRole.__table__
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(people.c.name, people.c.phone, regions.c.code, roles.c.role)
                .join(regions, regions.c.id == people.c.region_id)
                .join(roles, roles.c.person_id == people.c.id)
                .where(people.c.name.in_(names))
            )
            return {r.name: (r.phone, r.code, r.role) for r in rows}
    finally:
        engine.dispose()


def write_csv(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


PEOPLE_HEADER = "姓名,手机号,网格编码,角色,楼栋,门牌"


def test_db_upgrade_creates_a_fresh_database(tmp_path, capsys):
    db_file = tmp_path / "fresh" / "new.db"
    db_file.parent.mkdir()
    config = write_config(tmp_path, db_file)
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert set(counts(config).values()) == {0}
    # Running it again changes nothing and still succeeds.
    assert main(["--config", str(config), "db", "upgrade"]) == 0


def test_seed_demo_then_if_empty_is_a_no_op(tmp_path, sqlite_template, capsys):
    db_file = tmp_path / "cli.db"
    shutil.copy(sqlite_template, db_file)
    config = write_config(tmp_path, db_file)
    assert main(["--config", str(config), "seed-demo", "--residents", "30"]) == 0
    out = capsys.readouterr().out
    assert "6 grids, 30 residents" in out
    assert "G0101" in out
    seeded = counts(config)
    assert seeded["regions"] == 1 + 1 + 2 + 3 + 6
    assert seeded["people"] == 30 + 6 + 3
    assert seeded["rumor_clarifications"] == 4  # the demo can answer rumors out of the box

    assert main(["--config", str(config), "seed-demo", "--if-empty"]) == 0
    assert "not seeded" in capsys.readouterr().out
    assert main(["--config", str(config), "seed-demo"]) == 1
    assert counts(config) == seeded


def test_people_file_with_bad_rows_imports_nothing_and_names_every_line(seeded, tmp_path, capsys):
    before = counts(seeded)
    path = write_csv(
        tmp_path / "people.csv",
        [
            PEOPLE_HEADER,
            "张小明,13800138000,G0101,居民,1栋,101",
            "坏电话,12345,G0101,居民,1栋,102",
            "无网格,13800138001,G9999,居民,1栋,103",
            "",
            "怪角色,13800138002,G0101,厨师,1栋,104",
            ",13800138003,G0101,居民,1栋,105",
            "李网格,139 0013 9000,g0102,网格员,,",
            "王医生,13700137000,G0101,医生,,",
        ],
    )
    assert main(["--config", str(seeded), "import-roster", str(path)]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    bad = [line for line in lines if line.startswith("line ")]
    assert [line.split(":")[0] for line in bad] == ["line 3", "line 4", "line 6", "line 7"]
    assert "12345" in bad[0] and "G9999" in bad[1] and "厨师" in bad[2] and "姓名" in bad[3]
    assert "nothing imported" in lines[-1]
    assert counts(seeded) == before

    assert main(["--config", str(seeded), "import-roster", str(path), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "3 created" in captured.out
    assert captured.err.count("line ") == 4
    after = counts(seeded)
    assert after["people"] == before["people"] + 3
    assert after["households"] == before["households"] + 1
    rows = person_rows(seeded, "张小明", "李网格", "王医生", "坏电话", "怪角色")
    assert rows["张小明"] == ("13800138000", "G0101", "resident")
    assert rows["李网格"] == ("13900139000", "G0102", "warden")
    assert rows["王医生"][2] == "doctor"
    assert set(rows) == {"张小明", "李网格", "王医生"}

    # The same file again creates nothing: no person, no household, no role.
    assert main(["--config", str(seeded), "import-roster", str(path), "--skip-bad"]) == 0
    assert "0 created, 3 already present" in capsys.readouterr().out
    assert counts(seeded) == after


def test_xlsx_people_file_with_numeric_phones(seeded, tmp_path, capsys):
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["姓名", "手机号", "网格编码", "角色", "楼栋", "门牌"])
    sheet.append(["赵表格", 13600136000, "G0201", "居民", "3栋", "201"])
    sheet.append(["钱表格", None, "G0202", "志愿者", None, None])
    sheet.append([None, None, None, None, None, None])
    path = tmp_path / "people.xlsx"
    workbook.save(path)
    before = counts(seeded)

    assert main(["--config", str(seeded), "import-roster", str(path)]) == 0
    assert "people: 2 rows, 2 created" in capsys.readouterr().out
    rows = person_rows(seeded, "赵表格", "钱表格")
    assert rows["赵表格"] == ("13600136000", "G0201", "resident")
    assert rows["钱表格"] == (None, "G0202", "volunteer")
    assert counts(seeded)["people"] == before["people"] + 2


def test_gbk_encoded_csv(seeded, tmp_path, capsys):
    path = write_csv(
        tmp_path / "gbk.csv",
        [PEOPLE_HEADER, "孙国标,13500135000,G0103,居民,5栋,502"],
        encoding="gbk",
    )
    assert main(["--config", str(seeded), "import-roster", str(path)]) == 0
    assert "1 created" in capsys.readouterr().out
    assert person_rows(seeded, "孙国标") == {"孙国标": ("13500135000", "G0103", "resident")}


def test_unreadable_files_are_refused(seeded, tmp_path, capsys):
    before = counts(seeded)
    wrong = write_csv(tmp_path / "wrong.csv", ["名字,号码", "张三,13800138000"])
    assert main(["--config", str(seeded), "import-roster", str(wrong)]) == 2
    assert "headers not recognised" in capsys.readouterr().err
    text = tmp_path / "people.txt"
    text.write_text(PEOPLE_HEADER, encoding="utf-8")
    assert main(["--config", str(seeded), "import-roster", str(text)]) == 2
    assert ".csv" in capsys.readouterr().err
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(b"not a zip file")
    assert main(["--config", str(seeded), "import-roster", str(broken)]) == 2
    assert "XLSX" in capsys.readouterr().err
    missing = tmp_path / "missing.csv"
    assert main(["--config", str(seeded), "import-roster", str(missing)]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert counts(seeded) == before


def test_regions_file_with_a_bad_parent(seeded, tmp_path, capsys):
    before = counts(seeded)
    path = write_csv(
        tmp_path / "regions.csv",
        [
            "编码,名称,级别,上级编码",
            "S03,北湖街道,街道,D01",
            "C0301,莲花社区,社区,S03",
            "G0301,莲花社区第1网格,网格,C0301",
            "G0399,孤儿网格,网格,NOPE",
            "C0399,错层社区,社区,D01",
        ],
    )
    assert main(["--config", str(seeded), "import-roster", str(path)]) == 1
    err = capsys.readouterr().err
    bad = [line for line in err.splitlines() if line.startswith("line ")]
    assert [line.split(":")[0] for line in bad] == ["line 5", "line 6"]
    assert "NOPE" in bad[0]
    assert counts(seeded) == before

    assert main(["--config", str(seeded), "import-roster", str(path), "--skip-bad"]) == 0
    assert "regions: 5 rows, 3 created" in capsys.readouterr().out
    assert counts(seeded)["regions"] == before["regions"] + 3

    # People can now be imported into the new grid; the regions file again creates nothing.
    people = write_csv(tmp_path / "p.csv", [PEOPLE_HEADER, "周新区,13300133000,G0301,,,"])
    assert main(["--config", str(seeded), "import-roster", str(people)]) == 0
    assert person_rows(seeded, "周新区") == {"周新区": ("13300133000", "G0301", "resident")}
    assert main(["--config", str(seeded), "import-roster", str(path), "--skip-bad"]) == 0
    assert "0 created, 3 already present" in capsys.readouterr().out


async def test_token_create_prints_a_token_that_works(seeded, start_app, capsys):
    config = load_config(seeded)
    assert (
        await asyncio.to_thread(
            main, ["--config", str(seeded), "token", "create", "--person", "1", "--label", "cli"]
        )
        == 0
    )
    token = capsys.readouterr().out.strip()
    assert token.startswith("gb_") and "\n" not in token

    client, _ = await start_app(config)
    r = await client.get(f"{PREFIX}/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200
    me = await r.json()
    assert me["id"] == 1
    assert me["scopes"][0]["role"] == "warden"

    assert (
        await asyncio.to_thread(
            main, ["--config", str(seeded), "token", "create", "--person", "999999"]
        )
        == 1
    )
    assert "999999" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({"servr": {"port": 8080}}, "servr"),
        ({"server": {"port": "eighty"}}, "server.port"),
        ({"channels": {"bridge": {"secert": "x"}}}, "channels.bridge.secert"),
        ({"channels": {"bridge": {"enabled": True}}}, "channels.bridge.secret"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"server": {"trusted_proxies": ["10.0.0.0/33"]}}, "server.trusted_proxies"),
    ],
)
def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path, capsys, content, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    assert main(["--config", str(path), "db", "upgrade"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"config error: {key}:")
    assert not list(tmp_path.glob("*.db"))


def test_missing_and_malformed_config_files_exit_2(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "none.yaml"), "db", "upgrade"]) == 2
    assert "not found" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("server: [unclosed", encoding="utf-8")
    assert main(["--config", str(broken), "db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err
