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
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection

from flows.answers import AnswerError, parse_number
from flows.checkin_config import CheckinConfig
from flows.checkin_push import local_day, local_time, push_to_person, quiet_end, schedule_of
from flows.context import Context
from flows.texts import Texts
from storage import checkin as store
from storage import repo
from storage.db import Database
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
KINDS = ("quarantine", "observation")
MIN_DAYS, MAX_DAYS = 1, 60
MAX_BACKDATE_DAYS = 60
MAX_AHEAD_DAYS = 7
MAX_REASON_CHARS = 200
_ISO_DATE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})$")
_MONTH_DAY = re.compile(r"^(\d{1,2})月(\d{1,2})[日号]?$")
_RELATIVE_DAYS = {"今天": 0, "今日": 0, "昨天": -1, "前天": -2, "明天": 1}


class CommandError(ValueError):
    """The command cannot be carried out; ``template`` says why (with ``values``).

    ``code`` and ``status`` are what the API answers (a 4xx whose message is the same sentence
    a chat user reads)."""

    def __init__(
        self, template: str, *, code: str = "bad_request", status: int = 400, **values: Any
    ) -> None:
        super().__init__(template)
        self.template = template
        self.code = code
        self.status = status
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
    if command.days is not None and not MIN_DAYS <= command.days <= MAX_DAYS:
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


@dataclass
class Started:
    kind: str
    start_day: date
    end_day: date
    days: int
    marked: list[tuple[repo.PersonInfo, int]]  # with the new period's id
    skipped: list[repo.PersonInfo]  # already in an open period


@dataclass
class Ended:
    ended: list[tuple[repo.PersonInfo, Any]]  # with the period that was open
    missing: list[repo.PersonInfo]


@dataclass
class QuarantineDesk:
    """Quarantine periods as a warden, doctor or admin changes them.

    The one place the chat commands and the API go through: scope, date and length rules,
    the message to the resident and the audit entry are the same whichever way a change
    comes in.  Everything happens in the caller's transaction ``conn``, so a refusal (a
    :class:`CommandError`) leaves nothing half-stored when the caller rolls back.
    """

    conn: AsyncConnection
    db: Database
    texts: Texts
    checkin: CheckinConfig
    tz: ZoneInfo
    now: datetime
    actor: repo.PersonInfo
    via: str = "chat"

    @classmethod
    def of(cls, ctx: Context) -> QuarantineDesk:
        assert ctx.person is not None
        return cls(
            conn=ctx.conn,
            db=ctx.db,
            texts=ctx.texts,
            checkin=ctx.settings.checkin,
            tz=ctx.settings.tz,
            now=ctx.now,
            actor=ctx.person,
        )

    @property
    def today(self) -> date:
        return local_day(self.now, self.tz)

    async def find_person(self, who: str) -> repo.PersonInfo:
        """The person the staff member named (by number or by name), inside their scope."""
        if who.isascii() and who.isdigit():
            target = await repo.load_person(self.conn, int(who)) if len(who) < 19 else None
            if target is None or target.region is None:
                raise CommandError(
                    "checkin/quarantine_not_found", code="unknown_person", status=404, who=who
                )
            if not self.actor.can_act_on(target.region, *STAFF):
                raise CommandError("checkin/out_of_scope", code="out_of_scope", status=403)
            return target
        matches = await store.find_people_in_scope(self.conn, scope_paths(self.actor), who)
        if not matches:
            raise CommandError(
                "checkin/quarantine_not_found", code="unknown_person", status=404, who=who
            )
        if len(matches) > 1:
            raise CommandError(
                "checkin/quarantine_ambiguous",
                code="ambiguous_person",
                status=409,
                who=who,
                matches=matches,
            )
        found = await repo.load_person(self.conn, matches[0].id)
        assert found is not None
        return found

    async def members(self, target: repo.PersonInfo, household: bool) -> list[repo.PersonInfo]:
        """``target`` alone, or everyone of their household (``全户``)."""
        if not household or target.household_id is None:
            return [target]
        ids = await store.people_of_household(self.conn, target.household_id)
        loaded = [await repo.load_person(self.conn, pid) for pid in ids]
        return [p for p in loaded if p is not None]

    def check_period(self, kind: str, start: date, days: int) -> date:
        """The release day of a new period, or :class:`CommandError` saying what is wrong."""
        today = self.today
        if kind not in KINDS:
            raise CommandError("checkin/quarantine_usage", code="bad_kind")
        if not MIN_DAYS <= days <= MAX_DAYS:
            raise CommandError("checkin/quarantine_bad_days", code="bad_days", days=days)
        if not (
            today - timedelta(days=MAX_BACKDATE_DAYS)
            <= start
            <= today + timedelta(days=MAX_AHEAD_DAYS)
        ):
            raise CommandError("checkin/quarantine_bad_date", code="bad_start", token=str(start))
        end = start + timedelta(days=days)
        if end <= today:
            raise CommandError("checkin/quarantine_already_over", code="already_over", end_day=end)
        return end

    async def start(
        self,
        people: list[repo.PersonInfo],
        *,
        kind: str,
        start: date | None = None,
        days: int | None = None,
        reason: str | None = None,
    ) -> Started:
        """Open a period for each of ``people`` not already in one; tells each of them."""
        start = self.today if start is None else start
        days = self.checkin.quarantine.default_days if days is None else days
        end = self.check_period(kind, start, days)
        if reason is not None and len(reason) > MAX_REASON_CHARS:
            raise CommandError(
                "checkin/quarantine_bad_reason", code="bad_reason", limit=MAX_REASON_CHARS
            )
        for person in people:
            if person.region is None or not self.actor.can_act_on(person.region, *STAFF):
                raise CommandError("checkin/out_of_scope", code="out_of_scope", status=403)
        result = Started(kind, start, end, days, [], [])
        for person in people:
            if await store.open_quarantine(self.conn, person.id) is not None:
                result.skipped.append(person)
                continue
            quarantine_id = await store.create_quarantine(
                self.conn,
                person_id=person.id,
                kind=kind,
                start_day=start,
                end_day=end,
                created_by=self.actor.id,
                now=self.now,
                reason=reason,
            )
            result.marked.append((person, quarantine_id))
            await self._audit(
                "checkin.quarantine.start",
                person,
                quarantine_id=quarantine_id,
                kind=kind,
                days=days,
                start=str(start),
                **({"reason": reason} if reason else {}),
            )
            await self._tell(
                person,
                # By period, not by day: a period ended early and started again the same day is
                # news to the resident again.
                key=f"checkin:qstart:{quarantine_id}",
                template="checkin/quarantine_started",
                ref_id=quarantine_id,
                kind=kind,
                start_day=start,
                end_day=end,
                days=days,
            )
        return result

    async def extend(
        self, people: list[repo.PersonInfo], days: int
    ) -> tuple[list[tuple[repo.PersonInfo, date]], list[repo.PersonInfo]]:
        """Move the release day of each open period ``days`` later: (extended, not in one);
        tells each of them the new release day."""
        if not MIN_DAYS <= days <= MAX_DAYS:
            raise CommandError("checkin/quarantine_bad_days", code="bad_days", days=days)
        extended, missing = [], []
        for person in people:
            open_period = await store.open_quarantine(self.conn, person.id)
            if open_period is None:
                missing.append(person)
                continue
            end = open_period.end_day + timedelta(days=days)
            await store.set_quarantine_end(self.conn, open_period.id, end)
            extended.append((person, end))
            await self._audit(
                "checkin.quarantine.extend", person, quarantine_id=open_period.id, days=days
            )
            await self._tell(
                person,
                # By release day: a second extension is news again.
                key=f"checkin:qextend:{open_period.id}:{end.isoformat()}",
                template="checkin/quarantine_extended_resident",
                ref_id=open_period.id,
                kind=open_period.kind,
                days=days,
                end_day=end,
            )
        return extended, missing

    async def end(self, people: list[repo.PersonInfo], *, reason: str | None = None) -> Ended:
        """End each person's open period now (before its release day); tells each of them."""
        result = Ended([], [])
        for person in people:
            open_period = await store.open_quarantine(self.conn, person.id)
            if open_period is None or not await store.close_quarantine(
                self.conn, open_period.id, status="ended", now=self.now
            ):
                result.missing.append(person)
                continue
            result.ended.append((person, open_period))
            await self._audit(
                "checkin.quarantine.end",
                person,
                quarantine_id=open_period.id,
                **({"reason": reason} if reason else {}),
            )
            await self._tell(
                person,
                key=f"checkin:qend:{open_period.id}",
                template="checkin/quarantine_ended",
                ref_id=open_period.id,
                kind=open_period.kind,
            )
        return result

    async def end_period(self, quarantine_id: int, *, reason: str | None = None) -> Any:
        """End the period with this id (the API's way in); returns the period as it was."""
        period = await store.get_quarantine(self.conn, quarantine_id)
        person = await repo.load_person(self.conn, period.person_id) if period else None
        if period is None or person is None:
            raise CommandError(
                "checkin/quarantine_no_period", code="not_found", status=404, id=quarantine_id
            )
        if person.region is None or not self.actor.can_act_on(person.region, *STAFF):
            raise CommandError("checkin/out_of_scope", code="out_of_scope", status=403)
        if reason is not None and len(reason) > MAX_REASON_CHARS:
            raise CommandError(
                "checkin/quarantine_bad_reason", code="bad_reason", limit=MAX_REASON_CHARS
            )
        if period.status != store.ACTIVE:
            raise CommandError(
                "checkin/quarantine_not_open", code="not_open", status=409, person_name=person.name
            )
        ended = await self.end([person], reason=reason)
        if not ended.ended or ended.ended[0][1].id != period.id:
            # Closed by the release job between our read and our update.
            raise CommandError(
                "checkin/quarantine_not_open", code="not_open", status=409, person_name=person.name
            )
        return period

    async def _tell(
        self, person: repo.PersonInfo, *, key: str, template: str, ref_id: int, **values: Any
    ) -> None:
        """A message to the resident, outside their grid's quiet hours."""
        schedule = await schedule_of(self.conn, self.checkin, person.region)
        send_at = quiet_end(local_time(self.now, self.tz), schedule.quiet_hours)
        text = self.texts.render(template, person_name=person.name, **values)
        await push_to_person(
            self.conn,
            self.db,
            key=key,
            person_id=person.id,
            text=text,
            not_before=send_at,
            ref_id=ref_id,
        )

    async def _audit(self, action: str, person: repo.PersonInfo, **detail: Any) -> None:
        await repo.record_audit(
            self.conn,
            actor_id=self.actor.id,
            action=action,
            target_type="person",
            target_id=person.id,
            region_id=person.region.id if person.region else None,
            detail={**detail, "via": self.via},
        )


async def run_command(ctx: Context, text: str) -> None:
    """Carry out a quarantine command from a warden, doctor or admin; replies either way."""
    desk = QuarantineDesk.of(ctx)
    try:
        command = parse_command(text, desk.today)
        people = await desk.members(await desk.find_person(command.who), command.household)
        if command.action in ("quarantine", "observation"):
            started = await desk.start(
                people, kind=command.action, start=command.start, days=command.days
            )
            ctx.say(
                "checkin/quarantine_marked",
                kind=started.kind,
                marked=[p for p, _ in started.marked],
                skipped=started.skipped,
                start_day=started.start_day,
                end_day=started.end_day,
                days=started.days,
            )
        elif command.action == "extend":
            assert command.days is not None
            extended, missing = await desk.extend(people, command.days)
            ctx.say(
                "checkin/quarantine_extended",
                extended=extended,
                missing=missing,
                days=command.days,
            )
        else:
            ended = await desk.end(people)
            ctx.say(
                "checkin/quarantine_closed",
                ended=[p for p, _ in ended.ended],
                missing=ended.missing,
            )
    except CommandError as exc:
        ctx.say(exc.template, **exc.values)
