"""The ``checkin`` section of config.yaml: questionnaire, risk rules, alerts, schedule, quarantine.

The questionnaire is data: a deployment changes, adds or removes questions here (and the prompt
templates they name) without touching code.  Risk rules are plain conditions on answers, so a
warden can read why a resident was classified the way they were.
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from flows.texts import TEMPLATE_ROOT

RiskLevel = Literal["low", "moderate", "high"]
RISK_RANK: dict[str, int] = {"low": 0, "moderate": 1, "high": 2}
QuestionType = Literal["number", "yes_no", "single", "multiple", "text"]
TEMPERATURE_UNITS = frozenset({"℃", "°C"})
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_ID = r"^[a-z][a-z0-9_]{0,31}$"


def _clock(value: Any) -> time:
    # YAML reads an unquoted 10:00 as the integer 600 (base 60): refuse it rather than guess.
    if isinstance(value, time):
        return value
    if isinstance(value, str) and (match := _CLOCK.match(value.strip())):
        return time(int(match.group(1)), int(match.group(2)))
    raise ValueError(f'write times as "HH:MM" in quotes, got {value!r}')


Clock = Annotated[time, BeforeValidator(_clock)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class OptionConfig(_Section):
    id: str = Field(pattern=_ID)
    label: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    """Other words residents use for this option ("发烧" for "发热")."""


class QuestionConfig(_Section):
    id: str = Field(pattern=_ID)
    label: str = Field(min_length=1)
    """Short name shown to staff next to the answer ("体温")."""
    prompt: str = Field(min_length=1)
    """Template (under templates/<locale>/) that asks the question."""
    type: QuestionType
    min: float | None = None
    max: float | None = None
    decimals: int = Field(1, ge=0, le=3)
    unit: str = ""
    """For numbers; "℃" reads body temperatures ("36度5", "体温36.5℃")."""
    options: tuple[OptionConfig, ...] = ()
    none_option: str | None = None
    """For multiple choice: the option meaning "none of these" ("没有", "无" select it)."""
    skippable: bool = False
    max_length: int = Field(200, ge=1, le=2000)
    """For free text: longer answers are asked again (collect the minimum)."""

    @model_validator(mode="after")
    def _consistent(self) -> QuestionConfig:
        # A typo here should stop start-up, not the first resident's check-in.
        if not (TEMPLATE_ROOT / "zh_CN" / f"{self.prompt}.j2").is_file():
            raise ValueError(
                f"question {self.id}: no prompt template {self.prompt!r} under templates/zh_CN/"
            )
        if self.type == "number" and (self.min is None or self.max is None or self.min > self.max):
            raise ValueError(f"question {self.id}: a number needs min <= max")
        if self.type in ("single", "multiple"):
            if len(self.options) < 2:
                raise ValueError(f"question {self.id}: a choice needs at least two options")
            ids = [o.id for o in self.options]
            if len(set(ids)) != len(ids):
                raise ValueError(f"question {self.id}: option ids are not unique")
        elif self.options:
            raise ValueError(f"question {self.id}: options only go with single or multiple")
        if self.none_option is not None and (
            self.type != "multiple" or self.none_option not in {o.id for o in self.options}
        ):
            raise ValueError(f"question {self.id}: none_option must name one of its options")
        return self

    @property
    def is_temperature(self) -> bool:
        return self.type == "number" and self.unit in TEMPERATURE_UNITS


class ConditionConfig(_Section):
    """One test on one answer; exactly one operator is set.  An unanswered question never holds."""

    question: str
    at_least: float | None = None
    at_most: float | None = None
    equals: bool | str | None = None
    """yes/no: true or false; single choice: an option id."""
    any_of: tuple[str, ...] = ()
    """Choices: any of these option ids was chosen."""
    count_at_least: int | None = Field(None, ge=1)
    """Multiple choice: at least this many options chosen (the none option never counts)."""

    @model_validator(mode="after")
    def _one_operator(self) -> ConditionConfig:
        given = [
            self.at_least is not None,
            self.at_most is not None,
            self.equals is not None,
            bool(self.any_of),
            self.count_at_least is not None,
        ]
        if sum(given) != 1:
            raise ValueError(
                f"condition on {self.question}: set exactly one of at_least, at_most, equals, "
                "any_of, count_at_least"
            )
        return self


class RuleConfig(_Section):
    level: Literal["moderate", "high"]
    label: str = Field(min_length=1)
    """The reason staff see ("发热（≥37.3℃）")."""
    when: tuple[ConditionConfig, ...] = Field(min_length=1)
    """All conditions must hold."""


class RiskConfig(_Section):
    """Answers are low risk unless a rule matches; the highest matching rule wins."""

    rules: tuple[RuleConfig, ...] = ()


class AlertConfig(_Section):
    levels: tuple[Literal["moderate", "high"], ...] = ("moderate", "high")
    """Risk levels that alert the grid's warden and the community doctor."""
    escalate_after_minutes: int = Field(60, ge=1)
    """An alert nobody acknowledged in this time goes to the admins one level up."""
    staff_group: bool = True
    """Also post alerts to the grid's staff group chat (a chat group with purpose "staff")."""
    urgent_levels: tuple[Literal["moderate", "high"], ...] = ("high",)
    """Alerts of these levels are pushed during quiet hours too; the others wait for morning."""


class ScheduleConfig(_Section):
    """Default schedule; a region overrides any key in ``settings.checkin`` (grid over community
    over street ...)."""

    prompt_at: Clock = time(8, 0)
    reminders: tuple[Clock, ...] = (time(10, 0), time(14, 0))
    """Reminders go only to those who have not checked in (completely) that day."""
    quiet_hours: tuple[Clock, Clock] = (time(22, 0), time(7, 0))
    """No pushes from the first time to the second (may wrap midnight); equal times: none."""
    summary_at: Clock = time(20, 0)

    @model_validator(mode="after")
    def _reminders_after_prompt(self) -> ScheduleConfig:
        if list(self.reminders) != sorted(set(self.reminders)):
            raise ValueError("reminders must be distinct and in order")
        if any(r <= self.prompt_at for r in self.reminders):
            raise ValueError("reminders must come after prompt_at")
        return self


class SlotConfig(_Section):
    at: Clock
    questions: tuple[str, ...] = ()
    """Question ids asked at this slot; empty: the whole questionnaire."""


class QuarantineConfig(_Section):
    default_days: int = Field(14, ge=1, le=60)
    slots: tuple[SlotConfig, ...] = (
        SlotConfig(at=time(8, 0)),
        SlotConfig(at=time(15, 0), questions=("temperature",)),
    )
    """Check-ins each day of the period, at these local times."""
    missed_after_minutes: int = Field(120, ge=1)
    """A slot still unanswered this long after its time alerts the warden."""
    release_at: Clock = time(9, 0)
    """On the day after the period, when resident and warden are told it is over."""

    @model_validator(mode="after")
    def _slots_in_order(self) -> QuarantineConfig:
        times = [slot.at for slot in self.slots]
        if not times or times != sorted(set(times)):
            raise ValueError("quarantine slots must be at least one, distinct and in order")
        return self


def _option(id: str, label: str, *aliases: str) -> OptionConfig:
    return OptionConfig(id=id, label=label, aliases=aliases)


DEFAULT_QUESTIONS = (
    QuestionConfig(
        id="temperature",
        label="体温",
        prompt="checkin/q_temperature",
        type="number",
        min=34.0,
        max=43.0,
        unit="℃",
    ),
    QuestionConfig(
        id="symptoms",
        label="症状",
        prompt="checkin/q_symptoms",
        type="multiple",
        options=(
            _option("fever", "发热", "发烧", "低烧", "高烧"),
            _option("cough", "咳嗽", "干咳"),
            _option("sore_throat", "咽痛", "嗓子疼", "喉咙痛", "咽喉痛"),
            _option("fatigue", "乏力", "没力气", "浑身无力"),
            _option("taste_smell", "味觉或嗅觉减退", "没味觉", "没嗅觉", "闻不到", "尝不出"),
            _option("breath", "呼吸困难", "气短", "喘不上气", "胸闷"),
            _option("none", "以上都没有"),
        ),
        none_option="none",
    ),
    QuestionConfig(
        id="contact",
        label="14天内接触确诊或疑似病例",
        prompt="checkin/q_contact",
        type="yes_no",
    ),
    QuestionConfig(
        id="travel",
        label="14天内离开本市",
        prompt="checkin/q_travel",
        type="yes_no",
    ),
    QuestionConfig(
        id="status",
        label="目前状态",
        prompt="checkin/q_status",
        type="single",
        options=(
            _option("home", "在家", "居家", "家里"),
            _option("work", "在单位上班", "上班", "单位", "工作"),
            _option("quarantine", "隔离中", "隔离", "集中隔离", "居家隔离"),
        ),
    ),
)


def _when(question: str, **test: Any) -> ConditionConfig:
    return ConditionConfig(question=question, **test)


DEFAULT_RISK = RiskConfig(
    rules=(
        RuleConfig(
            level="moderate", label="发热（≥37.3℃）", when=(_when("temperature", at_least=37.3),)
        ),
        RuleConfig(
            level="moderate", label="两项及以上症状", when=(_when("symptoms", count_at_least=2),)
        ),
        RuleConfig(
            level="high",
            label="有症状且有确诊或疑似病例接触史",
            when=(_when("symptoms", count_at_least=1), _when("contact", equals=True)),
        ),
        RuleConfig(
            level="high",
            label="发热且有确诊或疑似病例接触史",
            when=(_when("temperature", at_least=37.3), _when("contact", equals=True)),
        ),
        RuleConfig(
            level="high", label="三项及以上症状", when=(_when("symptoms", count_at_least=3),)
        ),
    )
)


class CheckinConfig(_Section):
    """Daily health check-in (issue 4)."""

    enabled: bool = True
    questions: tuple[QuestionConfig, ...] = Field(DEFAULT_QUESTIONS, min_length=1)
    max_reasks: int = Field(3, ge=1, le=10)
    """Unreadable answers to one question before the check-in is saved as incomplete."""
    risk: RiskConfig = DEFAULT_RISK
    alerts: AlertConfig = AlertConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    page_size: int = Field(20, ge=5, le=100)
    """Names per page of the warden's "未打卡" list."""
    summary_max_names: int = Field(30, ge=0, le=200)
    """Names listed in the warden's daily summary (the rest are counted)."""

    @model_validator(mode="after")
    def _references_resolve(self) -> CheckinConfig:
        by_id = {q.id: q for q in self.questions}
        if len(by_id) != len(self.questions):
            raise ValueError("question ids are not unique")
        for rule in self.risk.rules:
            for cond in rule.when:
                _check_condition(cond, by_id.get(cond.question))
        for slot in self.quarantine.slots:
            unknown = set(slot.questions) - by_id.keys()
            if unknown:
                raise ValueError(f"quarantine slot {slot.at}: unknown questions {sorted(unknown)}")
        return self

    def question(self, question_id: str) -> QuestionConfig:
        return next(q for q in self.questions if q.id == question_id)


def _check_condition(cond: ConditionConfig, question: QuestionConfig | None) -> None:
    if question is None:
        raise ValueError(f"risk rule names an unknown question {cond.question!r}")
    kind = question.type
    option_ids = {o.id for o in question.options}
    if (cond.at_least is not None or cond.at_most is not None) and kind != "number":
        raise ValueError(f"{cond.question}: at_least/at_most need a number question")
    if cond.count_at_least is not None and kind != "multiple":
        raise ValueError(f"{cond.question}: count_at_least needs a multiple-choice question")
    if cond.any_of and (kind not in ("single", "multiple") or set(cond.any_of) - option_ids):
        raise ValueError(f"{cond.question}: any_of must name options of a choice question")
    if cond.equals is not None:
        if kind == "yes_no" and not isinstance(cond.equals, bool):
            raise ValueError(f"{cond.question}: equals must be true or false")
        if kind == "single" and cond.equals not in option_ids:
            raise ValueError(f"{cond.question}: equals must be one of its option ids")
        if kind not in ("yes_no", "single"):
            raise ValueError(f"{cond.question}: equals needs a yes/no or single-choice question")
