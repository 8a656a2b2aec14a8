"""Check-in routes: residents start the questionnaire; staff see their area and act on alerts."""

from __future__ import annotations

import re

from flows.checkin_alerts import acknowledge, answer_items
from flows.checkin_config import CheckinConfig
from flows.checkin_push import local_day
from flows.context import Context
from flows.quarantine import STAFF, run_command, scope_paths
from handlers.router import Router
from storage import checkin as store
from storage import repo

router = Router("checkin")
router.features.add("checkin")

CHECKIN_WORDS = ("打卡", "健康打卡", "重新打卡", "今日打卡", "今日健康打卡", "每日打卡")
HOUSEHOLD_WORDS = ("帮家人打卡", "替家人打卡", "家人打卡", "帮家人报")
_PAGE = re.compile(r"^(?:第)?\s*(\d{1,5})\s*(?:页)?$")
_ACK = re.compile(r"^确认\s*[#＃]?\s*(\d{1,18})$")


def _enabled(ctx: Context) -> bool:
    cfg: CheckinConfig = ctx.settings.checkin
    if not cfg.enabled:
        ctx.say("checkin/disabled")
    return cfg.enabled


@router.message("今日打卡", "打卡情况", roles=STAFF)
async def on_today(ctx: Context) -> None:
    """A staff member's area today: residents, answered, incomplete, missing, abnormal."""
    assert ctx.person is not None
    day = local_day(ctx.now, ctx.settings.tz)
    paths = scope_paths(ctx.person)
    counts = await store.day_counts(ctx.conn, paths, day)
    await _audit(ctx, "checkin.view.today", len(counts))
    ctx.say(
        "checkin/today",
        day=day,
        total=sum(c.total for c in counts),
        complete=sum(c.complete for c in counts),
        incomplete=sum(c.incomplete for c in counts),
        moderate=sum(c.moderate for c in counts),
        high=sum(c.high for c in counts),
        quarantined=await store.count_quarantined(ctx.conn, paths, day),
        scopes=[r.name for r in ctx.person.scope_regions(*STAFF)],
    )


@router.message("未打卡", prefixes=("未打卡",), roles=STAFF)
async def on_missing(ctx: Context) -> None:
    """Who has not checked in today, by household, one page at a time ("未打卡 2")."""
    assert ctx.person is not None
    cfg: CheckinConfig = ctx.settings.checkin
    rest = ctx.text.removeprefix("未打卡").strip()
    match = _PAGE.match(rest) if rest else None
    if rest and match is None:
        ctx.say("checkin/missing_usage")
        return
    page = int(match.group(1)) if match else 1
    if page < 1:
        ctx.say("checkin/missing_usage")
        return
    day = local_day(ctx.now, ctx.settings.tz)
    total, rows = await store.missing_people(
        ctx.conn,
        scope_paths(ctx.person),
        day,
        limit=cfg.page_size,
        offset=(page - 1) * cfg.page_size,
    )
    await _audit(ctx, "checkin.view.missing", len(rows), page=page)
    pages = max(1, -(-total // cfg.page_size))
    ctx.say(
        "checkin/missing",
        day=day,
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        first=(page - 1) * cfg.page_size + 1,
    )


@router.message("异常", "今日异常", "打卡异常", roles=STAFF)
async def on_abnormal(ctx: Context) -> None:
    """Today's moderate and high check-ins in the staff member's area, with their alerts."""
    assert ctx.person is not None
    cfg: CheckinConfig = ctx.settings.checkin
    day = local_day(ctx.now, ctx.settings.tz)
    rows = await store.abnormal_records(ctx.conn, scope_paths(ctx.person), day)
    await _audit(ctx, "checkin.view.abnormal", len(rows))
    ctx.say(
        "checkin/abnormal",
        day=day,
        rows=[(row, answer_items(cfg, dict(row.answers or {}))) for row in rows],
    )


@router.message(prefixes=("确认",), roles=STAFF)
async def on_acknowledge(ctx: Context) -> None:
    """ "确认 12": the alert with code 12 is being followed up; stops its escalation."""
    assert ctx.person is not None
    match = _ACK.match(ctx.text)
    if match is None:
        ctx.say("checkin/ack_usage")
        return
    alert_id = int(match.group(1))
    outcome = await acknowledge(ctx.conn, ctx.person, alert_id, ctx.now)
    ctx.say(f"checkin/ack_{outcome}", alert_id=alert_id)


@router.message(prefixes=("隔离", "居家隔离", "健康观察", "延长隔离", "解除隔离"), roles=STAFF)
async def on_quarantine(ctx: Context) -> None:
    await run_command(ctx, ctx.text)


@router.message(*CHECKIN_WORDS)
async def on_checkin(ctx: Context) -> None:
    if _enabled(ctx):
        await ctx.flows.start(ctx, "checkin")


@router.message(*HOUSEHOLD_WORDS)
async def on_household_checkin(ctx: Context) -> None:
    if _enabled(ctx):
        await ctx.flows.start(ctx, "checkin", household=True)


@router.message(*CHECKIN_WORDS, *HOUSEHOLD_WORDS, chats=("group",))
async def on_checkin_in_group(ctx: Context) -> None:
    """Health answers are personal: the questionnaire runs in a direct chat only."""
    ctx.say("checkin/use_direct_chat")


async def _audit(ctx: Context, action: str, count: int, **detail: object) -> None:
    """One entry per region viewed, so whoever audits that region finds it (health data)."""
    assert ctx.person is not None
    for region in repo.scope_roots(ctx.person.scope_regions(*STAFF)):
        await repo.record_audit(
            ctx.conn,
            actor_id=ctx.person.id,
            action=action,
            target_type="region",
            target_id=region.code,
            region_id=region.id,
            detail={"count": count, **detail},
        )
