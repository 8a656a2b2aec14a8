"""Chat routes of residents' requests: filing, "我的诉求", "待办", "督办", the resident's verdict,
and "<request number> <action>" for handlers, volunteers and residents."""

from __future__ import annotations

from typing import Any

from flows.answers import strip_trailing_punctuation
from flows.context import Context
from flows.request_intake import desk_for, parse_rating, say_notices
from flows.requests import Desk, RequestDenied, normalize_number
from handlers.router import Router
from storage import repo
from storage import requests_repo as rq
from storage.models import Role

router = Router("requests")
router.features.add("requests")

STAFF = (Role.WARDEN, Role.ADMIN)
VERDICTS = ("满意", "不满意", "重新处理", "确认收到", "已收到")
ACTIONS = (
    *VERDICTS,
    "评分",
    "评价",
    "接单",
    "已送达",
    "送达",
    "受理",
    "备注",
    "转交",
    "办结",
    "派给志愿者",
    "派给",
    "督办",
)


def split_action(rest: str) -> tuple[str, str]:
    """``办结：已送药上门`` -> (``办结``, ``已送药上门``); unknown words come back whole."""
    for word in sorted(ACTIONS, key=len, reverse=True):
        if rest.startswith(word):
            return word, rest[len(word) :].strip().lstrip(":：,，").strip()
    return rest.strip(), ""


@router.message("求助", "我要反映", "我要求助", "反映问题", "我要投诉", "我有建议")
async def on_file(ctx: Context) -> None:
    await ctx.flows.start(ctx, "request_intake")


@router.message("我的诉求", "我的求助", "诉求进度")
async def on_mine(ctx: Context) -> None:
    assert ctx.person is not None
    desk = desk_for(ctx)
    rows = await rq.list_for_resident(
        ctx.conn, ctx.person.id, limit=ctx.settings.requests.list_limit
    )
    ctx.say("requests/mine", **desk.values(requests=rows))


@router.message("待办", "我的待办", roles=(Role.WARDEN, Role.ADMIN, Role.VOLUNTEER))
async def on_todo(ctx: Context) -> None:
    assert ctx.person is not None
    desk = desk_for(ctx)
    limit = ctx.settings.requests.list_limit
    handling = await rq.list_for_handler(ctx.conn, ctx.person.id, limit=limit)
    tasks = await rq.list_for_volunteer(ctx.conn, ctx.person.id, limit=limit)
    ctx.say("requests/todo", **desk.values(handling=handling, tasks=tasks))


@router.message("督办", prefixes=("督办 ",), roles=(Role.ADMIN,))
async def on_overdue(ctx: Context) -> None:
    """Overdue requests under the admin's scope (or under the region code given)."""
    assert ctx.person is not None
    desk = desk_for(ctx)
    code = strip_trailing_punctuation(ctx.text.removeprefix("督办")).strip().upper()
    admin_regions = ctx.person.scope_regions(Role.ADMIN)
    if code:
        region = await repo.get_region_by_code(ctx.conn, code)
        if region is None:
            ctx.say("requests/denied/unknown_region", code=code)
            return
        if not ctx.person.can_act_on(region, Role.ADMIN):
            ctx.say("requests/denied/region_out_of_scope", region=region)
            return
        regions = [region]
    else:
        regions = [
            r for r in admin_regions if not any(o is not r and o.contains(r) for o in admin_regions)
        ]
    sections = []
    for region in regions:
        total, rows = await rq.overdue_in_region(
            ctx.conn, region, now=ctx.now, limit=ctx.settings.requests.list_limit
        )
        names = await desk.names(r.handler_id for r in rows)
        sections.append({"region": region, "total": total, "rows": rows, "names": names})
    ctx.say("requests/overdue", **desk.values(sections=sections, now=ctx.now))


@router.message(*VERDICTS)
async def on_verdict(ctx: Context) -> None:
    """满意 / 不满意 / 重新处理 / 确认收到 without a number: the one request waiting for it."""
    assert ctx.person is not None
    word = strip_trailing_punctuation(ctx.text)  # the router matched it so
    waiting = await rq.awaiting_resident(ctx.conn, ctx.person.id)
    desk = desk_for(ctx)
    if not waiting:
        if word == "重新处理":
            # An unsatisfied close can still be reopened: take the latest closed one.
            latest = await rq.list_for_resident(ctx.conn, ctx.person.id, limit=1)
            if latest and latest[0].satisfied is False:
                await _resident_action(ctx, desk, latest[0].number, word)
                return
        ctx.say("requests/no_awaiting")
        return
    if len(waiting) > 1:
        ctx.say("requests/choose_number", **desk.values(requests=waiting, word=word))
        return
    await _resident_action(ctx, desk, waiting[0].number, word)


@router.message(prefixes=("Q", "q", "Ｑ", "ｑ"))
async def on_number(ctx: Context) -> None:
    """``<number>`` shows a request; ``<number> <action> ...`` acts on it."""
    assert ctx.person is not None
    parsed = normalize_number(ctx.text)
    if parsed is None:
        ctx.say("help/not_understood")
        return
    number, rest = parsed
    action, argument = split_action(rest)
    desk = desk_for(ctx)
    try:
        await _act(ctx, desk, number, action, argument)
    except RequestDenied as denied:
        ctx.say(denied.template, **desk.values(**denied.values))
        return
    say_notices(ctx, desk)


async def _act(ctx: Context, desk: Desk, number: str, action: str, argument: str) -> None:
    person = ctx.person
    assert person is not None
    if action in VERDICTS or action in ("评分", "评价"):
        if action in ("评分", "评价"):
            await _rate_by_number(ctx, desk, number, argument)
            return
        await _resident_action(ctx, desk, number, action, say=False)
        return
    if action in ("接单", "送达", "已送达"):
        if action == "接单":
            req = await desk.volunteer_accept(person, number)
            ctx.say("requests/volunteer_accepted", **desk.values(**await desk.volunteer_view(req)))
        else:
            req = await desk.deliver(person, number)
            ctx.say("requests/delivered", **desk.values(req=req))
        return
    if action == "":
        await _show(ctx, desk, number)
        return
    handled = await _staff_action(ctx, desk, number, action, argument)
    if not handled:
        ctx.say("requests/unknown_action", number=number)


async def _show(ctx: Context, desk: Desk, number: str) -> None:
    person = ctx.person
    assert person is not None
    req = await desk.load(number, lock=False)
    if req.resident_id == person.id:
        ctx.say(
            "requests/resident_detail", **desk.values(req=req, timeline=await desk.timeline(req))
        )
        return
    if req.volunteer_id == person.id:
        ctx.say("requests/volunteer_task", **desk.values(**await desk.volunteer_view(req)))
        return
    if not person.has_role(*STAFF):
        if person.has_role(Role.VOLUNTEER):
            raise RequestDenied("out_of_scope", "requests/denied/not_handed_to_you", req=req)
        raise RequestDenied("out_of_scope", "requests/denied/not_yours", number=number)
    ctx.say("requests/detail", **desk.values(**await desk.staff_view(person, number)))


async def _staff_action(ctx: Context, desk: Desk, number: str, action: str, argument: str) -> bool:
    person = ctx.person
    assert person is not None
    if not person.has_role(*STAFF) and action in (
        "受理",
        "备注",
        "转交",
        "办结",
        "派给志愿者",
        "督办",
    ):
        raise RequestDenied("out_of_scope", "requests/denied/staff_only")
    req: Any
    if action == "受理":
        req = await desk.accept(person, number)
        ctx.say("requests/accepted", **desk.values(req=req))
    elif action == "备注":
        req = await desk.note(person, number, argument)
        ctx.say("requests/noted", **desk.values(req=req))
    elif action == "转交":
        req = await desk.transfer(person, number, argument)
        grid = await repo.get_region(ctx.conn, req.region_id)
        ctx.say("requests/transferred", **desk.values(req=req, grid=grid))
    elif action == "办结":
        req = await desk.resolve(person, number, argument)
        ctx.say("requests/resolved", **desk.values(req=req))
    elif action in ("派给志愿者", "派给"):
        req = await desk.hand_to_volunteer(person, number, argument)
        names = await desk.names([req.volunteer_id])
        ctx.say("requests/handed", **desk.values(req=req, volunteer=names.get(req.volunteer_id)))
    elif action == "督办":
        req = await desk.press(person, number, argument)
        names = await desk.names([req.handler_id])
        ctx.say("requests/pressed", **desk.values(req=req, handler=names.get(req.handler_id)))
    else:
        return False
    return True


async def _resident_action(
    ctx: Context, desk: Desk, number: str, word: str, *, say: bool = True
) -> None:
    """A resident's verdict on one of their requests (satisfied, not, reopen, received)."""
    person = ctx.person
    assert person is not None
    try:
        if word == "重新处理":
            req = await desk.reopen(person, number)
            ctx.say("requests/reopened", **desk.values(req=req))
        else:
            if word in ("确认收到", "已收到"):
                req = await desk.confirm_receipt(person, number)
            else:
                req = await desk.confirm(person, number, satisfied=word == "满意")
            ctx.say("requests/confirmed", **desk.values(req=req, word=word))
            await ctx.flows.start(ctx, "request_rating", request_id=req.id, number=req.number)
    except RequestDenied as denied:
        if not say:
            raise
        ctx.say(denied.template, **desk.values(**denied.values))
        return
    say_notices(ctx, desk)


async def _rate_by_number(ctx: Context, desk: Desk, number: str, argument: str) -> None:
    person = ctx.person
    assert person is not None
    req = await desk.own_request(person, number)
    rating = parse_rating(argument)
    if rating is None:
        ctx.say("requests/bad_rating")
        return
    if req.status != "closed":
        raise RequestDenied("conflict", "requests/denied/not_closed_yet", req=req)
    await desk.rate(person, req.id, rating)
    ctx.say("requests/rated", rating=rating, number=req.number)
