"""Notices: the pure parts (times, audiences, splitting, quiet hours, acknowledgements)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from bot.config import ConfigError, parse_config
from flows import notices
from flows.notice_input import NoticeInputError, parse_audience, parse_send_time, split_urgent
from flows.texts import Texts
from storage.repo import RegionInfo

TZ = ZoneInfo("Asia/Shanghai")
# Saturday 28 November 2026, 10:20 in Shanghai.
NOW = datetime(2026, 11, 28, 10, 20, tzinfo=TZ).astimezone(UTC)


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=TZ)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("明天8点", local(2026, 11, 29, 8, 0)),
        ("明天 8:30", local(2026, 11, 29, 8, 30)),
        ("明早八点", local(2026, 11, 29, 8, 0)),
        ("今晚7点半", local(2026, 11, 28, 19, 30)),
        ("下午3点", local(2026, 11, 28, 15, 0)),
        ("中午12点", local(2026, 11, 28, 12, 0)),
        ("晚上十点一刻", local(2026, 11, 28, 22, 15)),
        ("后天上午9:30", local(2026, 11, 30, 9, 30)),
        ("20:00", local(2026, 11, 28, 20, 0)),
        ("2026-12-01 09:00", local(2026, 12, 1, 9, 0)),
        ("2026/12/01 9:00", local(2026, 12, 1, 9, 0)),
        ("2026年12月1日9点", local(2026, 12, 1, 9, 0)),
        ("12月1日 下午2点", local(2026, 12, 1, 14, 0)),
        ("12-01 09:00", local(2026, 12, 1, 9, 0)),
        ("2026-12-01T09:00:00+08:00", local(2026, 12, 1, 9, 0)),
        ("30分钟后", local(2026, 11, 28, 10, 50)),
        ("半小时后", local(2026, 11, 28, 10, 50)),
        ("两个小时以后", local(2026, 11, 28, 12, 20)),
    ],
)
def test_send_times_people_type(text, expected):
    assert parse_send_time(text, NOW, TZ) == expected


@pytest.mark.parametrize("text", ["现在", "立即", "马上", " 现在。", "now"])
def test_now_words_mean_now(text):
    assert parse_send_time(text, NOW, TZ) is None


@pytest.mark.parametrize(
    "text",
    ["", "下周", "明天", "25点", "明天8点61分", "2026-02-30 09:00", "过一会儿", "13月1日 9点"],
)
def test_unreadable_times_are_refused(text):
    with pytest.raises(NoticeInputError) as caught:
        parse_send_time(text, NOW, TZ)
    assert caught.value.reason == "bad_time"


def test_a_month_and_day_early_in_the_year_typed_in_december_is_next_year():
    # "1月3日" typed on 28 November was read as 3 January 2026, long past: refused as a past
    # time, so a warden could not schedule the new year's first notices from December.
    assert parse_send_time("1月3日 上午9点", NOW, TZ) == local(2027, 1, 3, 9, 0)
    assert parse_send_time("01-03 09:00", NOW, TZ) == local(2027, 1, 3, 9, 0)
    # A day just gone stays this year's (and is refused as past, not moved a year ahead).
    assert parse_send_time("11月27日 9点", NOW, TZ) == local(2026, 11, 27, 9, 0)
    assert parse_send_time("6月1日 9点", NOW, TZ) == local(2026, 6, 1, 9, 0)


def test_times_past_the_end_of_the_calendar_are_refused_not_crashed():
    with pytest.raises(NoticeInputError) as caught:
        parse_send_time("9999-12-31 晚上12点", NOW, TZ)
    assert caught.value.reason == "bad_time"
    with pytest.raises(notices.NoticeRefused) as refused:
        notices.check_send_at(
            datetime(9999, 12, 31, 23, 59, tzinfo=timezone(-timedelta(hours=5))), NOW
        )
    assert refused.value.reason == "too_far"


def test_a_time_more_than_a_year_ahead_is_refused():
    with pytest.raises(notices.NoticeRefused) as caught:
        notices.check_send_at(NOW + notices.MAX_AHEAD + timedelta(minutes=1), NOW)
    assert caught.value.reason == "too_far"
    assert notices.check_send_at(NOW + notices.MAX_AHEAD, NOW) == NOW + notices.MAX_AHEAD


def test_urgent_is_taken_out_of_the_time():
    assert split_urgent("现在 紧急") == ("现在", True)
    assert split_urgent("紧急明天8点") == ("明天8点", True)
    assert split_urgent("明天8点") == ("明天8点", False)


def test_past_time_is_refused_and_future_is_kept_in_utc():
    with pytest.raises(notices.NoticeRefused) as caught:
        notices.check_send_at(NOW - timedelta(minutes=1), NOW)
    assert caught.value.reason == "past_time"
    later = (NOW + timedelta(hours=1)).astimezone(TZ)
    assert notices.check_send_at(later, NOW) == NOW + timedelta(hours=1)
    assert notices.check_send_at(None, NOW) is None


def test_audience_words():
    words = parse_audience("G0101，G0102 只发群")
    assert (words.regions, words.groups, words.individuals) == (["G0101", "G0102"], True, False)
    words = parse_audience("全部 只发个人")
    assert words.whole_scope and not words.groups and words.individuals
    words = parse_audience("C0101 仅志愿者")
    assert words.roles == ["volunteer"] and not words.groups and words.individuals
    words = parse_audience("全部 隔离户")
    assert words.status == "quarantined_households" and not words.groups
    assert parse_audience("桃园社区第1网格").regions == ["桃园社区第1网格"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("只发群 只发个人", "nothing_to_send"),
        ("只发群", "no_regions"),
        ("G0101 只发群 仅志愿者", "filter_needs_people"),
    ],
)
def test_audience_contradictions_are_refused(text, reason):
    with pytest.raises(NoticeInputError) as caught:
        parse_audience(text)
    assert caught.value.reason == reason


def _label(number: int, total: int) -> str:
    return f"（{number}/{total}）\n"


@pytest.mark.parametrize("limit", [notices.Limit(60), notices.Limit(120, "bytes")])
def test_long_text_is_split_into_numbered_parts_that_fit(limit):
    text = "第一句话说明停水时间。第二句话说明储水要求！" * 8 + "最后一句。"
    parts = notices.split_text(text, limit, _label)
    assert len(parts) > 1
    assert all(limit.measure(p) <= limit.size for p in parts)
    assert [p.split("\n", 1)[0] for p in parts] == [
        f"（{i}/{len(parts)}）" for i in range(1, len(parts) + 1)
    ]
    assert "".join(p.split("\n", 1)[1] for p in parts) == text
    # Parts end at a sentence end when one is near.
    assert all(p.endswith(("。", "！")) for p in parts)


def test_short_text_is_one_message():
    assert notices.split_text("短通知", notices.Limit(10), _label) == ("短通知",)


def test_channel_table_and_overrides():
    limits = notices.channel_limits({"sim": 80, "wecom:robot": 1000, "other": 50})
    assert limits["sim"] == notices.Limit(80, "chars")
    assert limits["wecom:robot"] == notices.Limit(1000, "bytes")
    assert limits["other"] == notices.Limit(50, "chars")
    assert limits["bridge"] == notices.CHANNEL_LIMITS["bridge"]
    plan = notices.text_plan("汉" * 1000, notices.channel_limits({}), Texts())
    by_key = dict(plan.variants)
    assert plan.base == by_key["bridge"] == ("汉" * 1000,)
    robot = by_key["wecom:robot"]
    assert len(robot) == 2 and all(len(p.encode()) <= 2048 for p in robot)


def _settings(**section):
    return parse_config({"notices": section})


def test_quiet_hours_hold_until_their_end():
    settings = _settings()
    late = local(2026, 11, 28, 23, 30).astimezone(UTC)
    early = local(2026, 11, 29, 6, 0).astimezone(UTC)
    noon = local(2026, 11, 29, 12, 0).astimezone(UTC)
    assert notices.quiet_until(late, settings) == local(2026, 11, 29, 7, 0)
    assert notices.quiet_until(early, settings) == local(2026, 11, 29, 7, 0)
    assert notices.quiet_until(noon, settings) is None
    assert notices.delivery_time(late, urgent=True, settings=settings) == late
    assert notices.delivery_time(late, urgent=False, settings=settings) == local(2026, 11, 29, 7)
    lunch = _settings(quiet_start="12:00", quiet_end="14:00")
    assert notices.quiet_until(noon, lunch) == local(2026, 11, 29, 14, 0)
    assert notices.quiet_until(late, lunch) is None
    assert notices.quiet_until(late, _settings(quiet_hours=False)) is None


def test_quiet_hours_must_be_clock_times():
    with pytest.raises(ConfigError, match=r"notices\.quiet_start"):
        parse_config({"notices": {"quiet_start": "25:00"}})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("收到", (True, None)),
        ("收到了，谢谢", (True, None)),
        ("好的收到！", (True, None)),
        ("已收到", (True, None)),
        ("收到 k7m2", (True, "K7M2")),
        ("K7M2", (True, "K7M2")),
        ("收到的是什么？", (False, None)),
        ("收到了吗还有别的事", (False, None)),
        ("你好", (False, None)),
        ("1234", (False, None)),
    ],
)
def test_acknowledgements_are_recognised(text, expected):
    assert notices.parse_ack(text) == expected


def test_codes_use_unambiguous_characters():
    assert notices.CODE_PATTERN.match("K7M2")
    assert not notices.CODE_PATTERN.match("KOM2")  # no letter O
    assert not notices.CODE_PATTERN.match("ABCD")  # needs a digit
    assert not notices.CODE_PATTERN.match("2345")  # needs a letter


def test_common_path_is_the_smallest_region_holding_all():
    def region(path: str) -> RegionInfo:
        return RegionInfo(0, "", "", "grid", None, path)

    assert notices.common_path([region("/1/2/5/"), region("/1/2/6/")]) == "/1/2/"
    assert notices.common_path([region("/1/2/5/")]) == "/1/2/5/"
    assert notices.common_path([region("/1/2/"), region("/1/3/")]) == "/1/"


def test_channel_lengths_in_config_must_carry_a_notice():
    with pytest.raises(ConfigError, match=r"notices\.max_length"):
        parse_config({"notices": {"max_length": {"sim": 10}}})
