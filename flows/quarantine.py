"""Quarantine follow-up (密切接触者管理): wardens and doctors mark, extend and end periods.

Commands, one line each (a person by name or number, "全户" for the whole household)::

    隔离 张三 [全户] [3月3日|2024-03-03|今天|昨天] [14天]     home quarantine
    健康观察 张三 [全户] [开始日期] [7天]                   health observation
    延长隔离 张三 [全户] 7天                               extend an open period
    解除隔离 张三 [全户]                                   end it now

A period of N days starting on day S covers S .. S+N-1; the person is released on S+N.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from flows.answers import AnswerError, parse_number
from flows.checkin_config import CheckinConfig
from flows.checkin_push import local_day, local_time, push_to_person, quiet_end, schedule_of
from flows.context import Context
from storage import checkin as store
from storage import repo
from storage.models import Role

STAFF = (Role.WARDEN, Role.DOCTOR, Role.ADMIN)
COMMANDS = {
    "隔离": "quarantine",
    "居家隔离": "quarantine",
    "健康观察": "observation",
    "延长隔离": "extend",
    "解除隔离": "end",
}
HOUSEHOLD_WORDS = frozenset({"全户", "全家", "一家", "整户"})
MAX_BACKDATE_DAYS = 60
MAX_AHEAD_DAYS = 7
_ISO_DATE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})$")
_MONTH_DAY = re.compile(r"^(\d{1,2})月(\d{1,2})[日号]?$")
_RELATIVE_DAYS = {"今天": 0, "今日": 0, "昨天": -1, "前天": -2, "明天": 1}


class CommandError(ValueError):
    """The command cannot be carried out; ``template`` says why (with ``values``)."""

    def __init__(self, template: str, **values: Any) -> None:
        super().__init__(template)
        self.template = template
        self.values = values


@dataclass
class QuarantineCommand:
    action: str  # quarantine | observation | extend | end
    who: str
    household: bool = False
    start: date | None = None
    days: int | None = None
    extra: list[str] = field(default_factory=list)


def _parse_date(token: str, today: date) -> date | None:
    if token in _RELATIVE_DAYS:
        return today + timedelta(days=_RELATIVE_DAYS[token])
    try:
        if match := _ISO_DATE.match(token):
            return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        if match := _MONTH_DAY.match(token):
            day = date(today.year, int(match.group(1)), int(match.group(2)))
            # "12月30日" said on 2 January means last year's.
            if day > today + timedelta(days=MAX_AHEAD_DAYS):
                day = day.replace(year=today.year - 1)
            return day
    except ValueError:
        raise CommandError("checkin/quarantine_bad_date", token=token) from None
    return None


def _days(text: str) -> int | None:
    """ "14" or "十四" of "14天" as a number of days (1-60); ``None`` if not a number, so a name
    ending in 天 stays a name."""
    try:
        return int(parse_number(text, minimum=0, maximum=10_000, decimals=0))
    except AnswerError:
        return None


def parse_command(text: str, today: date) -> QuarantineCommand:
    """Read one quarantine command; raises :class:`CommandError` with a usage hint."""
    words = text.split()
    if not words or words[0] not in COMMANDS:
        raise CommandError("checkin/quarantine_usage")
    command = QuarantineCommand(COMMANDS[words[0]], who="")
    names: list[str] = []
    for token in words[1:]:
        if token in HOUSEHOLD_WORDS:
            command.household = True
        elif token.endswith("天") and (days := _days(token[:-1])) is not None:
            command.days = days
        elif (day := _parse_date(token, today)) is not None:
            command.start = day
        else:
            names.append(token.lstrip("#＃"))
    if len(names) != 1:
        raise CommandError("checkin/quarantine_usage")
    if command.days is not None and not 1 <= command.days <= 60:
        raise CommandError("checkin/quarantine_bad_days", days=command.days)
    command.who = names[0]
    if command.action == "extend" and command.days is None:
        raise CommandError("checkin/quarantine_usage")
    if command.start is not None and not (
        today - timedelta(days=MAX_BACKDATE_DAYS)
        <= command.start
        <= today + timedelta(days=MAX_AHEAD_DAYS)
    ):
        raise CommandError("checkin/quarantine_bad_date", token=command.start.isoformat())
    return command


def scope_paths(person: repo.PersonInfo) -> list[str]:
    """Path prefixes of the regions a staff member acts on (nested ones dropped)."""
    paths = sorted({r.path for r in person.scope_regions(*STAFF)})
    return [p for p in paths if not any(o != p and p.startswith(o) for o in paths)]


async def resolve_person(ctx: Context, who: str) -> repo.PersonInfo:
    """The person a staff member named (by number or by name), inside their scope."""
    assert ctx.person is not None
    if who.isascii() and who.isdigit():
        target = await repo.load_person(ctx.conn, int(who)) if len(who) < 19 else None
        if target is None or target.region is None:
            raise CommandError("checkin/quarantine_not_found", who=who)
        if not ctx.person.can_act_on(target.region, *STAFF):
            raise CommandError("checkin/out_of_scope")
        return target
    matches = await store.find_people_in_scope(ctx.conn, scope_paths(ctx.person), who)
    if not matches:
        raise CommandError("checkin/quarantine_not_found", who=who)
    if len(matches) > 1:
        raise CommandError("checkin/quarantine_ambiguous", who=who, matches=matches)
    found = await repo.load_person(ctx.conn, matches[0].id)
    assert found is not None
    return found


async def run_command(ctx: Context, text: str) -> None:
    """Carry out a quarantine command from a warden, doctor or admin; replies either way."""
    assert ctx.person is not None
    cfg: CheckinConfig = ctx.settings.checkin
    today = local_day(ctx.now, ctx.settings.tz)
    try:
        command = parse_command(text, today)
        target = await resolve_person(ctx, command.who)
        members = [target.id]
        if command.household and target.household_id is not None:
            members = await store.people_of_household(ctx.conn, target.household_id)
        if command.action in ("quarantine", "observation"):
            await _mark(ctx, cfg, command, members, today)
        elif command.action == "extend":
            await _extend(ctx, command, members)
        else:
            await _end(ctx, members)
    except CommandError as exc:
        ctx.say(exc.template, **exc.values)


async def _people(ctx: Context, ids: list[int]) -> list[repo.PersonInfo]:
    loaded = [await repo.load_person(ctx.conn, pid) for pid in ids]
    return [p for p in loaded if p is not None]


async def _mark(
    ctx: Context, cfg: CheckinConfig, command: QuarantineCommand, ids: list[int], today: date
) -> None:
    assert ctx.person is not None
    start = command.start or today
    days = command.days or cfg.quarantine.default_days
    end = start + timedelta(days=days)
    if end <= today:
        raise CommandError("checkin/quarantine_already_over", end_day=end)
    marked, skipped = [], []
    for person in await _people(ctx, ids):
        if await store.open_quarantine(ctx.conn, person.id) is not None:
            skipped.append(person)
            continue
        quarantine_id = await store.create_quarantine(
            ctx.conn,
            person_id=person.id,
            kind=command.action,
            start_day=start,
            end_day=end,
            created_by=ctx.person.id,
            now=ctx.now,
        )
        marked.append(person)
        await _audit(ctx, "checkin.quarantine.start", person, days=days, start=str(start))
        await _tell(
            ctx,
            cfg,
            person,
            key=store.outbox_key("qstart", person.id, start),
            template="checkin/quarantine_started",
            ref_id=quarantine_id,
            kind=command.action,
            start_day=start,
            end_day=end,
            days=days,
        )
    ctx.say(
        "checkin/quarantine_marked",
        kind=command.action,
        marked=marked,
        skipped=skipped,
        start_day=start,
        end_day=end,
        days=days,
    )


async def _extend(ctx: Context, command: QuarantineCommand, ids: list[int]) -> None:
    assert command.days is not None
    extended, missing = [], []
    for person in await _people(ctx, ids):
        open_period = await store.open_quarantine(ctx.conn, person.id)
        if open_period is None:
            missing.append(person)
            continue
        end = open_period.end_day + timedelta(days=command.days)
        await store.set_quarantine_end(ctx.conn, open_period.id, end)
        extended.append((person, end))
        await _audit(ctx, "checkin.quarantine.extend", person, days=command.days)
    ctx.say("checkin/quarantine_extended", extended=extended, missing=missing, days=command.days)


async def _end(ctx: Context, ids: list[int]) -> None:
    cfg: CheckinConfig = ctx.settings.checkin
    ended, missing = [], []
    for person in await _people(ctx, ids):
        open_period = await store.open_quarantine(ctx.conn, person.id)
        if open_period is None or not await store.close_quarantine(
            ctx.conn, open_period.id, status="ended", now=ctx.now
        ):
            missing.append(person)
            continue
        ended.append(person)
        await _audit(ctx, "checkin.quarantine.end", person)
        await _tell(
            ctx,
            cfg,
            person,
            key=f"checkin:qend:{open_period.id}",
            template="checkin/quarantine_ended",
            ref_id=open_period.id,
            kind=open_period.kind,
        )
    ctx.say("checkin/quarantine_closed", ended=ended, missing=missing)


async def _tell(
    ctx: Context,
    cfg: CheckinConfig,
    person: repo.PersonInfo,
    *,
    key: str,
    template: str,
    ref_id: int,
    **values: Any,
) -> None:
    """A message to the resident, outside their grid's quiet hours."""
    schedule = await schedule_of(ctx.conn, cfg, person.region)
    send_at = quiet_end(local_time(ctx.now, ctx.settings.tz), schedule.quiet_hours)
    text = ctx.texts.render(template, person_name=person.name, **values)
    await push_to_person(
        ctx.conn,
        ctx.db,
        key=key,
        person_id=person.id,
        text=text,
        not_before=send_at,
        ref_id=ref_id,
    )


async def _audit(ctx: Context, action: str, person: repo.PersonInfo, **detail: Any) -> None:
    assert ctx.person is not None
    await repo.record_audit(
        ctx.conn,
        actor_id=ctx.person.id,
        action=action,
        target_type="person",
        target_id=person.id,
        region_id=person.region.id if person.region else None,
        detail=detail,
    )
