"""Composing a notice in chat ("发通知"): text, audience, acknowledgement, time, preview, confirm.

Nothing is stored until the sender confirms the preview; at that moment everything is checked
again (scope, regions, time), since the preview may have waited a while.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from flows import notices
from flows.answers import AnswerError, parse_yes_no
from flows.context import Context
from flows.engine import Flow, Reask
from flows.notice_input import (
    NoticeInputError,
    parse_audience,
    parse_send_time,
    split_urgent,
)

YES_WORDS = frozenset({"需要", "要", "确认", "确定", "发送", "发", "好", "好的", "可以", "行"})
NO_WORDS = frozenset({"不需要", "不要", "不用", "无需", "不必", "否"})
FILTER_LABELS = {
    "resident": "仅居民",
    "volunteer": "仅志愿者",
    "warden": "仅网格员",
    "doctor": "仅医生",
    "admin": "仅管理员",
    "quarantined": "隔离人员",
    "quarantined_households": "隔离户全家",
}


def _yes_no(text: str) -> bool | None:
    word = text.strip().strip("。.!！")
    if word in YES_WORDS:
        return True
    if word in NO_WORDS:
        return False
    try:
        return parse_yes_no(word)
    except AnswerError:
        return None


class ComposeNotice(Flow):
    name = "notice_compose"

    class State(enum.StrEnum):
        TEXT = "text"
        AUDIENCE = "audience"
        ACK = "ack"
        WHEN = "when"
        CONFIRM = "confirm"

    async def begin(self, ctx: Context, **params: Any) -> State:
        notices.check_sender(ctx.person)
        text = params.get("text")
        if text:
            try:
                ctx.conversation.data["text"] = notices.check_text(
                    text, ctx.settings.notices.max_text_chars
                )
            except notices.NoticeRefused as refused:
                ctx.say(refused.template, **refused.values)
                return self.State.TEXT
            return self.State.AUDIENCE
        return self.State.TEXT

    async def ask(self, ctx: Context, state: enum.StrEnum) -> None:
        config = ctx.settings.notices
        if state == self.State.TEXT:
            ctx.say("notices/ask_text", limit=config.max_text_chars)
        elif state == self.State.AUDIENCE:
            assert ctx.person is not None
            ctx.say("notices/ask_audience", scopes=notices.sender_scopes(ctx.person))
        elif state == self.State.ACK:
            ctx.say("notices/ask_ack")
        elif state == self.State.WHEN:
            ctx.say(
                "notices/ask_when",
                quiet=config.quiet_hours and config.quiet_start != config.quiet_end,
                quiet_start=config.quiet_start,
                quiet_end=config.quiet_end,
            )
        else:
            await self._preview(ctx)

    async def step(self, ctx: Context, state: enum.StrEnum, text: str) -> State | None:
        data = ctx.conversation.data
        try:
            if state == self.State.TEXT:
                data["text"] = notices.check_text(text, ctx.settings.notices.max_text_chars)
                return self.State.AUDIENCE
            if state == self.State.AUDIENCE:
                return await self._audience(ctx, text)
            if state == self.State.ACK:
                answer = _yes_no(text)
                if answer is None:
                    raise Reask("notices/bad_ack_answer")
                data["ack_required"] = answer
                return self.State.WHEN
            if state == self.State.WHEN:
                return self._when(ctx, text)
        except NoticeInputError as error:
            raise Reask(f"notices/refused/{error.reason}", **error.values) from None
        except notices.NoticeRefused as refused:
            raise Reask(refused.template, **refused.values) from None
        return await self._confirm(ctx, text)

    async def _audience(self, ctx: Context, text: str) -> State:
        assert ctx.person is not None
        words = parse_audience(text)
        draft = await notices.validate(
            ctx.conn,
            ctx.person,
            text=ctx.conversation.data["text"],
            region_words=words.regions,
            whole_scope=words.whole_scope,
            groups=words.groups,
            individuals=words.individuals,
            roles=words.roles,
            status=words.status,
            now=ctx.now,
            max_chars=ctx.settings.notices.max_text_chars,
        )
        people, groups = await notices.count_draft(
            ctx.conn, draft, ctx.person.id, ctx.settings, ctx.now
        )
        if people + groups == 0:
            raise Reask("notices/nobody")
        ctx.conversation.data.update(
            regions=[r.code for r in draft.regions],
            groups=draft.groups,
            individuals=draft.individuals,
            roles=list(draft.roles),
            status=draft.status,
        )
        return self.State.ACK

    def _when(self, ctx: Context, text: str) -> State:
        rest, urgent = split_urgent(text)
        send_at = parse_send_time(rest or "现在", ctx.now, ctx.settings.tz)
        checked = notices.check_send_at(send_at, ctx.now)
        ctx.conversation.data["urgent"] = urgent
        ctx.conversation.data["send_at"] = checked.isoformat() if checked else None
        return self.State.CONFIRM

    async def _draft(self, ctx: Context) -> notices.Draft:
        data = ctx.conversation.data
        send_at = data.get("send_at")
        return await notices.validate(
            ctx.conn,
            ctx.person,
            text=data["text"],
            region_words=data["regions"],
            groups=data["groups"],
            individuals=data["individuals"],
            roles=data["roles"],
            status=data["status"],
            ack_required=data["ack_required"],
            urgent=data["urgent"],
            send_at=datetime.fromisoformat(send_at) if send_at else None,
            now=ctx.now,
            max_chars=ctx.settings.notices.max_text_chars,
        )

    async def _preview(self, ctx: Context) -> None:
        assert ctx.person is not None
        draft = await self._draft(ctx)
        data = ctx.conversation.data
        if "code" not in data:
            data["code"] = await notices.new_code(ctx.conn)
        moment = draft.send_at or ctx.now
        preview = notices.render_notice(
            ctx.texts,
            text=draft.text,
            code=data["code"],
            sender=ctx.person,
            region_names=[r.name for r in draft.regions],
            when=notices.local_label(moment, ctx.settings),
            ack_required=draft.ack_required,
            urgent=draft.urgent,
            for_group=False,
        )
        people, groups = await notices.count_draft(
            ctx.conn, draft, ctx.person.id, ctx.settings, ctx.now
        )
        held = notices.delivery_time(moment, urgent=draft.urgent, settings=ctx.settings)
        ctx.say(
            "notices/ask_confirm",
            preview=preview,
            regions="、".join(f"{r.name}（{r.code}）" for r in draft.regions),
            individuals=draft.individuals,
            groups=draft.groups,
            people=people,
            group_count=groups,
            filter_label="、".join(
                FILTER_LABELS.get(f, f) for f in (*draft.roles, draft.status) if f
            ),
            when="现在" if draft.send_at is None else notices.local_label(moment, ctx.settings),
            held_until=notices.local_label(held, ctx.settings) if held > moment else "",
            ack_required=draft.ack_required,
            urgent=draft.urgent,
        )

    async def _confirm(self, ctx: Context, text: str) -> State | None:
        answer = _yes_no(text)
        if answer is None:
            raise Reask("notices/bad_confirm")
        if not answer:
            await self.cancelled(ctx)
            return None
        assert ctx.person is not None
        try:
            draft = await self._draft(ctx)
        except notices.NoticeRefused as refused:
            ctx.say(refused.template, **refused.values)
            return self.State.WHEN if refused.reason == "past_time" else None
        created = await notices.create_notice(
            ctx.conn,
            ctx.person,
            draft,
            settings=ctx.settings,
            now=ctx.now,
            code=ctx.conversation.data.get("code"),
            via="chat",
        )
        held = created.deliver_at > created.send_at
        values = {
            "code": created.code,
            "people": created.people,
            "groups": created.groups,
            "ack_required": draft.ack_required,
            "when": notices.local_label(created.send_at, ctx.settings),
            "held_until": notices.local_label(created.deliver_at, ctx.settings) if held else "",
        }
        if draft.send_at is not None:
            ctx.say("notices/scheduled", **values)
        elif created.people + created.groups <= ctx.settings.notices.inline_max_targets:
            await notices.queue_notice_inline(
                ctx.conn, created.notice_id, texts=ctx.texts, settings=ctx.settings, now=ctx.now
            )
            ctx.say("notices/sent", **values)
        else:
            ctx.say("notices/queued", **values)
        return None
