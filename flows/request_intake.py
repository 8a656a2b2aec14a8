"""The resident's side in chat: filing a request step by step, and rating how it was handled.

Filing asks the category, the description, for supplies what and how much, and the urgency.
A photo or a location sent at any step is attached to the request (where the channel sends
them) and the same question is asked again.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from typing import Any

from flows.answers import AnswerError, parse_choices, strip_trailing_punctuation
from flows.context import Context
from flows.engine import Flow, Reask
from flows.requests import CATEGORIES, LABELS, URGENCIES, Desk, RequestDenied, deadline_for

MAX_ATTACHMENTS = 9
_MEANINGFUL = re.compile(r"[0-9A-Za-z\u4e00-\u9fff]")
_RATING = re.compile(r"^(?:打|评|给)?\s*([1-5一二三四五])\s*(?:分|星|颗星)?$")
_CHINESE_DIGITS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5}


def desk_for(ctx: Context) -> Desk:
    """A :class:`Desk` on the message's transaction."""
    return Desk(
        conn=ctx.conn,
        settings=ctx.settings.requests,
        tz=ctx.settings.tz,
        now=ctx.now,
        row_lock=not ctx.db.is_sqlite,
    )


def say_notices(ctx: Context, desk: Desk) -> None:
    """Hand a desk's notices to the dispatcher (the outbox, idempotent by key)."""
    for notice in desk.notices:
        ctx.send_to_person(notice.person_id, notice.template, key=notice.key, **notice.values)
    desk.notices.clear()


def _attachment(ctx: Context) -> dict[str, Any] | None:
    inbound = ctx.inbound
    extra = inbound.extra
    if inbound.kind == "image":
        return {
            "kind": "image",
            "media_id": str(extra.get("media_id", "")),
            "url": str(extra.get("pic_url", "")),
        }
    if inbound.kind == "location":
        return {
            "kind": "location",
            "latitude": extra.get("latitude"),
            "longitude": extra.get("longitude"),
            "label": str(extra.get("label") or inbound.text or ""),
        }
    return None


class RequestIntake(Flow):
    name = "request_intake"

    class State(enum.StrEnum):
        CATEGORY = "category"
        DESCRIPTION = "description"
        ITEMS = "items"
        QUANTITY = "quantity"
        URGENCY = "urgency"

    async def begin(self, ctx: Context, **params: Any) -> State | None:
        person = ctx.person
        if person is None or person.region is None:
            ctx.say("requests/no_region")
            return None
        ctx.conversation.data["attachments"] = []
        ctx.say("requests/intro")
        return self.State.CATEGORY

    async def ask(self, ctx: Context, state: enum.StrEnum) -> None:
        ctx.say(
            f"requests/ask_{state}",
            categories=CATEGORIES,
            urgencies=URGENCIES,
            data=ctx.conversation.data,
            L=LABELS,
        )

    async def give_up(self, ctx: Context, state: enum.StrEnum) -> None:
        ctx.say("requests/give_up")

    async def step(self, ctx: Context, state: enum.StrEnum, text: str) -> State | None:
        data = ctx.conversation.data
        attachment = _attachment(ctx)
        if attachment is not None:
            attachments = data.setdefault("attachments", [])
            if len(attachments) < MAX_ATTACHMENTS:
                attachments.append(attachment)
            ctx.say("requests/attachment_added", attachment=attachment)
            return self.State(state)
        if ctx.inbound.kind != "text":
            raise Reask("requests/use_text")
        answer = text.strip()
        if state == self.State.CATEGORY:
            try:
                data["category"] = parse_choices(answer, CATEGORIES, multiple=False)[0]
            except AnswerError:
                raise Reask("requests/bad_category", answer=answer[:20]) from None
            return self.State.DESCRIPTION
        if state == self.State.DESCRIPTION:
            data["description"] = self._required_text(
                ctx, answer, "requests/description_empty", ctx.settings.requests.max_description
            )
            return self.State.ITEMS if data["category"] == "supplies" else self.State.URGENCY
        if state == self.State.ITEMS:
            data["items"] = self._required_text(ctx, answer, "requests/items_empty", 200)
            return self.State.QUANTITY
        if state == self.State.QUANTITY:
            data["quantity"] = self._required_text(ctx, answer, "requests/quantity_empty", 100)
            return self.State.URGENCY
        try:
            data["urgency"] = parse_choices(answer, URGENCIES, multiple=False)[0]
        except AnswerError:
            raise Reask("requests/bad_urgency", answer=answer[:20]) from None
        await self._file(ctx)
        return None

    @staticmethod
    def _required_text(ctx: Context, answer: str, empty_hint: str, limit: int) -> str:
        """Free text that says something (not blank, not only punctuation), within ``limit``."""
        if not _MEANINGFUL.search(unicodedata.normalize("NFKC", answer)):
            raise Reask(empty_hint)
        if len(answer) > limit:
            raise Reask("requests/too_long", limit=limit, length=len(answer))
        return answer

    async def _file(self, ctx: Context) -> None:
        assert ctx.person is not None
        data = ctx.conversation.data
        desk = desk_for(ctx)
        try:
            req = await desk.file(
                ctx.person,
                category=data["category"],
                urgency=data["urgency"],
                description=data["description"],
                items=data.get("items"),
                quantity=data.get("quantity"),
                attachments=data.get("attachments", []),
                channel=ctx.inbound.channel,
            )
        except RequestDenied as denied:
            ctx.say(denied.template, **desk.values(**denied.values))
            return
        deadline = deadline_for(ctx.settings.requests, req.category, req.urgency)
        ctx.say(
            "requests/created",
            **desk.values(req=req, deadline=deadline, has_handler=req.handler_id is not None),
        )
        say_notices(ctx, desk)


def parse_rating(text: str) -> int | None:
    """``5``, ``5分``, ``五星``, ``打4分``, ``5分。`` -> the rating; ``None`` when it is not 1-5."""
    match = _RATING.match(strip_trailing_punctuation(unicodedata.normalize("NFKC", text).strip()))
    if match is None:
        return None
    digit = match.group(1)
    return _CHINESE_DIGITS.get(digit) or int(digit)


class RequestRating(Flow):
    """One question after the resident's verdict: a score of 1 to 5."""

    name = "request_rating"
    max_retries = 2

    class State(enum.StrEnum):
        RATING = "rating"

    async def begin(self, ctx: Context, **params: Any) -> State:
        ctx.conversation.data["request_id"] = params["request_id"]
        ctx.conversation.data["number"] = params["number"]
        return self.State.RATING

    async def ask(self, ctx: Context, state: enum.StrEnum) -> None:
        ctx.say("requests/ask_rating", number=ctx.conversation.data["number"])

    async def give_up(self, ctx: Context, state: enum.StrEnum) -> None:
        ctx.say("requests/rating_skipped")

    async def step(self, ctx: Context, state: enum.StrEnum, text: str) -> None:
        rating = parse_rating(text)
        if rating is None:
            raise Reask("requests/bad_rating")
        assert ctx.person is not None
        desk = desk_for(ctx)
        try:
            await desk.rate(ctx.person, ctx.conversation.data["request_id"], rating)
        except RequestDenied as denied:
            ctx.say(denied.template, **desk.values(**denied.values))
            return
        ctx.say("requests/rated", rating=rating, number=ctx.conversation.data["number"])
