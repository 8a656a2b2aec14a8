"""What the notices and rumors pages share: the regions a form may offer, the wording of a
service's refusal, and the browser's date-time fields.

Nothing here decides anything: which regions a user may reach and whether an input is
acceptable stay with the services (``flows.notices``, ``flows.rumors``); a page only offers
choices and shows the service's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from multidict import MultiMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.console.site import PageError, console_of, flash
from flows.refusals import Refused
from flows.texts import Texts
from storage import repo
from storage.models import LEVEL_ORDER, RegionLevel

MAX_CHOICES = 300
"""Regions a picker lists at most; beyond that grids are left out (typed codes still work)."""


@dataclass(frozen=True, slots=True)
class RegionChoice:
    """A region offered by a form, indented ``depth`` levels below the user's scope."""

    region: repo.RegionInfo
    depth: int


async def region_choices(
    conn: AsyncConnection, roots: Sequence[repo.RegionInfo]
) -> list[RegionChoice]:
    """Every region in the user's scope (``roots`` and what lies below), tree order; without
    grids when there are more than :data:`MAX_CHOICES`."""
    found: list[RegionChoice] = []
    for root in sorted(roots, key=_tree_order):
        top = LEVEL_ORDER.index(RegionLevel(root.level))
        for region in sorted(await repo.list_subregions(conn, root), key=_tree_order):
            depth = LEVEL_ORDER.index(RegionLevel(region.level)) - top
            found.append(RegionChoice(region, depth))
    if len(found) > MAX_CHOICES:
        found = [c for c in found if c.region.level != RegionLevel.GRID][:MAX_CHOICES]
    return found


def _tree_order(region: repo.RegionInfo) -> tuple[int, ...]:
    """Parents before their children, siblings in the order they were made ("/1/10/" after
    "/1/9/", which a comparison of the path strings would not give)."""
    return tuple(int(part) for part in region.path.strip("/").split("/") if part)


def refusal_text(texts: Texts, refused: Refused) -> str:
    """The sentence for a service's refusal: the console's wording when the chat's does not
    fit a form (``<feature>/console/<reason>``), else the one chat and API users read."""
    console_name = f"{refused.feature}/console/{refused.reason}"
    name = console_name if texts.exists(console_name) else refused.template
    return texts.render(name, **refused.values)


def refusal_page(texts: Texts, refused: Refused) -> PageError:
    """A refusal as a page of its own (raise it), with the service's status."""
    return PageError(refused.http_status, "refused", message=refusal_text(texts, refused))


async def flash_refusal(request: web.Request, refused: Refused) -> None:
    """A refused action: its own page when the thing is not the user's to see or change
    (403, 404); otherwise (it changed state meanwhile) a warning on top of the page the
    caller redirects to."""
    texts = console_of(request).texts
    if refused.http_status in (403, 404):
        raise refusal_page(texts, refused)
    await flash(request, "refused", "warn", message=refusal_text(texts, refused))


def checked(form: MultiMapping[Any], name: str) -> bool:
    """A checkbox: sent (with any value) when ticked, absent otherwise."""
    return name in form


def text_of(form: MultiMapping[Any], name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def local_input(moment: datetime | None, tz: ZoneInfo) -> str:
    """``2026-12-01T09:00``: a moment as an ``<input type="datetime-local">`` shows it."""
    if moment is None:
        return ""
    return moment.astimezone(tz).strftime("%Y-%m-%dT%H:%M")


def parse_local(value: str, tz: ZoneInfo) -> datetime | None:
    """What a ``datetime-local`` field sent, as an aware moment in ``tz``; ``None`` when it
    is not such a value (the service then refuses it with its own reason)."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)
