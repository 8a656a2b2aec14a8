"""gridbot command line: serve, db upgrade, seed-demo, import-roster, token create, user,
simulate."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import secrets
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.api import create_token
from bot.app import build_runtime, serve
from bot.channels.simulator import CHANNEL as SIM_CHANNEL
from bot.config import Config, ConfigError, load_config
from bot.console.passwords import PasswordRefused, hash_password, set_password
from bot.messages import Inbound
from flows.roster import RosterError, describe_problem, import_roster
from flows.texts import Texts
from storage import repo
from storage.console import credentials
from storage.db import Database
from storage.migrate import upgrade_database
from storage.models import PersonRole, SimMessage, utcnow
from storage.seed import DEMO_PASSWORD, seed_demo, seed_demo_clarifications, seed_demo_passwords

log = logging.getLogger("gridbot")


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    host, port = config.server.host, config.server.port
    print(f"gridbot serving on http://{host}:{port}")
    if config.channels.simulator.enabled:
        print(f"simulator: http://{host}:{port}{config.channels.simulator.path}")
    if config.console.enabled:
        print(f"console: http://{host}:{port}{config.console.path}/")
    serve(config, access_log=None if config.log_level != "DEBUG" else logging.getLogger("access"))
    return 0


def cmd_db_upgrade(config: Config, args: argparse.Namespace) -> int:
    upgrade_database(config.database.url)
    print(f"database is up to date: {_safe_url(config.database.url)}")
    return 0


def cmd_seed_demo(config: Config, args: argparse.Namespace) -> int:
    async def run() -> int:
        db = Database(config.database.url)
        try:
            async with db.write() as conn:
                if await repo.count_people(conn) > 0:
                    print("database already has people; demo city not seeded")
                    return 0 if args.if_empty else 1
                city = await seed_demo(conn, residents=args.residents)
                await seed_demo_clarifications(conn, db, admin_id=city.admin_id)
                staff = await seed_demo_passwords(conn, city, hash_password)
                phones = await _phones(conn, staff)
        finally:
            await db.dispose()
        print(f"demo city seeded: {len(city.grids)} grids, {len(city.resident_ids)} residents")
        print("grid codes: " + ", ".join(g.code for g in city.grids))
        _print_demo_logins(config, phones)
        return 0

    return asyncio.run(run())


async def _phones(conn: Any, person_ids: list[int]) -> list[tuple[str, str]]:
    """(name, phone) of some people, in the order given."""
    result = []
    for person_id in person_ids:
        person = await repo.load_person(conn, person_id)
        if person is not None and person.phone:
            result.append((person.name, person.phone))
    return result


def _print_demo_logins(config: Config, phones: list[tuple[str, str]]) -> None:
    if not config.console.enabled or not phones:
        return
    name, phone = phones[0]
    print(f"console demo login: {phone} / {DEMO_PASSWORD} ({name}, district admin);")
    print(f"  every demo warden and the doctor have the password {DEMO_PASSWORD} too")


def cmd_demo_logins(config: Config, args: argparse.Namespace) -> int:
    """Print the console address and the demo staff logins (``make run`` shows them)."""

    async def run() -> int:
        db = Database(config.database.url)
        try:
            async with db.read() as conn:
                admins = await _demo_admins(conn)
                phones = await _phones(conn, admins)
        finally:
            await db.dispose()
        host, port = config.server.host, config.server.port
        if config.console.enabled:
            print(f"console: http://{host}:{port}{config.console.path}/")
        _print_demo_logins(config, phones)
        return 0

    return asyncio.run(run())


async def _demo_admins(conn: Any) -> list[int]:
    """The first admin with a console password (the demo's admin after seed-demo)."""
    roles = PersonRole.__table__
    rows = await conn.execute(
        select(credentials.c.person_id)
        .join(roles, roles.c.person_id == credentials.c.person_id)
        .where(roles.c.role == "admin")
        .order_by(credentials.c.person_id)
        .limit(1)
    )
    return [r.person_id for r in rows]


def cmd_user_set_password(config: Config, args: argparse.Namespace) -> int:
    """Set a staff member's console password, read from a prompt or stdin (never argv)."""

    async def run() -> int:
        db = Database(config.database.url)
        try:
            async with db.read() as conn:
                if args.person is not None:
                    person_ids = [args.person]
                else:
                    person_ids = await repo.find_people_by_phone(conn, args.phone)
            if not person_ids:
                print(f"no person with phone {args.phone}", file=sys.stderr)
                return 1
            if len(person_ids) > 1:
                listed = ", ".join(str(i) for i in person_ids)
                print(
                    f"several people have phone {args.phone} (ids {listed}); use --person ID",
                    file=sys.stderr,
                )
                return 1
            password = _read_password()
            if password is None:
                print("no password given (the two entries differ?)", file=sys.stderr)
                return 1
            try:
                await set_password(db, person_ids[0], password)
            except (PasswordRefused, LookupError) as exc:
                print(str(exc), file=sys.stderr)
                return 1
        finally:
            await db.dispose()
        print(f"password set for person {person_ids[0]} (earlier console sessions ended)")
        return 0

    return asyncio.run(run())


def _read_password() -> str | None:
    """From a prompt (asked twice) on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("new console password: ")
        second = getpass.getpass("again: ")
        return first if first == second else None
    line = sys.stdin.readline()
    return line.rstrip("\r\n") or None


def cmd_import_roster(config: Config, args: argparse.Namespace) -> int:
    async def run() -> int:
        db = Database(config.database.url)
        try:
            async with db.write() as conn:
                report = await import_roster(conn, Path(args.file), skip_bad=args.skip_bad)
        except (RosterError, FileNotFoundError) as exc:
            print(f"import failed: {exc}", file=sys.stderr)
            return 2
        finally:
            await db.dispose()
        texts = Texts()
        for problem in report.errors:
            print(f"line {problem.line}: {describe_problem(texts, problem)}", file=sys.stderr)
        if report.errors and not report.written:
            print(
                f"{len(report.errors)} bad rows; nothing imported "
                "(fix them, or pass --skip-bad to import the good rows)",
                file=sys.stderr,
            )
            return 1
        print(
            f"{report.kind}: {report.rows} rows, {report.created} created, "
            f"{report.unchanged} already present, {len(report.errors)} skipped"
        )
        return 0

    return asyncio.run(run())


def cmd_token_create(config: Config, args: argparse.Namespace) -> int:
    async def run() -> int:
        db = Database(config.database.url)
        try:
            token = await create_token(db, args.person, label=args.label, days=args.days)
        except LookupError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        finally:
            await db.dispose()
        print(token)
        return 0

    return asyncio.run(run())


def cmd_simulate(config: Config, args: argparse.Namespace) -> int:
    """Chat in the terminal as a demo person (or a newcomer), through the real dispatcher."""

    async def run() -> int:
        rt = await build_runtime(config)
        rt.committer.start()
        address = f"sim-new-{secrets.token_hex(4)}" if args.person is None else f"sim-{args.person}"
        last_seen = 0
        try:
            async with rt.db.read() as conn:
                if args.person is not None and await repo.load_person(conn, args.person) is None:
                    print(f"no person with id {args.person}", file=sys.stderr)
                    return 1
                last_seen = int(
                    (
                        await conn.execute(
                            select(SimMessage.id).order_by(SimMessage.id.desc()).limit(1)
                        )
                    ).scalar()
                    or 0
                )
            print(f"chatting as {address}; empty line or Ctrl-D quits")
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, _read_line)
                if not line:
                    return 0
                inbound = Inbound(
                    channel=SIM_CHANNEL,
                    sender_id=address,
                    text=line,
                    dedupe_key=secrets.token_hex(8),
                    timestamp=int(utcnow().timestamp()),
                )
                for reply in await rt.dispatcher.handle(inbound) or []:
                    print(f"bot> {reply.text}")
                await rt.delivery.run_once()
                last_seen = await _print_pushes(rt.db, address, last_seen)
        finally:
            await rt.committer.stop()
            await rt.session.close()
            await rt.db.dispose()

    return asyncio.run(run())


def _read_line() -> str:
    try:
        return input("you> ").strip()
    except EOFError:
        return ""


async def _print_pushes(db: Database, address: str, after: int) -> int:
    table = SimMessage.__table__
    async with db.read() as conn:
        rows = list(
            await conn.execute(
                select(table)
                .where(
                    table.c.id > after, table.c.target == address, table.c.outbox_key.is_not(None)
                )
                .order_by(table.c.id)
            )
        )
    for row in rows:
        print(f"[推送] {row.text}")
    return max([after, *[r.id for r in rows]])


def _safe_url(url: str) -> str:
    head, sep, tail = url.partition("@")
    return f"{head.split('://')[0]}://***@{tail}" if sep else url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridbot", description=__doc__)
    parser.add_argument("--config", help="config file (default: $GRIDBOT_CONFIG or config.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the web app (channels, simulator, API)")
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)

    seed = sub.add_parser("seed-demo", help="create the demo city in an empty database")
    seed.add_argument("--if-empty", action="store_true", help="succeed quietly if not empty")
    seed.add_argument("--residents", type=int, default=200)
    seed.set_defaults(func=cmd_seed_demo)

    roster = sub.add_parser("import-roster", help="import regions or people (CSV or XLSX)")
    roster.add_argument("file")
    roster.add_argument(
        "--skip-bad", action="store_true", help="import the good rows even if some rows are bad"
    )
    roster.set_defaults(func=cmd_import_roster)

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="issue a bearer token for a person")
    create.add_argument("--person", type=int, required=True, help="person id")
    create.add_argument("--label", default="")
    create.add_argument("--days", type=int, default=None, help="expire after this many days")
    create.set_defaults(func=cmd_token_create)

    user = sub.add_parser("user", help="console users")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    set_pw = user_sub.add_parser(
        "set-password",
        help="set a staff member's console password (prompted, or the first line of stdin)",
    )
    who = set_pw.add_mutually_exclusive_group(required=True)
    who.add_argument("--phone", help="the person's phone number")
    who.add_argument("--person", type=int, help="person id")
    set_pw.set_defaults(func=cmd_user_set_password)
    demo_logins = user_sub.add_parser("demo-logins", help="print the console demo logins")
    demo_logins.set_defaults(func=cmd_demo_logins)

    simulate = sub.add_parser("simulate", help="chat in the terminal as a person")
    simulate.add_argument(
        "--person", type=int, default=None, help="person id (default: a new, unregistered sender)"
    )
    simulate.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("jieba").setLevel(logging.WARNING)
    return int(args.func(config, args))


if __name__ == "__main__":
    sys.exit(main())
