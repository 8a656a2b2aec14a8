"""Grid QR codes: each grid's permanent official-account QR code, created once and stored.

:class:`GridQrCodes` is what the API and the console call.  It needs the official account
channel; without it (``channels.wechat_mp.enabled: false``) ``enabled`` is false and posters say
so instead of showing a code.  Creation is claimed in the database first (a short lease), the
platform is called with no transaction open, and the answer is stored only under our lease, so
two processes asked at once make one code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from bot.wxapi import WxApiError, WxUnavailable
from flows.posters import scene_for_grid
from storage import repo
from storage.db import Database
from storage.models import RegionLevel, utcnow
from storage.qrcodes import StoredQr, claim_qr, grid_qr_codes, release_qr_claim, store_qr

log = logging.getLogger(__name__)

CreateQr = Callable[[str], Awaitable[tuple[str, str]]]
"""Makes a permanent QR code for a scene on the platform: (ticket, url); raises ``WxApiError``
or ``WxUnavailable``."""


class QrCodeError(Exception):
    """A grid's QR code cannot be had; ``code`` is machine-readable.

    ``channel_disabled``, ``not_a_grid``, ``bad_scene`` (a code that does not survive a scan),
    ``busy`` (another process is still creating it), ``platform`` (the platform refused or did
    not answer; ``str(exc)`` says how).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class GridQrCodes:
    """Create-once access to grids' QR codes."""

    def __init__(
        self,
        db: Database,
        create: CreateQr | None,
        *,
        lease_s: float = 30.0,
        wait_s: float = 20.0,
        poll_s: float = 0.1,
    ) -> None:
        self.db = db
        self.create = create
        self.lease = timedelta(seconds=lease_s)
        self.wait_s = wait_s
        self.poll_s = poll_s
        self._insert = db.insert_ignore(grid_qr_codes)

    @property
    def enabled(self) -> bool:
        """True when the official account channel is configured to make codes."""
        return self.create is not None

    async def ensure(self, grid: repo.RegionInfo, *, actor_id: int | None) -> StoredQr:
        """The grid's QR code, created on the platform the first time only."""
        if grid.level != RegionLevel.GRID:
            raise QrCodeError("not_a_grid", f"{grid.code} is a {grid.level}, not a grid")
        scene = scene_for_grid(grid.code)
        if scene is None:
            raise QrCodeError(
                "bad_scene", f"grid code {grid.code!r} cannot be a QR scene (upper case, <= 64)"
            )
        if self.create is None:
            raise QrCodeError("channel_disabled", "the official account channel is not enabled")
        deadline = time.monotonic() + self.wait_s
        while True:
            claimed = await self._claim(grid, scene)
            if isinstance(claimed, StoredQr):
                return claimed
            if isinstance(claimed, datetime):
                return await self._create(grid, scene, claimed, actor_id)
            if time.monotonic() > deadline:
                raise QrCodeError("busy", f"the QR code of {grid.code} is being created")
            await asyncio.sleep(self.poll_s)

    async def _claim(self, grid: repo.RegionInfo, scene: str) -> StoredQr | datetime | None:
        async with self.db.write() as conn:
            return await claim_qr(
                conn,
                self._insert,
                region_id=grid.id,
                scene=scene,
                now=utcnow(),
                lease=self.lease,
                row_lock=not self.db.is_sqlite,
            )

    async def _create(
        self, grid: repo.RegionInfo, scene: str, lease: datetime, actor_id: int | None
    ) -> StoredQr:
        assert self.create is not None
        try:
            ticket, url = await self.create(scene)
        except (WxApiError, WxUnavailable) as exc:
            async with self.db.write() as conn:
                await release_qr_claim(conn, region_id=grid.id, lease=lease)
            log.warning("QR code of %s not created: %s", grid.code, exc)
            raise QrCodeError("platform", str(exc)) from exc
        now = utcnow()
        async with self.db.write() as conn:
            stored = await store_qr(
                conn,
                region_id=grid.id,
                lease=lease,
                ticket=ticket,
                url=url,
                now=now,
                actor_id=actor_id,
            )
            if stored:
                await repo.record_audit(
                    conn,
                    actor_id=actor_id,
                    action="region.qrcode.create",
                    target_type="region",
                    target_id=grid.code,
                    region_id=grid.id,
                    detail={"scene": scene},
                )
        if not stored:
            # Our lease ran out and someone else stored theirs meanwhile: theirs is the one.
            log.warning("QR code of %s: lease lost, using the stored one", grid.code)
            return await self.ensure(grid, actor_id=actor_id)
        log.info("QR code of grid %s created", grid.code)
        return StoredQr(grid.id, scene, ticket, url, now)
