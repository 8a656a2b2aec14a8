"""Console passwords: argon2id hashes (argon2-cffi's defaults), set from the CLI or the demo
seed, checked at login.  Hashing is slow on purpose, so it runs off the event loop."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from storage import console as store
from storage import repo
from storage.db import Database
from storage.models import utcnow

MIN_LENGTH = 8
MAX_LENGTH = 128
_HASHER = PasswordHasher()
# Verified when the account is unknown, so that a wrong phone number costs as long as a
# wrong password (no timing hint about which accounts exist).
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class PasswordRefused(ValueError):
    """The password cannot be used (too short, too long, blank)."""


def check_strength(password: str) -> None:
    if not password.strip():
        raise PasswordRefused("the password is empty")
    if len(password) < MIN_LENGTH:
        raise PasswordRefused(f"the password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordRefused(f"the password may have at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (blocking: ~50 ms of CPU)."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _HASHER.check_needs_rehash(password_hash)


async def set_password(
    db: Database, person_id: int, password: str, *, actor_id: int | None = None
) -> int:
    """Give a person a console password (or a new one, which ends their sessions).  Returns the
    credential version.  Raises ``PasswordRefused`` or ``LookupError`` (no such person)."""
    check_strength(password)
    password_hash = await asyncio.to_thread(hash_password, password)
    async with db.write() as conn:
        person = await repo.load_person(conn, person_id)
        if person is None:
            raise LookupError(f"no person with id {person_id}")
        version = await store.set_password_hash(conn, person_id, password_hash, now=utcnow())
        await repo.record_audit(
            conn,
            actor_id=actor_id,
            action="console.password.set",
            target_type="person",
            target_id=person_id,
            region_id=person.region.id if person.region else None,
            detail={"version": version},
        )
    return version


async def find_login(db: Database, account: str, password: str) -> store.Credential | None:
    """The credential that ``account`` (a phone number) and ``password`` open, if any."""
    async with db.read() as conn:
        candidates = await store.credentials_by_phone(conn, account)
    for credential in candidates:
        if await asyncio.to_thread(verify_password, credential.password_hash, password):
            if needs_rehash(credential.password_hash):
                new_hash = await asyncio.to_thread(hash_password, password)
                async with db.write() as conn:
                    await store.replace_hash(conn, credential.person_id, new_hash)
            return credential
    if not candidates:
        await asyncio.to_thread(verify_password, _DUMMY_HASH, password)
    return None
