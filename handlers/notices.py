"""Notices in chat: composing ("发通知"), receipts, cancelling, reminding, and "收到"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flows import notices
from flows.context import Context
from handlers.router import Route, Router
from storage import repo

router = Router("notices")
router.features.add("notices")

SENDERS = tuple(notices.SENDER_ROLES)
COMPOSE = "发通知"
CANCEL = "取消通知"
REMIND = ("提醒未确认", "再次提醒")


@dataclass(frozen=True)
class AckRoute(Route):
    """Matches acknowledgements only (the router's keywords cannot express "收到 + code")."""

    def matches(self, ctx: Context) -> bool:
        return super().matches(ctx) and notices.parse_ack(ctx.text)[0]


def _refused(ctx: Context, refused: notices.NoticeRefused) -> None:
    ctx.say(refused.template, **refused.values)


def _argument(ctx: Context, *commands: str) -> str:
    text = ctx.text
    for command in commands:
        if text.startswith(command):
            return text[len(command) :].strip(" :：,，")
    return ""


@router.message(COMPOSE, prefixes=(COMPOSE,), roles=SENDERS)
async def on_compose(ctx: Context) -> None:
    """ "发通知" (optionally followed by the text) starts the compose flow."""
    await ctx.flows.start(ctx, "notice_compose", text=_argument(ctx, COMPOSE) or None)


@router.message(COMPOSE, prefixes=(COMPOSE,))
async def on_compose_not_allowed(ctx: Context) -> None:
    ctx.say("notices/refused/not_allowed")


@router.message("通知回执", "回执", roles=SENDERS)
async def on_receipts(ctx: Context) -> None:
    assert ctx.person is not None
    lines = await notices.latest_receipts(
        ctx.conn, ctx.person, settings=ctx.settings, limit=ctx.settings.notices.receipts_shown
    )
    if not lines:
        ctx.say("notices/receipts_none")
        return
    await repo.record_audit(
        ctx.conn,
        actor_id=ctx.person.id,
        action="notice.receipts",
        target_type="notice",
        target_id=",".join(str(line.notice.id) for line in lines),
    )
    ctx.say("notices/receipts", lines=lines)


@router.message(prefixes=(CANCEL,), roles=SENDERS)
async def on_cancel(ctx: Context) -> None:
    assert ctx.person is not None
    code = _argument(ctx, CANCEL)
    if not code:
        ctx.say("notices/need_code", command=CANCEL)
        return
    try:
        notice = await notices.find_managed(ctx.conn, ctx.person, code=code)
        await notices.cancel_notice(ctx.conn, ctx.person, notice, now=ctx.now)
    except notices.NoticeRefused as refused:
        _refused(ctx, refused)
        return
    ctx.say("notices/cancelled", code=notice.code)


@router.message(prefixes=REMIND, roles=SENDERS)
async def on_remind(ctx: Context) -> None:
    assert ctx.person is not None
    code = _argument(ctx, *REMIND)
    if not code:
        ctx.say("notices/need_code", command=REMIND[0])
        return
    try:
        notice = await notices.find_managed(ctx.conn, ctx.person, code=code)
        reminded = await notices.remind_unacknowledged(
            ctx.conn, ctx.person, notice, texts=ctx.texts, settings=ctx.settings, now=ctx.now
        )
    except notices.NoticeRefused as refused:
        _refused(ctx, refused)
        return
    held = reminded.deliver_at > ctx.now
    ctx.say(
        "notices/reminded",
        code=notice.code,
        targets=reminded.targets,
        held_until=notices.local_label(reminded.deliver_at, ctx.settings) if held else "",
    )


async def on_ack(ctx: Context) -> None:
    """A recipient's "收到" (or the code) in a direct chat."""
    assert ctx.person is not None
    _, code = notices.parse_ack(ctx.text)
    outcome = await notices.acknowledge_person(ctx.conn, ctx.person, code, now=ctx.now)
    ctx.say(f"notices/ack_{outcome.result}", code=outcome.code, head=outcome.head)


async def on_group_ack(ctx: Context) -> None:
    """ "收到" in a bound group chat acknowledges the group's notice; one reply per group."""
    if ctx.group is None:
        return
    _, code = notices.parse_ack(ctx.text)
    name = ctx.inbound.sender_name or ctx.inbound.sender_id
    outcome = await notices.acknowledge_group(
        ctx.conn, ctx.group, ctx.person, name, code, now=ctx.now
    )
    if outcome.result == "group_thanks":
        member: Any = ctx.person.name if ctx.person else name
        ctx.say("notices/ack_group_thanks", member=member, code=outcome.code)


router.routes.append(AckRoute(on_ack))
router.routes.append(AckRoute(on_group_ack, registered=None, chats=frozenset({"group"})))
