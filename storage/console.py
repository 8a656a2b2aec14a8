"""Queries of the web console: staff passwords (argon2 hashes, hashed by the caller) and the
login attempts the rate limit counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.console_models import ConsoleCredential, ConsoleLoginAttempt
from storage.models import Person

credentials = ConsoleCredential.__table__
attempts = ConsoleLoginAttempt.__table__
people = Person.__table__


@dataclass(frozen=True, slots=True)
class Credential:
    person_id: int
    password_hash: str
    version: int


async def credential_of(conn: AsyncConnection, person_id: int) -> Credential | None:
    row = (
        await conn.execute(select(credentials).where(credentials.c.person_id == person_id))
    ).first()
    return Credential(row.person_id, row.password_hash, row.version) if row else None


async def credentials_by_phone(conn: AsyncConnection, phone: str) -> list[Credential]:
    """Credentials of the people with this phone number (usually one)."""
    rows = await conn.execute(
        select(credentials)
        .join(people, people.c.id == credentials.c.person_id)
        .where(people.c.phone == phone)
        .order_by(credentials.c.person_id)
    )
    return [Credential(r.person_id, r.password_hash, r.version) for r in rows]


async def set_password_hash(
    conn: AsyncConnection, person_id: int, password_hash: str, *, now: datetime
) -> int:
    """Store a new hash; the version goes up, which ends every earlier session.  Returns the
    new version."""
    current = await credential_of(conn, person_id)
    if current is None:
        await conn.execute(
            insert(credentials).values(
                person_id=person_id,
                password_hash=password_hash,
                version=1,
                created_at=now,
                updated_at=now,
            )
        )
        return 1
    await conn.execute(
        update(credentials)
        .where(credentials.c.person_id == person_id)
        .values(password_hash=password_hash, version=credentials.c.version + 1, updated_at=now)
    )
    return current.version + 1


async def replace_hash(conn: AsyncConnection, person_id: int, password_hash: str) -> None:
    """Rehash with current parameters after a successful login; sessions stay valid."""
    await conn.execute(
        update(credentials)
        .where(credentials.c.person_id == person_id)
        .values(password_hash=password_hash)
    )


async def bump_version(conn: AsyncConnection, person_id: int, *, now: datetime) -> None:
    """End every session of the person (logout)."""
    await conn.execute(
        update(credentials)
        .where(credentials.c.person_id == person_id)
        .values(version=credentials.c.version + 1, updated_at=now)
    )


async def recent_failures(
    conn: AsyncConnection, *, account: str, address: str, since: datetime
) -> tuple[int, int]:
    """Failed logins since ``since``: (of this account, from this address)."""
    failed = (attempts.c.at >= since) & attempts.c.succeeded.is_(False)

    async def count(*where: Any) -> int:
        query = select(func.count()).select_from(attempts).where(failed, *where)
        return int((await conn.execute(query)).scalar_one())

    return await count(attempts.c.account == account), await count(attempts.c.address == address)


LOGIN_LOCK = 0x6C6F6769  # "logi": the advisory lock that serializes counting login attempts


async def lock_attempts(conn: AsyncConnection) -> None:
    """Serialize "count the recent failures, then write this attempt" until commit.

    Without it, attempts sent at the same time all read the count before any of them is
    written, and every one gets its password checked whatever the limit.  On PostgreSQL a
    transaction-level advisory lock on one fixed key serializes them across processes (the
    transaction holds no password check, so it is short); SQLite write transactions start with
    ``BEGIN IMMEDIATE``, one writer at a time, so there the serialization already holds."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOGIN_LOCK})


async def start_attempt(
    conn: AsyncConnection, *, account: str, address: str, now: datetime, forget_before: datetime
) -> int:
    """Write one attempt, counted as failed until :func:`finish_attempt` says otherwise, and
    drop those too old to count any more.  Returns its id.  Call it in the transaction that
    took :func:`lock_attempts` and checked the limit, so the next attempt counts this one."""
    await conn.execute(delete(attempts).where(attempts.c.at < forget_before))
    result = await conn.execute(
        insert(attempts)
        .values(at=now, account=account[:64], address=address[:64], succeeded=False)
        .returning(attempts.c.id)
    )
    return int(result.scalar_one())


async def finish_attempt(conn: AsyncConnection, attempt_id: int, *, succeeded: bool) -> None:
    await conn.execute(
        update(attempts).where(attempts.c.id == attempt_id).values(succeeded=succeeded)
    )
