"""Tests for flows.answers: parsing residents' free-text questionnaire answers."""

from __future__ import annotations

import pytest

from flows.answers import (
    AnswerError,
    Option,
    chinese_to_number,
    parse_choices,
    parse_number,
    parse_temperature,
    parse_yes_no,
)

SYMPTOMS = (
    Option("fever", "发热", ("发烧",)),
    Option("cough", "咳嗽"),
    Option("sore_throat", "咽痛", ("嗓子疼", "喉咙痛")),
    Option("fatigue", "乏力", ("没力气",)),
    Option("none", "无"),
)

# Twelve options: option numbers may have two digits, so digit runs are not split.
MANY = tuple(Option(f"o{n}", f"选项{n}") for n in range(1, 13))

TRANSPORT = (
    Option("walk", "步行"),
    Option("bus", "公交", ("公交车", "巴士")),
    Option("car", "自驾", ("开车",)),
)


# --- chinese_to_number ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("三十六度五", 36.5),
        ("三十七点二", 37.2),
        ("三十六", 36.0),
        ("三十六度", 36.0),
        ("三十六度半", 36.5),
        ("三十六点五五", 36.55),
        ("零", 0.0),
        ("五", 5.0),
        ("两", 2.0),
        ("十", 10.0),
        ("十五", 15.0),
        ("一十五", 15.0),
        ("二十", 20.0),
        ("一百", 100.0),
        ("一百零五", 105.0),
        ("一百五", 150.0),
        ("两百", 200.0),
        ("二百二十", 220.0),
        ("两千三", 2300.0),
        ("一千零五", 1005.0),
        ("一千零十", 1010.0),
        ("十万", 100000.0),
        ("三万五", 35000.0),
        ("三万零五百", 30500.0),
        ("负五", -5.0),
        ("叁拾陆点伍", 36.5),
        ("三十六點五", 36.5),
        (" 三十六 ", 36.0),
    ],
)
def test_chinese_to_number_reads_numerals(text: str, expected: float) -> None:
    assert chinese_to_number(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "36",
        "36.5",
        "正常",
        "三六",  # digits in a row mean "three or six", not 36
        "两三",
        "三零",
        "百",
        "十十",
        "十百",
        "三十七点",
        "三十六点五点五",
        "三十六度五度",
        "三十六度两",
        "三十六度十",
        "三十六度a",
        "万",
        "三万万",
    ],
)
def test_chinese_to_number_returns_none_for_non_numerals(text: str) -> None:
    assert chinese_to_number(text) is None


# --- parse_number ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3.0),
        ("3.5", 3.5),
        ("  3.5  ", 3.5),
        ("3.5。", 3.5),
        ("3.5!", 3.5),
        ("3.5吧", 3.5),
        ("3,5", 3.5),
        ("3，5", 3.5),
        ("3。5", 3.5),
        ("3点5", 3.5),
        ("３．５", 3.5),
        ("三点五", 3.5),
        ("五", 5.0),
        ("3.25", 3.3),  # rounded half up, not to even
        ("3.24", 3.2),
        ("0", 0.0),
        ("-2", -2.0),
        ("10", 10.0),
    ],
)
def test_parse_number_accepts_formats(text: str, expected: float) -> None:
    assert parse_number(text, minimum=-5, maximum=10) == expected


@pytest.mark.parametrize(
    ("text", "decimals", "expected"),
    [
        ("2.5", 0, 3.0),
        ("2.49", 0, 2.0),
        ("1.005", 2, 1.01),
        ("1.2345", 3, 1.235),
        ("7", 2, 7.0),
    ],
)
def test_parse_number_rounds_to_decimals(text: str, decimals: int, expected: float) -> None:
    assert parse_number(text, minimum=0, maximum=10, decimals=decimals) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("\n", "empty"),
        ("正常", "number"),
        ("abc", "number"),
        ("3 5", "number"),
        ("3.5.5", "number"),
        ("1,000", "number"),  # thousands separator or decimal comma: ambiguous
        ("3度5", "number"),  # "度" is a temperature's decimal mark only
        ("。", "number"),
        ("11", "range"),
        ("-6", "range"),
        ("10.06", "range"),  # rounds to 10.1
        ("十一", "range"),
    ],
)
def test_parse_number_rejects(text: str, hint: str) -> None:
    with pytest.raises(AnswerError) as caught:
        parse_number(text, minimum=-5, maximum=10)
    assert caught.value.hint == hint


def test_parse_number_checks_range_after_rounding() -> None:
    assert parse_number("10.04", minimum=0, maximum=10) == 10.0


@pytest.mark.parametrize(
    ("minimum", "maximum", "decimals"),
    [(5, 1, 1), (0, 10, -1)],
)
def test_parse_number_rejects_bad_arguments(minimum: float, maximum: float, decimals: int) -> None:
    with pytest.raises(ValueError) as caught:
        parse_number("3", minimum=minimum, maximum=maximum, decimals=decimals)
    assert not isinstance(caught.value, AnswerError)


def test_answer_error_is_value_error_with_hint() -> None:
    error = AnswerError("range", "40 is outside 0..10")
    assert isinstance(error, ValueError)
    assert error.hint == "range"
    assert str(error) == "40 is outside 0..10"
    assert str(AnswerError("number")) == "number"


# --- parse_temperature ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("36.5", 36.5),
        ("36度5", 36.5),
        ("36 度 5", 36.5),
        ("三十六度五", 36.5),
        ("三十七点二", 37.2),
        ("三十六", 36.0),
        ("三十六度", 36.0),
        ("36.5℃", 36.5),
        ("36.5 ℃", 36.5),
        ("36.5度", 36.5),
        ("36.5摄氏度", 36.5),
        ("36.5°C", 36.5),
        ("36.5°c", 36.5),
        ("36.5°", 36.5),
        ("36.5c", 36.5),
        ("体温36.5", 36.5),
        ("体温：36.5", 36.5),
        ("体温:36.5度", 36.5),
        ("体温 36.5", 36.5),
        ("温度36.5", 36.5),
        ("体温是36.5度", 36.5),
        ("我今天体温是 36.5 ℃。", 36.5),
        ("早上测了36.5", 36.5),
        ("36,5", 36.5),
        ("36，5", 36.5),
        ("36。5", 36.5),
        ("36点5", 36.5),
        ("３６．５", 36.5),
        ("３６．５℃", 36.5),
        ("36度半", 36.5),
        ("三十六度半", 36.5),
        ("37", 37.0),
        ("37度", 37.0),
        ("36.55", 36.6),
        ("36.54", 36.5),
        ("36.5。", 36.5),
        ("36.5!", 36.5),
        ("36.5吧", 36.5),
        ("  36.5\n", 36.5),
        ("34", 34.0),
        ("43", 43.0),
    ],
)
def test_parse_temperature_accepts_formats(text: str, expected: float) -> None:
    assert parse_temperature(text) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("正常", "number"),
        ("体温正常", "number"),
        ("体温", "number"),
        ("度", "number"),
        ("没有发烧", "number"),
        ("36 5", "number"),
        ("36.5 37", "number"),
        ("36.5-37", "number"),
        ("三六点五", "number"),
        ("97.7°F", "number"),
        ("1,000", "number"),
        ("25", "range"),
        ("45", "range"),
        ("365", "range"),  # forgotten decimal point: asked again, never guessed
        ("33.9", "range"),
        ("43.1", "range"),
        ("二十五度", "range"),
        ("四十五", "range"),
        ("-36.5", "range"),
    ],
)
def test_parse_temperature_rejects(text: str, hint: str) -> None:
    with pytest.raises(AnswerError) as caught:
        parse_temperature(text)
    assert caught.value.hint == hint


def test_parse_temperature_uses_given_range() -> None:
    assert parse_temperature("25", minimum=20, maximum=30) == 25.0
    with pytest.raises(AnswerError) as caught:
        parse_temperature("38", minimum=35, maximum=37.5)
    assert caught.value.hint == "range"


# --- parse_yes_no ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "是",
        "有",
        "对",
        "嗯",
        "恩",
        "y",
        "Y",
        "yes",
        "YES",
        "Yes!",
        "是的",
        "是滴",
        "是啊",
        "是。",
        " 是 ",
        "有的",
        "对的",
        "对对对",
        "嗯嗯",
        "嗯，是的",
        "有点",
        "没错",
        "√",
    ],
)
def test_parse_yes_no_reads_yes(text: str) -> None:
    assert parse_yes_no(text) is True


@pytest.mark.parametrize(
    "text",
    [
        "否",
        "没有",
        "无",
        "不是",
        "没",
        "不",
        "n",
        "N",
        "no",
        "NO",
        "No.",
        "没有的",
        "没有。",
        "没有！",
        "没有呢",
        "没有哦",
        "没有没有",
        "不是的",
        "不对",
        "嗯，没有",
        "嗯没有",
        "没得",
        "木有",
        "否认",
        "  无  ",
        "×",
    ],
)
def test_parse_yes_no_reads_no(text: str) -> None:
    assert parse_yes_no(text) is False


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("1", "yes_no"),
        ("0", "yes_no"),
        ("2", "yes_no"),
        ("是不是", "yes_no"),
        ("有没有", "yes_no"),
        ("是，没有", "yes_no"),
        ("好的", "yes_no"),
        ("哦", "yes_no"),
        ("的", "yes_no"),
        ("。", "yes_no"),
        ("36.5", "yes_no"),
        ("maybe", "yes_no"),
        ("不知道", "yes_no"),
        ("yess", "yes_no"),
    ],
)
def test_parse_yes_no_rejects(text: str, hint: str) -> None:
    with pytest.raises(AnswerError) as caught:
        parse_yes_no(text)
    assert caught.value.hint == hint


# --- parse_choices --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", ["fever"]),
        ("1 3", ["fever", "sore_throat"]),
        ("1,3", ["fever", "sore_throat"]),
        ("1，3", ["fever", "sore_throat"]),
        ("1、3", ["fever", "sore_throat"]),
        ("1;3", ["fever", "sore_throat"]),
        ("1/3", ["fever", "sore_throat"]),
        ("1+3", ["fever", "sore_throat"]),
        ("1和3", ["fever", "sore_throat"]),
        ("选1和3", ["fever", "sore_throat"]),
        ("第2个", ["cough"]),
        ("2号", ["cough"]),
        ("13", ["fever", "sore_throat"]),  # fewer than ten options: digit by digit
        ("31", ["fever", "sore_throat"]),  # option order, not answer order
        ("①③", ["fever", "sore_throat"]),
        ("１，３", ["fever", "sore_throat"]),
        ("4 2 1", ["fever", "cough", "fatigue"]),
        ("1 1 1", ["fever"]),
        ("咳嗽", ["cough"]),
        ("咳嗽 乏力", ["cough", "fatigue"]),
        ("咳嗽、乏力", ["cough", "fatigue"]),
        ("咳嗽，乏力。", ["cough", "fatigue"]),
        ("咳嗽乏力", ["cough", "fatigue"]),
        ("乏力和咳嗽", ["cough", "fatigue"]),
        ("有点咳嗽还有乏力", ["cough", "fatigue"]),
        ("嗓子疼", ["sore_throat"]),
        ("喉咙痛", ["sore_throat"]),
        ("发烧，嗓子疼", ["fever", "sore_throat"]),
        ("没力气", ["fatigue"]),
        ("咳嗽 2", ["cough"]),
        ("1 咳嗽", ["fever", "cough"]),
        ("咳嗽 咳嗽", ["cough"]),
        ("没有", ["none"]),
        ("无", ["none"]),
        ("都没有", ["none"]),
        ("以上都没有", ["none"]),
        ("没有的", ["none"]),
        ("无。", ["none"]),
        ("5", ["none"]),
    ],
)
def test_parse_choices_multiple(text: str, expected: list[str]) -> None:
    assert parse_choices(text, SYMPTOMS, multiple=True, none_option="none") == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("0", "choice"),
        ("6", "choice"),
        ("1 6", "choice"),
        ("16", "choice"),
        ("10", "choice"),
        ("头痛", "choice"),
        ("咳嗽 头痛", "choice"),
        ("不咳嗽", "choice"),
        ("没有咳嗽", "choice"),  # none together with an option
        ("1 5", "choice"),
        ("15", "choice"),
        ("咳嗽，没有别的", "choice"),
        ("无 咳嗽", "choice"),
        ("和", "choice"),
        ("。", "choice"),
        ("36.5", "choice"),
    ],
)
def test_parse_choices_multiple_rejects(text: str, hint: str) -> None:
    with pytest.raises(AnswerError) as caught:
        parse_choices(text, SYMPTOMS, multiple=True, none_option="none")
    assert caught.value.hint == hint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", ["bus"]),
        ("公交", ["bus"]),
        ("公交车", ["bus"]),
        ("巴士", ["bus"]),
        ("开车", ["car"]),
        ("我开车", ["car"]),
        ("选3", ["car"]),
        ("2 2", ["bus"]),
        ("公交 2", ["bus"]),
    ],
)
def test_parse_choices_single(text: str, expected: list[str]) -> None:
    assert parse_choices(text, TRANSPORT, multiple=False) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("1 2", "choice"),
        ("12", "choice"),  # fewer than ten options: 1 and 2, too many for one choice
        ("步行，公交", "choice"),
        ("4", "choice"),
        ("飞机", "choice"),
        ("没有", "choice"),  # no none option on this question
        ("", "empty"),
    ],
)
def test_parse_choices_single_rejects(text: str, hint: str) -> None:
    with pytest.raises(AnswerError) as caught:
        parse_choices(text, TRANSPORT, multiple=False)
    assert caught.value.hint == hint


def test_parse_choices_matches_case_and_width() -> None:
    options = (Option("pcr", "PCR", ("核酸",)), Option("antigen", "Antigen"))
    assert parse_choices("pcr，ＡＮＴＩＧＥＮ", options, multiple=True) == ["pcr", "antigen"]


def test_parse_choices_single_with_none_option() -> None:
    assert parse_choices("没有", SYMPTOMS, multiple=False, none_option="none") == ["none"]
    assert parse_choices("2", SYMPTOMS, multiple=False, none_option="none") == ["cough"]


def test_parse_choices_own_label_wins_over_none_words() -> None:
    options = (Option("yes", "有"), Option("unsure", "不确定"), Option("no", "没有"))
    assert parse_choices("没有", options, multiple=False, none_option="no") == ["no"]
    assert parse_choices("无", options, multiple=False, none_option="no") == ["no"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", ["o1"]),
        ("12", ["o12"]),  # ten or more options: a run of digits is one number
        ("1 12", ["o1", "o12"]),
        ("10,11", ["o10", "o11"]),
        ("3、10", ["o3", "o10"]),
        ("选项11", ["o11"]),
    ],
)
def test_parse_choices_with_ten_or_more_options(text: str, expected: list[str]) -> None:
    assert parse_choices(text, MANY, multiple=True) == expected


@pytest.mark.parametrize("text", ["13", "0", "1 13", "123"])
def test_parse_choices_with_ten_or_more_options_rejects(text: str) -> None:
    with pytest.raises(AnswerError) as caught:
        parse_choices(text, MANY, multiple=True)
    assert caught.value.hint == "choice"


@pytest.mark.parametrize(
    ("options", "none_option"),
    [
        ((Option("a", "甲"), Option("a", "乙")), None),
        ((Option("a", "甲"), Option("b", "乙")), "c"),
        ((Option("a", "甲", ("同",)), Option("b", "乙", ("同",))), None),
    ],
)
def test_parse_choices_rejects_bad_options(
    options: tuple[Option, ...], none_option: str | None
) -> None:
    with pytest.raises(ValueError) as caught:
        parse_choices("1", options, multiple=True, none_option=none_option)
    assert not isinstance(caught.value, AnswerError)


def test_option_is_frozen() -> None:
    option = Option("cough", "咳嗽")
    assert option.aliases == ()
    with pytest.raises(AttributeError):
        option.label = "乏力"  # type: ignore[misc]
