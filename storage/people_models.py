"""Tables of the people-and-regions part of the console: grid QR codes and staged rosters.

A grid's official-account QR code is permanent and the account may make only so many, so each
grid's ticket is stored once.  A roster upload is kept between the error report and the
confirmed import (the confirmation may reach another process), and deleted when imported or
stale: it holds personal data.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from storage.models import Base, BigId, utcnow


class GridQrCode(Base):
    """The permanent parametric QR code of one grid (``QR_LIMIT_STR_SCENE``, scene = code).

    ``claimed_until`` is the lease of the one process creating it; ``ticket`` and ``url`` are
    set once the platform answered.
    """

    __tablename__ = "grid_qr_codes"

    region_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("regions.id", ondelete="CASCADE"), primary_key=True
    )
    scene: Mapped[str] = mapped_column(String(64))
    ticket: Mapped[str | None] = mapped_column(String(255))
    url: Mapped[str | None] = mapped_column(String(255))
    claimed_until: Mapped[datetime | None]
    created_at: Mapped[datetime | None]
    created_by: Mapped[int | None] = mapped_column(BigId)


class RosterUpload(Base):
    """An uploaded roster file waiting for its uploader to confirm the import."""

    __tablename__ = "roster_uploads"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
