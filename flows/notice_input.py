"""Reading what a warden types when composing a notice: when to send it, and to whom.

Pure functions: each returns a clean value or raises :class:`NoticeInputError`, whose ``reason``
names the template under ``notices/refused/`` that explains the problem.

Times: "现在" (or "立即", "马上"); a day word and a clock time ("明天8点", "今晚8点半",
"后天上午9:30", "下午3点"); a date ("2026-12-01 09:00", "2026年12月1日9点", "12月1日 9点",
"12-01 09:00"); an offset ("30分钟后", "2小时后", "半小时后").  A clock time alone means today;
a month and day alone the next such day (in December, "1月3日" is next year's).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flows.answers import chinese_to_number


class NoticeInputError(ValueError):
    """Input that cannot be used; ``reason`` is a template name under ``notices/refused/``."""

    def __init__(self, reason: str, **values: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.values = values


NOW_WORDS = frozenset(
    {"现在", "立即", "立刻", "马上", "即刻", "现在发", "马上发", "立即发", "立即发送", "现在发送"}
)
URGENT_WORDS = ("紧急", "加急")

_NUMBER = r"\d{1,2}|[零一二两三四五六七八九十]{1,3}"
_CLOCK = (
    rf"(?P<hour>{_NUMBER})\s*(?:[:：]\s*(?P<minute>\d{{2}})"
    rf"|[点时]\s*(?:(?P<half>半)|(?P<quarter>[一三])刻|(?P<cn_minute>{_NUMBER})\s*分?)?)"
)
_PERIOD = r"(?P<period>凌晨|早上|早晨|上午|中午|下午|傍晚|晚上|夜里|夜间|早|晚)?"
_DAY_WORDS = {
    "今天": (0, None),
    "今日": (0, None),
    "今早": (0, "早上"),
    "今晚": (0, "晚上"),
    "明天": (1, None),
    "明日": (1, None),
    "明早": (1, "早上"),
    "明晚": (1, "晚上"),
    "后天": (2, None),
}
_RELATIVE_DAY = re.compile(rf"^(?P<day>{'|'.join(_DAY_WORDS)})?\s*{_PERIOD}\s*{_CLOCK}$")
_FULL_DATE = re.compile(
    rf"^(?P<year>\d{{4}})\s*[-/.年]\s*(?P<month>\d{{1,2}})\s*[-/.月]\s*(?P<day>\d{{1,2}})\s*[日号]?"
    rf"\s*[T ]?\s*{_PERIOD}\s*{_CLOCK}(?::\d{{2}})?$"
)
_MONTH_DAY = re.compile(
    rf"^(?P<month>\d{{1,2}})\s*[-/.月]\s*(?P<day>\d{{1,2}})\s*[日号]?\s*{_PERIOD}\s*{_CLOCK}$"
)
_OFFSET = re.compile(
    r"^(?P<amount>\d{1,4}|[零一二两三四五六七八九十]{1,3}|半)\s*个?\s*"
    r"(?P<unit>分钟|分|小时|钟头)\s*(?:以后|之后|后)$"
)
YEAR_ROLLOVER = timedelta(days=183)
"""A month and day without a year more than this far back is next year's ("1月3日" typed in
December); a day just gone stays this year's, so it is refused as past, not moved a year on."""
_EVENING = {"下午", "傍晚", "晚上", "夜里", "夜间", "晚"}


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    value = chinese_to_number(text)
    return None if value is None or value != int(value) else int(value)


def split_urgent(text: str) -> tuple[str, bool]:
    """Take the word "紧急" (or "加急") out of an answer: ``("明天8点", True)``."""
    urgent = False
    for word in URGENT_WORDS:
        if word in text:
            urgent = True
            text = text.replace(word, " ")
    return " ".join(text.split()), urgent


def _clock(match: re.Match[str]) -> tuple[int, int]:
    hour = _number(match.group("hour"))
    if match.group("minute") is not None:
        minute: int | None = int(match.group("minute"))
    elif match.group("half"):
        minute = 30
    elif match.group("quarter"):
        minute = 15 if match.group("quarter") == "一" else 45
    elif match.group("cn_minute") is not None:
        minute = _number(match.group("cn_minute"))
    else:
        minute = 0
    if hour is None or minute is None or not 0 <= minute <= 59:
        raise NoticeInputError("bad_time")
    return hour, minute


def _apply_period(hour: int, period: str | None) -> tuple[int, int]:
    """(hour, extra days) after reading "下午3点" as 15:00 and "晚上12点" as midnight."""
    if (period in _EVENING and hour < 12) or (period == "中午" and hour < 11):
        hour += 12
    if hour == 24 or (period in _EVENING and hour == 12):
        return 0, 1
    if not 0 <= hour <= 23:
        raise NoticeInputError("bad_time")
    return hour, 0


def _at(day: date, hour: int, minute: int, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=tz)


def _next_day(day: date, extra: int) -> date:
    """``day`` or the day after ("晚上12点"); past the calendar's last day is no time at all."""
    try:
        return day + timedelta(days=extra)
    except OverflowError:
        raise NoticeInputError("bad_time") from None


def parse_send_time(text: str, now: datetime, tz: ZoneInfo) -> datetime | None:
    """When to send: ``None`` for now, else an aware datetime (in ``tz``).

    Does not judge whether the time has passed; :func:`flows.notices.check_send_at` does.
    """
    cleaned = unicodedata.normalize("NFKC", text).strip().strip("。.!！")
    if not cleaned:
        raise NoticeInputError("bad_time")
    if cleaned in NOW_WORDS or cleaned.lower() == "now":
        return None
    local_now = now.astimezone(tz)
    iso = _parse_iso(cleaned, tz)
    if iso is not None:
        return iso
    if match := _OFFSET.match(cleaned):
        amount_text = match.group("amount")
        amount = 0.5 if amount_text == "半" else _number(amount_text)
        if amount is None:
            raise NoticeInputError("bad_time")
        unit = (
            timedelta(hours=1) if match.group("unit") in ("小时", "钟头") else timedelta(minutes=1)
        )
        return local_now + unit * amount
    if match := _RELATIVE_DAY.match(cleaned):
        offset, implied = _DAY_WORDS.get(match.group("day") or "", (0, None))
        hour, minute = _clock(match)
        hour, extra = _apply_period(hour, match.group("period") or implied)
        return _at(_next_day(local_now.date(), offset + extra), hour, minute, tz)
    for pattern in (_FULL_DATE, _MONTH_DAY):
        if match := pattern.match(cleaned):
            year = int(match.group("year")) if pattern is _FULL_DATE else local_now.year
            hour, minute = _clock(match)
            hour, extra = _apply_period(hour, match.group("period"))
            try:
                day = date(year, int(match.group("month")), int(match.group("day")))
                if pattern is _MONTH_DAY and day < local_now.date() - YEAR_ROLLOVER:
                    day = date(year + 1, day.month, day.day)
            except ValueError:
                raise NoticeInputError("bad_time") from None
            return _at(_next_day(day, extra), hour, minute, tz)
    raise NoticeInputError("bad_time")


def _parse_iso(text: str, tz: ZoneInfo) -> datetime | None:
    """ISO 8601 as APIs send it ("2026-12-01T09:00:00+08:00"); naive means local time."""
    if not re.match(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", text):
        return None
    try:
        value = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        return None
    return value.replace(tzinfo=tz) if value.tzinfo is None else value


# -- audience ------------------------------------------------------------------------------

ALL_WORDS = frozenset(
    {"全部", "所有", "辖区", "全辖区", "全部辖区", "本网格", "我的网格", "全部居民"}
)
GROUPS_ONLY_WORDS = frozenset({"只发群", "仅群", "只发群聊", "仅群聊", "群"})
PEOPLE_ONLY_WORDS = frozenset({"只发个人", "仅个人", "个人", "私信", "只发私信"})
ROLE_WORDS = {
    "居民": "resident",
    "志愿者": "volunteer",
    "网格员": "warden",
    "医生": "doctor",
}
STATUS_WORDS = {
    "隔离人员": "quarantined",
    "隔离中": "quarantined",
    "隔离户": "quarantined_households",
    "隔离家庭": "quarantined_households",
}
_ONLY_PREFIXES = ("只发", "仅", "只")
_SEPARATORS = re.compile(r"[\s,，、;；和]+")


@dataclass
class AudienceWords:
    """An audience answer taken apart: region words (codes or names) and options."""

    regions: list[str] = field(default_factory=list)
    whole_scope: bool = False
    groups: bool = True
    individuals: bool = True
    roles: list[str] = field(default_factory=list)
    status: str | None = None


def parse_audience(text: str) -> AudienceWords:
    """ "G0101 G0102 只发群", "全部", "C0101 仅志愿者", "全部 隔离户"."""
    words = AudienceWords()
    groups_only = people_only = False
    for token in _SEPARATORS.split(unicodedata.normalize("NFKC", text).strip()):
        if not token:
            continue
        if token in ALL_WORDS:
            words.whole_scope = True
        elif token in GROUPS_ONLY_WORDS:
            groups_only = True
        elif token in PEOPLE_ONLY_WORDS:
            people_only = True
        elif (option := _option(token)) is not None:
            kind, value = option
            if kind == "role" and value not in words.roles:
                words.roles.append(value)
            elif kind == "status":
                words.status = value
        else:
            words.regions.append(token)
    if groups_only and people_only:
        raise NoticeInputError("nothing_to_send")
    if groups_only and (words.roles or words.status):
        raise NoticeInputError("filter_needs_people")
    words.groups = not people_only and words.status is None and not words.roles
    words.individuals = not groups_only
    if not words.regions and not words.whole_scope:
        raise NoticeInputError("no_regions")
    return words


def _option(token: str) -> tuple[str, str] | None:
    bare = token
    for prefix in _ONLY_PREFIXES:
        if bare.startswith(prefix):
            bare = bare[len(prefix) :]
            break
    if bare in STATUS_WORDS:
        return "status", STATUS_WORDS[bare]
    if bare in ROLE_WORDS and bare != token:
        return "role", ROLE_WORDS[bare]
    return None
