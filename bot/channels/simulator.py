"""The web simulator: try gridbot with no credentials, as any demo resident, warden or admin.

Each demo person has a ``sim`` identity (``sim-<person id>``); each grid has a simulated group
chat (``grid-<grid code>``).  What the outbox delivers on this channel lands in ``sim_messages``,
which the page polls, so pushes (notices, reminders, alerts) show up like in a real chat.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from aiohttp import web
from jinja2 import Environment
from sqlalchemy import and_, insert, or_, select

from bot.channels.base import SendResult
from bot.config import SimulatorConfig
from bot.dispatcher import Dispatcher
from bot.messages import Inbound
from storage import repo
from storage.db import Database
from storage.models import Identity, SimMessage, utcnow
from storage.outbox import ClaimedMessage

CHANNEL = "sim"
MAX_TEXT = 10_000
# Addresses, chats and message ids end up in bounded columns (identities, inbound log).
ADDRESS = re.compile(r"^sim-[A-Za-z0-9_-]{1,100}$")
CHAT = re.compile(r"^grid-\S{1,100}$")
MAX_ID = 100
MAX_NAME = 64
sim_messages = SimMessage.__table__
identities = Identity.__table__


def person_address(person_id: int) -> str:
    return f"sim-{person_id}"


def group_address(grid_code: str) -> str:
    return f"grid-{grid_code}"


def _bad(message: str) -> web.Response:
    return web.json_response({"error": {"code": "bad_request", "message": message}}, status=400)


class SimulatorChannel:
    """Serves the simulator page and its small JSON API; delivers into ``sim_messages``."""

    channel = CHANNEL

    def __init__(
        self, config: SimulatorConfig, dispatcher: Dispatcher, db: Database, pages: Environment
    ) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.db = db
        self.pages = pages
        self._insert = db.insert_ignore(sim_messages)

    def routes(self) -> list[web.RouteDef]:
        base = self.config.path.rstrip("/")
        return [
            web.get(base, self.page),
            web.get(f"{base}/api/people", self.people),
            web.post(f"{base}/api/send", self.send_message),
            web.post(f"{base}/api/newcomer", self.newcomer),
            web.get(f"{base}/api/messages", self.messages),
        ]

    async def page(self, request: web.Request) -> web.Response:
        html = self.pages.get_template("sim/index.html").render(base=self.config.path.rstrip("/"))
        return web.Response(text=html, content_type="text/html")

    async def people(self, request: web.Request) -> web.Response:
        """Demo people with a simulator identity, staff first, then residents by grid."""
        people = repo.people
        regions = repo.regions
        async with self.db.read() as conn:
            rows = list(
                await conn.execute(
                    select(
                        people.c.id,
                        people.c.name,
                        identities.c.external_id,
                        regions.c.code,
                        regions.c.name.label("region_name"),
                    )
                    .join(identities, identities.c.person_id == people.c.id)
                    .outerjoin(regions, regions.c.id == people.c.region_id)
                    .where(identities.c.channel == CHANNEL)
                    .order_by(people.c.id)
                    .limit(500)
                )
            )
            roles = await repo.roles_by_person(conn, [r.id for r in rows])
        result = [
            {
                "id": r.id,
                "name": r.name,
                "address": r.external_id,
                "grid": r.code,
                "grid_name": r.region_name,
                "roles": sorted(set(roles[r.id])),
                "group": group_address(r.code) if r.code else None,
            }
            for r in rows
        ]
        # Everyone here has a role (residents too): staff first, then residents grouped by grid.
        result.sort(key=_staff_first)
        return web.json_response({"people": result}, dumps=_dumps)

    async def newcomer(self, request: web.Request) -> web.Response:
        """A fresh, unregistered sender address, to try registration."""
        return web.json_response({"address": f"sim-new-{secrets.token_hex(4)}"})

    async def send_message(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad("body is not valid JSON")
        if not isinstance(data, dict):
            return _bad("body must be a JSON object")
        address, text, chat = data.get("address"), data.get("text"), data.get("chat")
        if not isinstance(address, str) or not ADDRESS.match(address):
            return _bad("address must be a simulator address (sim-...)")
        if not isinstance(text, str) or not text.strip():
            return _bad("text must be a non-empty string")
        if len(text) > MAX_TEXT:
            return _bad(f"text is longer than {MAX_TEXT} characters")
        if chat is not None and not (isinstance(chat, str) and (not chat or CHAT.match(chat))):
            return _bad("chat must be a group address (grid-...) or null")
        message_id, name = data.get("message_id"), data.get("name", "")
        if message_id is not None and not (
            isinstance(message_id, str) and len(message_id) <= MAX_ID
        ):
            return _bad(f"message_id must be a string of at most {MAX_ID} characters")
        if not isinstance(name, str) or len(name) > MAX_NAME:
            return _bad(f"name must be a string of at most {MAX_NAME} characters")
        inbound = Inbound(
            channel=CHANNEL,
            sender_id=address,
            sender_name=name,
            chat_id=chat or None,
            text=text,
            dedupe_key=message_id or secrets.token_hex(8),
            timestamp=int(utcnow().timestamp()),
        )
        replies = await self.dispatcher.handle(inbound)
        async with self.db.write() as conn:
            # Keep the conversation on the page: the user's own line and the inline replies.
            target_kind, target = ("chat", chat) if chat else ("user", address)
            rows = [
                {
                    "target_kind": target_kind,
                    "target": target,
                    "sender": address,
                    "text": text,
                    "outbox_key": None,
                    "at": utcnow(),
                }
            ]
            rows += [
                {
                    "target_kind": target_kind,
                    "target": target,
                    "sender": "bot",
                    "text": r.text,
                    "outbox_key": None,
                    "at": utcnow(),
                }
                for r in replies or []
            ]
            await conn.execute(insert(sim_messages), rows)
        return web.json_response({"replies": [r.text for r in replies or []]}, dumps=_dumps)

    async def messages(self, request: web.Request) -> web.Response:
        """Messages for a person (and optionally their group) after a given id."""
        address = request.query.get("address", "")
        group = request.query.get("group", "")
        after = request.query.get("after", "0")
        if (
            not ADDRESS.match(address)
            or (group and not CHAT.match(group))
            or not (after.isascii() and after.isdigit() and len(after) <= 18)
        ):
            return _bad("address (sim-...), an optional group (grid-...) and a numeric after")
        targets = [("user", address)] + ([("chat", group)] if group else [])
        # No NUL placeholder for "no group": PostgreSQL refuses NUL in text parameters.
        wanted = or_(
            *[
                and_(sim_messages.c.target_kind == kind, sim_messages.c.target == target)
                for kind, target in targets
            ]
        )
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(sim_messages)
                .where(sim_messages.c.id > int(after))
                .where(wanted)
                .order_by(sim_messages.c.id)
                .limit(200)
            )
            items = [
                {
                    "id": r.id,
                    "where": r.target_kind,
                    "sender": r.sender,
                    "text": r.text,
                    "at": r.at.isoformat(),
                }
                for r in rows
            ]
        return web.json_response({"messages": items}, dumps=_dumps)

    # -- outbound ----------------------------------------------------------------------------

    def rate_per_minute(self, message: ClaimedMessage) -> int | None:
        return None

    async def send(self, message: ClaimedMessage) -> SendResult:
        kind = "chat" if message.target.kind in ("chat", "robot") else "user"
        async with self.db.write() as conn:
            await conn.execute(
                self._insert.values(
                    target_kind=kind,
                    target=message.target.address,
                    sender="bot",
                    text=str(message.payload.get("text", "")),
                    outbox_key=message.key,
                    at=utcnow(),
                )
            )
        return SendResult.sent()


def _staff_first(person: dict[str, Any]) -> tuple[bool, str, int]:
    staff = bool(set(person["roles"]) - {"resident"})
    return (not staff, "" if staff else person["grid"] or "", person["id"])


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
