"""The console's setup: config, session key, the CLI, demo logins, the vendored ECharts."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from bot.config import ConfigError, parse_config
from storage.console_models import ConsoleCredential
from storage.seed import DEMO_PASSWORD
from tests.console_support import login, without_tags
from tests.test_cli import main, write_config

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "bot" / "console" / "static" / "vendor" / "echarts"


def test_vendored_echarts_is_the_version_package_json_pins():
    pinned = json.loads((ROOT / "package.json").read_text())["dependencies"]["echarts"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "pin echarts exactly"
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/echarts"]["version"] == pinned
    bundle = (VENDOR / "echarts.min.js").read_text(encoding="utf-8")
    assert f'version="{pinned}"' in bundle
    assert "Apache License" in (VENDOR / "LICENSE").read_text()
    assert "Apache ECharts" in (VENDOR / "NOTICE").read_text()


def test_session_key_must_be_a_fernet_key():
    with pytest.raises(ConfigError) as info:
        parse_config({"console": {"session_key": "too-short"}})
    assert str(info.value).startswith("console.session_key: ")
    assert "\n" not in str(info.value)
    key = "A" * 43 + "="
    assert parse_config({"console": {"session_key": key}}).console.session_key == key
    with pytest.raises(ConfigError, match=r"^console\.path: "):
        parse_config({"console": {"path": "console/"}})


async def test_without_a_key_the_console_makes_one_and_says_so(database_url, start_app, caplog):
    config = parse_config({"database": {"url": database_url}, "scheduler": {"enabled": False}})
    with caplog.at_level(logging.WARNING, logger="bot.console"):
        client, _ = await start_app(config)
    warnings = [r for r in caplog.records if "session_key" in r.getMessage()]
    assert len(warnings) == 1
    page = await client.get("/console/login")
    assert page.status == 200 and "登录管理台" in await page.text()


async def test_disabled_console_is_not_served(database_url, start_app):
    config = parse_config(
        {
            "database": {"url": database_url},
            "scheduler": {"enabled": False},
            "console": {"enabled": False},
        }
    )
    client, _ = await start_app(config)
    assert (await client.get("/console/login")).status == 404


@pytest.fixture
def seeded(tmp_path: Path, sqlite_template: Path, capsys) -> Path:
    db_file = tmp_path / "cli.db"
    shutil.copy(sqlite_template, db_file)
    config = write_config(tmp_path, db_file)
    assert main(["--config", str(config), "seed-demo", "--residents", "12"]) == 0
    return config


def test_seed_demo_prints_a_working_demo_login(seeded, capsys):
    out = capsys.readouterr().out
    match = re.search(r"console demo login: (\d+) / (\S+)", out)
    assert match and match.group(2) == DEMO_PASSWORD
    assert main(["--config", str(seeded), "user", "demo-logins"]) == 0
    again = capsys.readouterr().out
    assert f"{match.group(1)} / {DEMO_PASSWORD}" in again and "/console/" in again


def _credentials(config: Path) -> dict[int, int]:
    url = yaml_url(config)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            table = ConsoleCredential.__table__
            return {r.person_id: r.version for r in conn.execute(select(table))}
    finally:
        engine.dispose()


def yaml_url(config: Path) -> str:
    from bot.config import load_config

    return load_config(config).database.url.replace("+aiosqlite", "")


def test_set_password_reads_stdin_never_argv(seeded, monkeypatch, capsys):
    before = _credentials(seeded)
    person = min(before)
    monkeypatch.setattr("sys.stdin", io.StringIO("a-new-secret-1\n"))
    assert main(["--config", str(seeded), "user", "set-password", "--person", str(person)]) == 0
    assert "password set for person" in capsys.readouterr().out
    assert _credentials(seeded)[person] == before[person] + 1
    # Too short: refused, nothing changes.
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["--config", str(seeded), "user", "set-password", "--person", str(person)]) == 1
    assert "at least 8" in capsys.readouterr().err
    assert _credentials(seeded)[person] == before[person] + 1
    # Unknown phone and unknown person.
    monkeypatch.setattr("sys.stdin", io.StringIO("a-new-secret-1\n"))
    assert main(["--config", str(seeded), "user", "set-password", "--phone", "100"]) == 1
    assert "no person with phone 100" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("a-new-secret-1\n"))
    assert main(["--config", str(seeded), "user", "set-password", "--person", "99999"]) == 1
    assert "no person with id 99999" in capsys.readouterr().err
    # There is no way to give it on the command line.
    with pytest.raises(SystemExit):
        main(["--config", str(seeded), "user", "set-password", "--person", "1", "--password", "x"])


async def test_set_password_by_phone_then_log_in(seeded, monkeypatch, start_app, capsys):
    from bot.config import load_config

    config = load_config(seeded)
    out = capsys.readouterr().out
    phone = re.search(r"console demo login: (\d+) /", out)
    assert phone
    monkeypatch.setattr("sys.stdin", io.StringIO("brand-new-pass-7\n"))
    command = ["--config", str(seeded), "user", "set-password", "--phone", phone.group(1)]
    assert await asyncio.to_thread(main, command) == 0  # the CLI runs its own event loop
    client, _ = await start_app(config)
    assert (await login(client, phone.group(1), DEMO_PASSWORD)).status == 401
    response = await login(client, phone.group(1), "brand-new-pass-7")
    assert response.status == 302
    assert "区管理员" in without_tags(await (await client.get("/console/")).text())


async def test_console_tables_match_their_migration(db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from storage.schema import metadata

    async with db.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert [d for d in diff if "console" in str(d)] == []
