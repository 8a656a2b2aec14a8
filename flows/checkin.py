"""The daily health check-in conversation, for oneself ("打卡") or a household member
("帮家人打卡").

Questions come from ``checkin.questions`` in config; answers are read by
:mod:`flows.answers` through :func:`flows.questionnaire.parse_answer`.  An unreadable answer
gets a hint and the question again; after ``checkin.max_reasks`` misses on one question the
answers so far are saved as an incomplete record for the warden to follow up.  "取消" stops
with nothing stored (the engine's cancel), "重新打卡" starts the questions over, and answering
again the same day replaces that day's record, keeping the old one as history.

People under quarantine answer the questions of their current slot (by default the whole
questionnaire in the morning, the temperature in the afternoon).
"""

from __future__ import annotations

import enum
import unicodedata
from collections import Counter
from datetime import date, datetime, time
from typing import Any

from flows.answers import AnswerError, Option, parse_choices
from flows.checkin_alerts import AlertSubject, answer_items, raise_alert
from flows.checkin_config import CheckinConfig, QuarantineConfig
from flows.checkin_push import local_day, local_time
from flows.context import Context
from flows.engine import Flow, Reask
from flows.questionnaire import Unreadable, evaluate_risk, parse_answer
from storage import checkin as store
from storage import repo
from storage.checkin_models import CheckinStatus

RESTART_WORDS = frozenset({"重新打卡", "打卡", "重新开始", "重来"})
SKIP_WORDS = frozenset({"跳过", "不填", "略过", "不想回答"})
DONE_WORDS = frozenset({"完成", "好了", "没有了", "结束", "就这些", "不用了"})


def _folded(name: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", name).lower().split())


def quarantine_slot(quarantine: QuarantineConfig, clock: time) -> int:
    """The slot a check-in made at ``clock`` answers: the last one already begun (the first
    before it)."""
    slot = 0
    for index, s in enumerate(quarantine.slots):
        if s.at <= clock:
            slot = index
    return slot


class Checkin(Flow):
    name = "checkin"
    # The configured ``checkin.max_reasks`` limits re-asks; it is applied in ``step`` because an
    # exhausted question must save the answers so far, which the engine's give_up no longer has.
    max_retries = 100

    class State(enum.StrEnum):
        MEMBER = "member"
        QUESTION = "question"

    # -- the engine's interface ---------------------------------------------------------------

    async def begin(self, ctx: Context, **params: Any) -> State | None:
        assert ctx.person is not None
        cfg: CheckinConfig = ctx.settings.checkin
        day = local_day(ctx.now, ctx.settings.tz)
        data = ctx.conversation.data
        data.update(reporter=ctx.person.id, day=day.isoformat(), household=False, reported=[])
        if params.get("household"):
            data["household"] = True
            members = await self._members(ctx)
            if ctx.person.household_id is None or not members:
                ctx.say("checkin/no_household")
                return None
            ctx.say("checkin/household_intro")
            return self.State.MEMBER
        await self._start_subject(ctx, cfg, ctx.person.id, ctx.person.name)
        return self.State.QUESTION

    async def ask(self, ctx: Context, state: enum.StrEnum) -> None:
        cfg: CheckinConfig = ctx.settings.checkin
        data = ctx.conversation.data
        if state == self.State.MEMBER:
            ctx.say("checkin/choose_member", members=await self._members(ctx))
            return
        question = cfg.question(data["qids"][data["index"]])
        ctx.say(
            question.prompt,
            question=question,
            number=data["index"] + 1,
            total=len(data["qids"]),
            member=data["subject_name"] if data["subject"] != data["reporter"] else None,
        )

    async def step(self, ctx: Context, state: enum.StrEnum, text: str) -> State | None:
        cfg: CheckinConfig = ctx.settings.checkin
        data = ctx.conversation.data
        answer = text.strip()
        if state == self.State.MEMBER:
            return await self._choose_member(ctx, cfg, answer)
        if answer in RESTART_WORDS:
            data.update(index=0, answers={}, misses=0)
            ctx.say("checkin/restarted")
            return self.State.QUESTION
        question = cfg.question(data["qids"][data["index"]])
        if answer in SKIP_WORDS:
            if not question.skippable:
                return await self._miss(ctx, cfg, "not_skippable", question)
            data["answers"][question.id] = None
        else:
            try:
                data["answers"][question.id] = parse_answer(question, answer)
            except Unreadable as exc:
                return await self._miss(ctx, cfg, exc.hint, question)
        data["misses"] = 0
        data["index"] += 1
        if data["index"] < len(data["qids"]):
            return self.State.QUESTION
        await self._save(ctx, cfg, CheckinStatus.COMPLETE)
        return await self._next_member(ctx)

    # -- steps --------------------------------------------------------------------------------

    async def _members(self, ctx: Context) -> list[Any]:
        assert ctx.person is not None
        if ctx.person.household_id is None:
            return []
        day = date.fromisoformat(ctx.conversation.data["day"])
        return await store.household_members(
            ctx.conn, ctx.person.household_id, exclude=ctx.person.id, day=day
        )

    async def _choose_member(self, ctx: Context, cfg: CheckinConfig, answer: str) -> State | None:
        if answer in DONE_WORDS:
            ctx.say("checkin/household_done", count=len(ctx.conversation.data["reported"]))
            return None
        members = await self._members(ctx)
        # A name two members share (as answers are read: NFKC, any case) chooses neither:
        # those are chosen by number only.
        names = Counter(_folded(m.name) for m in members)
        options = [
            Option(str(m.id), m.name if names[_folded(m.name)] == 1 else "") for m in members
        ]
        try:
            chosen = parse_choices(answer, options, multiple=False)
        except AnswerError:
            return await self._miss(ctx, cfg, "member", None)
        member = next(m for m in members if str(m.id) == chosen[0])
        ctx.conversation.data["misses"] = 0
        await self._start_subject(ctx, cfg, member.id, member.name)
        return self.State.QUESTION

    async def _next_member(self, ctx: Context) -> State | None:
        data = ctx.conversation.data
        if not data["household"]:
            return None
        remaining = [m for m in await self._members(ctx) if m.id not in data["reported"]]
        if not remaining:
            ctx.say("checkin/household_done", count=len(data["reported"]))
            return None
        return self.State.MEMBER

    async def _miss(
        self, ctx: Context, cfg: CheckinConfig, hint: str, question: Any
    ) -> State | None:
        data = ctx.conversation.data
        data["misses"] = data.get("misses", 0) + 1
        if data["misses"] < cfg.max_reasks:
            raise Reask(f"checkin/hint_{hint}", question=question)
        if question is None:  # could not tell which family member was meant
            ctx.say("checkin/give_up_member")
            return None
        await self._save(ctx, cfg, CheckinStatus.INCOMPLETE)
        data["misses"] = 0
        return await self._next_member(ctx)

    async def _start_subject(
        self, ctx: Context, cfg: CheckinConfig, person_id: int, name: str
    ) -> None:
        """Set up the questions for ``person_id`` (oneself or a family member)."""
        data = ctx.conversation.data
        day = date.fromisoformat(data["day"])
        quarantine = await store.active_quarantine(ctx.conn, person_id, day)
        slot, qids = 0, [q.id for q in cfg.questions]
        if quarantine is not None:
            slot = quarantine_slot(cfg.quarantine, local_time(ctx.now, ctx.settings.tz).time())
            qids = list(cfg.quarantine.slots[slot].questions) or qids
        replacing = await store.current_record(ctx.conn, person_id, day, slot) is not None
        data.update(
            subject=person_id,
            subject_name=name,
            slot=slot,
            qids=qids,
            index=0,
            answers={},
            misses=0,
        )
        ctx.say(
            "checkin/intro",
            total=len(qids),
            member=name if person_id != data["reporter"] else None,
            replacing=replacing,
            quarantine=quarantine,
            quarantine_day=(day - quarantine.start_day).days + 1 if quarantine else None,
        )

    async def _save(self, ctx: Context, cfg: CheckinConfig, status: str) -> None:
        """Store the record, classify it, give advice and alert staff when abnormal."""
        data = ctx.conversation.data
        subject = await repo.load_person(ctx.conn, data["subject"])
        assert subject is not None and ctx.person is not None
        answers: dict[str, Any] = dict(data["answers"])
        questions = {q.id: q for q in cfg.questions}
        risk = evaluate_risk(cfg.risk, questions, answers)
        now: datetime = ctx.now
        record_id = await store.save_record(
            ctx.conn,
            store.NewRecord(
                person_id=subject.id,
                reporter_id=ctx.person.id,
                region_id=subject.region.id if subject.region else None,
                household_id=subject.household_id,
                day=date.fromisoformat(data["day"]),
                slot=data["slot"],
                status=status,
                risk=risk.level,
                reasons=list(risk.reasons),
                answers=answers,
            ),
            now=now,
        )
        if subject.id != ctx.person.id:
            if subject.id not in data["reported"]:  # a correction in the same session
                data["reported"].append(subject.id)
            await repo.record_audit(
                ctx.conn,
                actor_id=ctx.person.id,
                action="checkin.report_for",
                target_type="person",
                target_id=subject.id,
                region_id=subject.region.id if subject.region else None,
            )
        alert = await raise_alert(
            ctx.conn,
            ctx.db,
            ctx.texts,
            cfg,
            ctx.settings.tz,
            record_id=record_id,
            grid=subject.region,
            subject=AlertSubject(
                person_id=subject.id,
                name=subject.name,
                reporter_name=ctx.person.name if subject.id != ctx.person.id else "",
                household=await repo.household_label(ctx.conn, subject.household_id),
                grid_name=subject.region.name if subject.region else "",
                level=risk.level,
                status=status,
                reasons=risk.reasons,
                answers=answers,
            ),
            now=now,
        )
        ctx.say(
            "checkin/saved",
            complete=status == CheckinStatus.COMPLETE,
            member=subject.name if subject.id != ctx.person.id else None,
            items=answer_items(cfg, answers),
            risk=risk,
            alerted=alert is not None and alert.notified > 0,
            flagged=alert is not None,
        )
        if status == CheckinStatus.COMPLETE or risk.level != "low":
            ctx.say(
                f"checkin/advice_{risk.level}",
                member=data["subject_name"] if subject.id != ctx.person.id else None,
                reasons=risk.reasons,
            )
