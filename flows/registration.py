"""Registration: an unknown sender binds to a grid by its code, or to their roster entry by phone.

Matching by phone alone would let anyone claim a neighbour's record, so a roster match is
confirmed with the name on the roster.  Only what is needed is asked: a name for newcomers.
"""

from __future__ import annotations

import enum
import re
from typing import Any

from sqlalchemy import select

from flows.context import Context
from flows.engine import Flow, Reask
from storage import repo
from storage.models import Identity, RegionLevel

PHONE = re.compile(r"^1[3-9]\d{9}$")
NAME = re.compile(r"^[\u4e00-\u9fa5A-Za-z·•. ]{2,20}$")
_STRIP = re.compile(r"[\s\-—:：,，。.]+")


def normalize_reply(text: str) -> str:
    """Drop spaces, dashes and punctuation people put in codes and phone numbers."""
    return _STRIP.sub("", text).upper().replace("＋86", "").removeprefix("+86")


class Registration(Flow):
    name = "registration"

    class State(enum.StrEnum):
        CODE_OR_PHONE = "code_or_phone"
        NEW_NAME = "new_name"
        CONFIRM_NAME = "confirm_name"

    async def begin(self, ctx: Context, **params: Any) -> State:
        grid_code = params.get("grid_code")
        if grid_code:
            grid = await repo.get_region_by_code(ctx.conn, grid_code)
            if grid is not None and grid.level == RegionLevel.GRID:
                ctx.conversation.data["grid_id"] = grid.id
                ctx.say("registration/grid_found", grid=grid)
                return self.State.NEW_NAME
        ctx.say("registration/greeting")
        return self.State.CODE_OR_PHONE

    async def ask(self, ctx: Context, state: enum.StrEnum) -> None:
        ctx.say(f"registration/ask_{state}")

    async def step(self, ctx: Context, state: enum.StrEnum, text: str) -> State | None:
        if state == self.State.CODE_OR_PHONE:
            return await self._code_or_phone(ctx, normalize_reply(text))
        if state == self.State.NEW_NAME:
            await self._new_name(ctx, text.strip())
        else:
            await self._confirm_name(ctx, text.strip())
        return None

    async def give_up(self, ctx: Context, state: enum.StrEnum) -> None:
        ctx.say("registration/give_up")

    async def _code_or_phone(self, ctx: Context, answer: str) -> State | None:
        if PHONE.match(answer):
            candidates = await self._unbound_people_with_phone(ctx, answer)
            if not candidates:
                raise Reask("registration/phone_unknown")
            ctx.conversation.data["candidates"] = candidates
            return self.State.CONFIRM_NAME
        grid = await repo.get_region_by_code(ctx.conn, answer)
        if grid is None or grid.level != RegionLevel.GRID:
            raise Reask("registration/not_understood", answer=answer[:20])
        ctx.conversation.data["grid_id"] = grid.id
        ctx.say("registration/grid_found", grid=grid)
        return self.State.NEW_NAME

    async def _new_name(self, ctx: Context, name: str) -> None:
        if not NAME.match(name):
            raise Reask("registration/bad_name")
        grid_id = ctx.conversation.data["grid_id"]
        person_id = await repo.create_person(ctx.conn, name=name, region_id=grid_id)
        await self._finish(ctx, person_id, new=True)

    async def _confirm_name(self, ctx: Context, name: str) -> None:
        for person_id in ctx.conversation.data.get("candidates", []):
            person = await repo.load_person(ctx.conn, person_id)
            if person is not None and person.name == name:
                await self._finish(ctx, person_id, new=False)
                return
        raise Reask("registration/name_mismatch")

    async def _unbound_people_with_phone(self, ctx: Context, phone: str) -> list[int]:
        """Roster people with this phone who have no account on this channel yet."""
        identities = Identity.__table__
        matches = await repo.find_people_by_phone(ctx.conn, phone)
        bound = set(
            (
                await ctx.conn.execute(
                    select(identities.c.person_id).where(
                        identities.c.channel == ctx.inbound.channel,
                        identities.c.person_id.in_(matches),
                    )
                )
            ).scalars()
        )
        return [pid for pid in matches if pid not in bound]

    async def _finish(self, ctx: Context, person_id: int, *, new: bool) -> None:
        inbound = ctx.inbound
        await repo.bind_identity(
            ctx.conn, person_id, inbound.channel, inbound.sender_id, inbound.sender_name
        )
        await repo.record_audit(
            ctx.conn,
            actor_id=person_id,
            action="person.register" if new else "person.bind",
            target_type="identity",
            target_id=f"{inbound.channel}:{inbound.sender_id}",
        )
        person = await repo.load_person(ctx.conn, person_id)
        assert person is not None
        ctx.person = person
        warden = await _grid_warden_name(ctx, person)
        ctx.say(
            "registration/welcome",
            person=person,
            warden=warden,
            features=ctx.features,
            roles={s.role for s in person.scopes},
        )


async def _grid_warden_name(ctx: Context, person: repo.PersonInfo) -> str:
    if person.region is None:
        return ""
    wardens = await repo.responsible_people(ctx.conn, person.region, "warden")
    if not wardens:
        return ""
    warden = await repo.load_person(ctx.conn, wardens[0])
    return warden.name if warden else ""
