"""Rumors in chat: "这是真的吗 …", "辟谣 …", a forwarded post or link, and "谣言榜" for staff."""

from __future__ import annotations

from dataclasses import dataclass

from flows import notices, rumors
from flows.context import Context
from handlers.router import Route, Router

router = Router("rumors")
router.features.add("rumors")

REPORT = "谣言榜"


@dataclass(frozen=True)
class QuestionRoute(Route):
    """Matches what asks about a rumor (the router's prefixes cannot express "long text")."""

    def matches(self, ctx: Context) -> bool:
        if not super().matches(ctx):
            return False
        min_chars = ctx.settings.rumors.forward_min_chars
        return rumors.question_text(ctx.inbound, min_chars=min_chars) is not None


@router.message(REPORT, roles=rumors.REPORT_ROLES)
async def on_report(ctx: Context) -> None:
    """The most asked claims of the last days in the staff member's scope."""
    person = ctx.person
    assert person is not None
    config = ctx.settings.rumors
    _, result = await rumors.report_for(
        ctx.conn,
        person,
        region_code=None,
        days=config.report_days,
        limit=config.report_limit,
        now=ctx.now,
        via="chat",
    )
    labels = {
        "since": notices.local_label(result.since, ctx.settings),
        "until": notices.local_label(ctx.now, ctx.settings),
    }
    if not result.answered and not result.unanswered:
        ctx.say("rumors/report_empty", **labels)
        return
    ctx.say("rumors/report", report=result, **labels)


@router.message(REPORT)
async def on_report_not_allowed(ctx: Context) -> None:
    ctx.say("rumors/report_not_allowed")


async def on_question(ctx: Context) -> None:
    """Check what the resident forwarded (the rumor flow answers, suggests or queues it)."""
    text = rumors.question_text(ctx.inbound, min_chars=ctx.settings.rumors.forward_min_chars)
    if not text:
        ctx.say("rumors/ask_for_text")
        return
    await ctx.flows.start(ctx, rumors.RumorDesk.name, text=text)


router.routes.append(QuestionRoute(on_question, kinds=frozenset({"text", "other"})))


@router.message(kinds=("image",))
async def on_image(ctx: Context) -> None:
    """A picture alone cannot be checked: ask for its text."""
    ctx.say("rumors/image_only")
