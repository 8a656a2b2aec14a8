"""Grid QR posters: the scene a grid's QR code carries, the QR image, what a poster shows.

A grid's poster carries the official account's permanent parametric QR code whose scene is the
grid code.  Scanning it subscribes with ``EventKey = qrscene_<scene>`` (or, for a follower, a
``SCAN`` event with the bare scene), which the ``subscribe`` handler turns back into the grid
code with :func:`grid_code_from_scene`: the two functions here are the one place both sides of
that contract live.

The QR image is drawn locally from the URL the platform returned (segno, SVG), never fetched
from ``showqrcode``, so posters print on a closed network.
"""

from __future__ import annotations

from dataclasses import dataclass

import segno
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import repo
from storage.models import RegionLevel, Role
from storage.qrcodes import StoredQr, stored_qrs

MAX_SCENE = 64
"""Tencent's limit on ``scene_str`` of a permanent string-scene code."""


def scene_for_grid(code: str) -> str | None:
    """The QR scene of a grid, or None when its code cannot round-trip through a scan.

    The subscribe handler reads the scene back case-insensitively (residents type codes in any
    case), so a code with lower-case letters would not find its grid again.
    """
    if not code or len(code) > MAX_SCENE or code != code.strip().upper():
        return None
    return code


def grid_code_from_scene(scene: object) -> str | None:
    """The grid code a scanned scene names (the inverse of :func:`scene_for_grid`)."""
    text = str(scene or "").strip().upper()
    return text or None


def qr_svg(url: str) -> str:
    """An inline SVG of the QR code for ``url``; it scales to its box (no fixed size).

    Error correction M survives a poster's wear; the quiet zone is the standard 4 modules.
    """
    code = segno.make(url, error="m", boost_error=False)
    return code.svg_inline(
        scale=1, border=4, omitsize=True, light="#fff", svgclass="qr", lineclass="qr-line"
    )


@dataclass(frozen=True, slots=True)
class Poster:
    """What one grid's poster shows; ``svg`` is None until its QR code is created."""

    grid: repo.RegionInfo
    community: str
    wardens: tuple[str, ...]
    qr: StoredQr | None
    svg: str | None
    scene: str | None


async def grid_posters(conn: AsyncConnection, region: repo.RegionInfo) -> list[Poster]:
    """The posters of a grid, or of every grid under a community (or any larger region)."""
    if region.level == RegionLevel.GRID:
        grids = [region]
    else:
        grids = await repo.list_subregions(conn, region, level=RegionLevel.GRID)
    grids.sort(key=lambda g: g.code)
    codes = await stored_qrs(conn, [g.id for g in grids])
    parents: dict[int, str] = {}
    posters = []
    for grid in grids:
        if grid.parent_id is not None and grid.parent_id not in parents:
            parent = await repo.get_region(conn, grid.parent_id)
            parents[grid.parent_id] = parent.name if parent else ""
        names = []
        for person_id in await repo.responsible_people(conn, grid, Role.WARDEN):
            person = await repo.load_person(conn, person_id)
            if person is not None:
                names.append(person.name)
        qr = codes.get(grid.id)
        posters.append(
            Poster(
                grid=grid,
                community=parents.get(grid.parent_id, "") if grid.parent_id else "",
                wardens=tuple(names),
                qr=qr,
                svg=qr_svg(qr.url) if qr else None,
                scene=scene_for_grid(grid.code),
            )
        )
    return posters
