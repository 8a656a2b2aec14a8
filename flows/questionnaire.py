"""Reading one answer to a configured question, and turning a set of answers into a risk level.

Parsing itself lives in :mod:`flows.answers`; this module only picks the parser a question's
type calls for.  Risk rules are evaluated exactly as configured: no hidden weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flows.answers import AnswerError, Option, parse_choices, parse_number, parse_temperature
from flows.answers import parse_yes_no as _parse_yes_no
from flows.checkin_config import RISK_RANK, ConditionConfig, QuestionConfig, RiskConfig

Answer = float | bool | str | list[str] | None
"""number -> float, yes_no -> bool, single -> option id, multiple -> option ids, text -> str;
``None``: skipped."""


class Unreadable(ValueError):
    """An answer that cannot be accepted; ``hint`` names the hint template (``hint_<hint>``):
    the hints of :class:`flows.answers.AnswerError` plus ``too_long`` for free text."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint


def options_of(question: QuestionConfig) -> tuple[Option, ...]:
    return tuple(Option(o.id, o.label, o.aliases) for o in question.options)


def parse_answer(question: QuestionConfig, text: str) -> Answer:
    """Read ``text`` as an answer to ``question``; raises :class:`Unreadable` when it cannot."""
    try:
        return _parse(question, text)
    except AnswerError as exc:
        raise Unreadable(exc.hint) from None


def _parse(question: QuestionConfig, text: str) -> Answer:
    if question.type == "number":
        assert question.min is not None and question.max is not None
        if question.is_temperature:
            return parse_temperature(text, minimum=question.min, maximum=question.max)
        return parse_number(
            text, minimum=question.min, maximum=question.max, decimals=question.decimals
        )
    if question.type == "yes_no":
        return _parse_yes_no(text)
    if question.type in ("single", "multiple"):
        chosen = parse_choices(
            text,
            options_of(question),
            multiple=question.type == "multiple",
            none_option=question.none_option,
        )
        return chosen if question.type == "multiple" else chosen[0]
    cleaned = " ".join(text.split())
    if not cleaned:
        raise Unreadable("empty")
    if len(cleaned) > question.max_length:
        raise Unreadable("too_long")
    return cleaned


@dataclass(frozen=True, slots=True)
class Risk:
    level: str
    reasons: tuple[str, ...]


def evaluate_risk(
    risk: RiskConfig, questions: dict[str, QuestionConfig], answers: dict[str, Any]
) -> Risk:
    """Apply every rule; the level is the highest of the rules that hold (``low`` if none)."""
    level = "low"
    reasons: list[str] = []
    for rule in risk.rules:
        if all(_holds(c, questions[c.question], answers.get(c.question)) for c in rule.when):
            reasons.append(rule.label)
            if RISK_RANK[rule.level] > RISK_RANK[level]:
                level = rule.level
    return Risk(level, tuple(reasons))


def _holds(cond: ConditionConfig, question: QuestionConfig, value: Any) -> bool:
    if value is None:
        return False
    if cond.at_least is not None:
        return float(value) >= cond.at_least
    if cond.at_most is not None:
        return float(value) <= cond.at_most
    if cond.equals is not None:
        return bool(value == cond.equals)
    chosen = value if isinstance(value, list) else [value]
    if cond.any_of:
        return any(option in chosen for option in cond.any_of)
    assert cond.count_at_least is not None
    return len([c for c in chosen if c != question.none_option]) >= cond.count_at_least
