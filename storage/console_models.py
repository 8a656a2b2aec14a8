"""Tables of the web console: staff passwords and login attempts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from storage.models import Base, BigId, utcnow


class ConsoleCredential(Base):
    """A staff member's console password (an argon2 hash).  ``version`` goes up on every
    password change and logout; a session carries the version it was made with, so either
    ends every session made before."""

    __tablename__ = "console_credentials"

    person_id: Mapped[int] = mapped_column(
        ForeignKey("people.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    password_hash: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConsoleLoginAttempt(Base):
    """One login attempt, kept for the rate limit's window (by account and by address), so
    the limit holds across processes."""

    __tablename__ = "console_login_attempts"
    __table_args__ = (
        Index("ix_console_login_attempts_account", "account", "at"),
        Index("ix_console_login_attempts_address", "address", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    account: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    succeeded: Mapped[bool] = mapped_column(Boolean, default=False)
