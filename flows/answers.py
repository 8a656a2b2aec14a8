"""Parse residents' free-text answers to the daily health questionnaire.

Residents answer in Chinese chat, the way they type: "36度5", "三十六度五", "３６．５", "没有的",
"1、3", "嗓子疼和乏力". Every function here is pure: it either returns a clean value or raises
:class:`AnswerError`, whose ``hint`` names the template hint the flow shows before asking again.
Nothing that fails to parse is ever guessed at; an ambiguous answer is rejected, not stored.

Decisions worth knowing (each is pinned by a test in ``tests/test_answers.py``):

* Text is NFKC-normalised first, so full-width digits and punctuation ("３６．５", "３６，５"),
  "℃" and circled numbers ("①③") read like their ASCII forms.
* A decimal mark may be ".", "。" (what a Chinese IME types for "."), "点", or a comma ("36,5",
  "36，5"): a single-number answer cannot be a list, and European and IME habits write the decimal
  that way. A comma followed by exactly three digits ("1,000") is a thousands separator or a
  decimal, so it is rejected as ambiguous.
* Numbers are rounded half-up to ``decimals`` places, and the range is checked on the rounded
  value, the one that is stored.
* A string of Chinese digits without units ("三六", "两三") is not read digit by digit: "两三"
  means "two or three". Colloquial trailing units are understood: "一百五" is 150, "三万五" 35000.
* Yes/no accepts only words that mean yes or no; "1" and "0" are rejected, as are contradictions
  ("是，没有") and questions ("是不是").
* Choices by number: when there are fewer than ten options, a run of digits is read digit by digit
  ("13" is options 1 and 3), since no option has a two-digit number; with ten or more options a run
  of digits is one option number, and several must be separated ("1 13").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

__all__ = [
    "AnswerError",
    "AnswerHint",
    "Option",
    "chinese_to_number",
    "parse_choices",
    "parse_number",
    "parse_temperature",
    "parse_yes_no",
]

AnswerHint = Literal["number", "range", "yes_no", "choice", "empty"]


class AnswerError(ValueError):
    """An answer that cannot be accepted; the flow shows the hint's template and asks again.

    ``hint`` is a short machine code: ``"number"`` (not a number), ``"range"`` (a number outside
    the allowed range), ``"yes_no"`` (neither yes nor no), ``"choice"`` (not a valid selection) or
    ``"empty"`` (a blank message). The message is for logs, never shown to a resident.
    """

    def __init__(self, hint: AnswerHint, message: str = "") -> None:
        super().__init__(message or hint)
        self.hint: AnswerHint = hint


@dataclass(frozen=True)
class Option:
    """One answer to a choice question: a stable ``id``, the ``label`` shown, and other words.

    Residents may answer with the option's number (1-based position), its label or an alias.
    """

    id: str
    label: str
    aliases: tuple[str, ...] = ()


# --- shared text handling -------------------------------------------------------------------

# Single characters that soften an answer without changing it: "没有的", "36.5吧", "是啊".
_PARTICLES = frozenset("的啊呀呢哦噢喔吧啦了哈嘛滴哒哟呐")


def _normalize(text: str) -> str:
    """NFKC-fold, lower-case, collapse runs of whitespace to one space and trim."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return " ".join(folded.split())


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def strip_trailing_punctuation(text: str) -> str:
    """``text`` without the whitespace and punctuation it ends with: "满意！" and "5分。" (the
    sentence end a keyboard or speech recognition adds) read as "满意" and "5分"."""
    end = len(text)
    while end and (text[end - 1].isspace() or _is_punctuation(text[end - 1])):
        end -= 1
    return text[:end]


def _strip_number_edges(text: str) -> str:
    """Trim whitespace, punctuation and particles around a number, keeping a leading sign."""
    start, end = 0, len(text)
    while start < end and (
        text[start].isspace() or (_is_punctuation(text[start]) and text[start] != "-")
    ):
        start += 1
    while start < end and (
        text[end - 1].isspace() or _is_punctuation(text[end - 1]) or text[end - 1] in _PARTICLES
    ):
        end -= 1
    return text[start:end]


# --- Chinese numerals -----------------------------------------------------------------------

_CHINESE_DIGITS: Mapping[str, int] = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "幺": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_ZEROS = frozenset("零〇")
_SMALL_UNITS: Mapping[str, int] = {"十": 10, "百": 100, "千": 1000}
# Financial (大写) and traditional forms, folded into the everyday ones.
_CHINESE_VARIANTS = str.maketrans(
    "壹贰貳叁參肆伍陆陸柒捌玖拾佰仟兩萬點", "一二二三三四五六六七八九十百千两万点"
)


def _parse_chinese_section(text: str) -> int | None:
    """Read a Chinese integer below 10000 ("三十六", "一百零五", "一百五"), or None."""
    if not text:
        return None
    if len(text) == 1 and text in _CHINESE_DIGITS:
        return _CHINESE_DIGITS[text]
    total = 0
    pending: int | None = None
    last_unit: int | None = None
    zero_seen = False
    for index, char in enumerate(text):
        if char in _ZEROS:
            # A zero only fills a gap after a unit ("一百零五"); "三零" is not a number.
            if pending is not None or last_unit is None:
                return None
            zero_seen = True
        elif char in _CHINESE_DIGITS:
            if pending is not None:
                return None  # "三六", "两三": digits in a row are a range, not a number
            pending = _CHINESE_DIGITS[char]
        elif char in _SMALL_UNITS:
            unit = _SMALL_UNITS[char]
            if last_unit is not None and unit >= last_unit:
                return None
            if pending is None:
                # "十五" and "一千零十" leave the one before 十 unsaid.
                if unit == 10 and (index == 0 or zero_seen):
                    pending = 1
                else:
                    return None
            total += pending * unit
            pending = None
            last_unit = unit
            zero_seen = False
        else:
            return None
    if pending is not None:
        if last_unit is not None and last_unit >= 100 and not zero_seen:
            # Colloquial: "一百五" is 150 and "两千三" is 2300.
            total += pending * last_unit // 10
        else:
            total += pending
    return total


def _parse_chinese_integer(text: str) -> int | None:
    """Read a Chinese integer below 100 million, or None."""
    if "万" not in text:
        return _parse_chinese_section(text)
    high_text, _, low_text = text.partition("万")
    high = _parse_chinese_section(high_text)
    if high is None or "万" in low_text:
        return None
    if not low_text:
        return high * 10000
    if len(low_text) == 1 and low_text in _CHINESE_DIGITS and low_text not in _ZEROS:
        return high * 10000 + _CHINESE_DIGITS[low_text] * 1000  # "三万五" is 35000
    low = _parse_chinese_section(low_text.lstrip("零〇"))
    return None if low is None else high * 10000 + low


def _chinese_to_decimal(text: str) -> Decimal | None:
    """Exact form of :func:`chinese_to_number`."""
    text = unicodedata.normalize("NFKC", text).strip().translate(_CHINESE_VARIANTS)
    negative = text.startswith(("负", "-"))
    if negative:
        text = text[1:]
    if sum(text.count(mark) for mark in "点度") > 1:
        return None
    match = re.fullmatch(r"(.+?)(?:([点度])(.*))?", text)
    if match is None:
        return None
    integer_text, mark, fraction_text = match.groups()
    integer = _parse_chinese_integer(integer_text)
    if integer is None:
        return None
    value = Decimal(integer)
    if fraction_text == "半":
        value += Decimal("0.5")
    elif fraction_text:
        if any(char not in _CHINESE_DIGITS or char in "两幺" for char in fraction_text):
            return None
        digits = "".join(str(_CHINESE_DIGITS[char]) for char in fraction_text)
        value += Decimal("0." + digits)
    elif mark == "点":
        return None  # "三十七点" is unfinished; "三十六度" is a whole number of degrees
    return -value if negative else value


def chinese_to_number(text: str) -> float | None:
    """Read a number written in Chinese numerals, or return None if ``text`` is not one.

    "三十六度五" -> 36.5, "三十七点二" -> 37.2, "三十六" -> 36.0, "三十六度半" -> 36.5,
    "一百零五" -> 105.0, "一百五" -> 150.0, "负五" -> -5.0. "度" and "点" mark the decimal
    part, which is read digit by digit. Arabic digits ("36") and digit strings without units
    ("三六", which in speech means "three or six") are not Chinese numbers and give None.
    """
    value = _chinese_to_decimal(text)
    return None if value is None else float(value)


# --- numbers and temperatures ---------------------------------------------------------------

_ARABIC_NUMBER = re.compile(r"([+-]?)([0-9]+)(?:([.,。点])([0-9]+))?")


def _read_number(core: str) -> Decimal | None:
    """Read one bare number, Arabic ("36.5", "36,5", "36点5") or Chinese ("三十六点五")."""
    match = _ARABIC_NUMBER.fullmatch(core)
    if match is None:
        return _chinese_to_decimal(core)
    sign, integer, mark, fraction = match.groups()
    if mark == "," and len(fraction) == 3:
        return None  # "1,000": a thousands separator or a decimal comma; do not guess
    value = Decimal(integer + ("." + fraction if fraction else ""))
    return -value if sign == "-" else value


def _number_in_range(core: str, minimum: float, maximum: float, decimals: int) -> float:
    if minimum > maximum:
        raise ValueError(f"minimum {minimum} is greater than maximum {maximum}")
    if decimals < 0:
        raise ValueError(f"decimals must not be negative, got {decimals}")
    value = _read_number(core)
    if value is None:
        raise AnswerError("number", f"not a number: {core!r}")
    rounded = value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    if not Decimal(str(minimum)) <= rounded <= Decimal(str(maximum)):
        raise AnswerError("range", f"{rounded} is outside {minimum}..{maximum}")
    return float(rounded)


def parse_number(text: str, *, minimum: float, maximum: float, decimals: int = 1) -> float:
    """Read one number from a chat answer and check it lies in ``[minimum, maximum]``.

    Accepts Arabic digits in any width with ".", "。", "点" or a comma as the decimal mark
    ("36.5", "３６．５", "36,5", "36点5") and Chinese numerals ("三十六点五"), with surrounding
    whitespace, punctuation and particles ("36.5。", "36.5吧"). The value is rounded half-up to
    ``decimals`` places before the range check.

    Raises:
        AnswerError: hint ``"empty"`` for a blank message, ``"number"`` when the text is not
            exactly one number, ``"range"`` when the rounded number is out of range.
        ValueError: when ``minimum > maximum`` or ``decimals < 0`` (a programming error).
    """
    if not text.strip():
        raise AnswerError("empty", "blank answer")
    return _number_in_range(_strip_number_edges(_normalize(text)), minimum, maximum, decimals)


# Words around a temperature that carry no value: "体温是36.5", "我今天测了36.5度".
_TEMPERATURE_PREFIX = re.compile(
    r"^(?:今天|今日|早上|早晨|上午|中午|下午|晚上|现在|刚才|刚刚|我的|我|测量的|测量|测得|测的"
    r"|测了|测|量了|量的|量得|量|体温|温度|是|为|:|=)\s*"
)
_TEMPERATURE_UNIT = re.compile(r"\s*(?:摄氏度|°c|℃|°|度|c)$")


def parse_temperature(text: str, *, minimum: float = 34.0, maximum: float = 43.0) -> float:
    """Read a body temperature in °C, to one decimal place.

    Accepts everything :func:`parse_number` does, plus a label before the number ("体温36.5",
    "今天体温是 36.5"), a unit after it ("36.5℃", "36.5°C", "36.5度", "36.5摄氏度") and "度" as
    the decimal mark ("36度5", "36度半", "三十六度五").

    Raises:
        AnswerError: hint ``"empty"``, ``"number"`` ("正常" is not a number) or ``"range"``
            (e.g. 25 or 45, or "365" with the decimal point forgotten; never guessed at).
    """
    if not text.strip():
        raise AnswerError("empty", "blank answer")
    core = _normalize(text)
    previous = None
    while core != previous:
        previous = core
        core = _strip_number_edges(core)
        core = _TEMPERATURE_PREFIX.sub("", core, count=1)
        core = _TEMPERATURE_UNIT.sub("", core)
    core = re.sub(r"^([0-9]+)\s*度\s*([0-9]+)$", r"\1.\2", core)
    core = re.sub(r"^([0-9]+)\s*度半$", r"\1.5", core)
    if not core:
        raise AnswerError("number", f"no number in {text!r}")  # "体温", "度": not blank
    return parse_number(core, minimum=minimum, maximum=maximum, decimals=1)


# --- yes / no -------------------------------------------------------------------------------

_YES_WORDS = frozenset(
    {"是", "有", "对", "嗯", "恩", "有点", "有一点", "没错", "对头", "y", "yes", "yeah", "yep", "√"}
)
_NO_WORDS = frozenset(
    {
        "否",
        "无",
        "没",
        "没有",
        "没得",
        "木有",
        "冇",
        "不",
        "不是",
        "不对",
        "未",
        "否认",
        "n",
        "no",
        "nope",
        "×",
    }
)
_INTERJECTIONS = "嗯恩哦噢喔呃额"


def _yes_no_word(word: str) -> bool | None:
    if word in _YES_WORDS:
        return True
    if word in _NO_WORDS:
        return False
    # "嗯嗯", "对对对", "没有没有": a repeated word means the word.
    for vocabulary, meaning in ((_YES_WORDS, True), (_NO_WORDS, False)):
        for known in vocabulary:
            repeats, remainder = divmod(len(word), len(known))
            if remainder == 0 and repeats > 1 and word == known * repeats:
                return meaning
    return None


def parse_yes_no(text: str) -> bool:
    """Read a yes/no answer: "是", "有", "对", "嗯", "y", "yes" are yes; "否", "没有", "无",
    "不是", "没", "不", "n", "no" are no.

    Whitespace and punctuation anywhere, trailing particles ("是的", "没有的", "没有呢") and a
    leading interjection ("嗯，没有") are ignored. Digits ("1", "0") are ambiguous and rejected.

    Raises:
        AnswerError: hint ``"empty"`` for a blank message, ``"yes_no"`` for anything else that is
            not clearly yes or no.
    """
    if not text.strip():
        raise AnswerError("empty", "blank answer")
    word = "".join(
        char for char in _normalize(text) if not char.isspace() and not _is_punctuation(char)
    )
    candidates = [word]
    while word and word[-1] in _PARTICLES:
        word = word[:-1]
        candidates.append(word)
    for candidate in list(candidates):
        stripped = candidate.lstrip(_INTERJECTIONS)
        if stripped and stripped != candidate:
            candidates.append(stripped)
    for candidate in candidates:
        meaning = _yes_no_word(candidate)
        if meaning is not None:
            return meaning
    raise AnswerError("yes_no", f"neither yes nor no: {text!r}")


# --- choices --------------------------------------------------------------------------------

# Words that select the none option when the question has one: "没有", "无", "都没有".
_NONE_WORDS = (
    "无",
    "没",
    "没有",
    "没得",
    "木有",
    "都没有",
    "均无",
    "都无",
    "全无",
    "以上都没有",
    "以上均无",
    "以上都无",
    "都不是",
    "以上都不是",
    "无症状",
    "没有症状",
    "都没",
)
# Words between choices that select nothing: "选1和3", "有点咳嗽还有乏力", "第2个".
_CHOICE_FILLERS = (
    "还有",
    "以及",
    "并且",
    "有点",
    "有些",
    "一点",
    "稍微",
    "轻微",
    "比较",
    "以上",
    "和",
    "跟",
    "及",
    "与",
    "并",
    "也",
    "有",
    "我",
    "都",
    "选",
    "第",
    "个",
    "号",
    "项",
    *sorted(_PARTICLES),
)
_CHOICE_SEPARATORS = frozenset("+/|&~")


def _is_choice_separator(char: str) -> bool:
    return char.isspace() or _is_punctuation(char) or char in _CHOICE_SEPARATORS


def _choice_terms(
    options: Sequence[Option], none_option: str | None
) -> tuple[tuple[str, int], ...]:
    """Map every normalised label and alias to an option index, longest first."""
    ids = [option.id for option in options]
    if len(set(ids)) != len(ids):
        raise ValueError(f"option ids are not unique: {ids}")
    if none_option is not None and none_option not in ids:
        raise ValueError(f"none_option {none_option!r} is not one of the options {ids}")
    terms: dict[str, int] = {}
    for index, option in enumerate(options):
        for word in (option.label, *option.aliases):
            key = _normalize(word)
            if not key:
                continue
            if terms.get(key, index) != index:
                raise ValueError(f"{word!r} names two options: {ids[terms[key]]!r}, {option.id!r}")
            terms[key] = index
    if none_option is not None:
        none_index = ids.index(none_option)
        for word in _NONE_WORDS:
            terms.setdefault(word, none_index)  # an option's own label wins
    return tuple(sorted(terms.items(), key=lambda item: -len(item[0])))


def _segment_choices(
    text: str, terms: tuple[tuple[str, int], ...], option_count: int
) -> list[int] | None:
    """Split ``text`` into option terms, option numbers, separators and fillers.

    Returns the 0-based option indexes chosen, in the order given, or None if some part of the
    text is none of these. Longer terms are tried first; the first complete reading wins.
    """
    failed: set[int] = set()

    def numbers_at(start: int) -> Iterator[tuple[int, list[int] | None]]:
        end = start
        while end < len(text) and text[end] in "0123456789":
            end += 1
        if end == start:
            return
        digits = text[start:end]
        # Fewer than ten options: no option has a two-digit number, so "13" is 1 and 3.
        numbers = [int(d) for d in digits] if option_count < 10 else [int(digits)]
        indexes = [n - 1 for n in numbers] if all(1 <= n <= option_count for n in numbers) else None
        yield end, indexes

    def walk(start: int) -> list[int] | None:
        if start == len(text):
            return []
        if start in failed:
            return None
        steps: list[tuple[int, list[int] | None]] = []
        if _is_choice_separator(text[start]):
            steps.append((start + 1, []))
        steps.extend(
            (start + len(key), [index]) for key, index in terms if text.startswith(key, start)
        )
        steps.extend(numbers_at(start))
        steps.extend(
            (start + len(filler), [])
            for filler in _CHOICE_FILLERS
            if text.startswith(filler, start)
        )
        for end, chosen in steps:
            if chosen is None:
                continue  # a number with no option: the whole answer is unreadable
            rest = walk(end)
            if rest is not None:
                return chosen + rest
        failed.add(start)
        return None

    return walk(0)


def parse_choices(
    text: str,
    options: Sequence[Option],
    *,
    multiple: bool,
    none_option: str | None = None,
) -> list[str]:
    """Read which options a resident chose; return their ids, deduplicated, in option order.

    Options may be named by 1-based number ("1 3", "1,3", "1，3", "1、3", "①③", "选1和3"), by
    label or alias ("咳嗽 乏力", "咳嗽、乏力", "嗓子疼和乏力"), or both. With fewer than ten
    options a run of digits is read digit by digit ("13" is 1 and 3); with ten or more it is one
    number. When ``none_option`` (an option id) is given, "没有", "无", "都没有" and the like select
    it, as do its own number and label; it cannot be combined with other options.

    Raises:
        AnswerError: hint ``"empty"`` for a blank message; ``"choice"`` for an unknown word or
            out-of-range number, several options to a single-choice question, or the none option
            together with others.
        ValueError: for duplicate option ids, a ``none_option`` that is not an option id, or a
            word naming two options (programming errors).
    """
    terms = _choice_terms(options, none_option)
    if not text.strip():
        raise AnswerError("empty", "blank answer")
    chosen = _segment_choices(_normalize(text), terms, len(options))
    if not chosen:
        raise AnswerError("choice", f"no option recognised in {text!r}")
    indexes = sorted(set(chosen))
    ids = [options[index].id for index in indexes]
    if none_option is not None and none_option in ids and len(ids) > 1:
        raise AnswerError("choice", f"{none_option!r} chosen together with other options: {ids}")
    if not multiple and len(ids) > 1:
        raise AnswerError("choice", f"several options for a single-choice question: {ids}")
    return ids
