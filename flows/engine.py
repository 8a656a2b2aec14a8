"""A small engine for declared conversations: states, validation with re-ask, cancel, expiry.

A flow names its states in an enum.  ``begin`` prepares its data and returns the first state;
the engine asks the question of every state it enters (``ask``), feeds the next answer to
``step``, and persists where the person stands in the conversation row.  A step that cannot
read an answer raises :class:`Reask`; after ``max_retries`` the engine calls ``give_up``.
"""

from __future__ import annotations

import enum
import logging
from abc import ABC, abstractmethod
from datetime import timedelta
from typing import Any, ClassVar

from flows.context import Context

log = logging.getLogger(__name__)

CANCEL_WORDS = frozenset({"取消", "退出", "算了", "cancel"})


class Reask(Exception):
    """The answer could not be used: show ``hint`` (a template) and ask the question again."""

    def __init__(self, hint: str, **values: Any) -> None:
        super().__init__(hint)
        self.hint = hint
        self.values = values


class Flow(ABC):
    """Base class of a declared conversation."""

    name: ClassVar[str]
    State: ClassVar[type[enum.StrEnum]]
    max_retries: ClassVar[int] = 3
    cancel_template: ClassVar[str] = "common/cancelled"
    expired_template: ClassVar[str] = "common/expired"

    @abstractmethod
    async def begin(self, ctx: Context, **params: Any) -> enum.StrEnum | None:
        """Prepare ``ctx.conversation.data`` and return the first state (``None`` ends now)."""

    @abstractmethod
    async def ask(self, ctx: Context, state: enum.StrEnum) -> None:
        """Say the question of ``state``."""

    @abstractmethod
    async def step(self, ctx: Context, state: enum.StrEnum, text: str) -> enum.StrEnum | None:
        """Handle an answer in ``state``; return the next state, or ``None`` when done."""

    async def give_up(self, ctx: Context, state: enum.StrEnum) -> None:
        """Too many unreadable answers: by default, say so and end."""
        ctx.say("common/give_up")

    async def cancelled(self, ctx: Context) -> None:
        ctx.say(self.cancel_template)


class FlowEngine:
    """Starts and resumes flows on a context's conversation state."""

    def __init__(self, flows: list[Flow], *, expiry: timedelta) -> None:
        self.flows = {flow.name: flow for flow in flows}
        self.expiry = expiry

    def register(self, flow: Flow) -> None:
        self.flows[flow.name] = flow

    async def start(self, ctx: Context, name: str, **params: Any) -> None:
        """Start flow ``name`` for the sender (replacing any conversation in progress)."""
        flow = self.flows[name]
        conversation = ctx.conversation
        conversation.flow, conversation.state, conversation.data = name, None, {}
        state = await flow.begin(ctx, **params)
        await self._enter(ctx, flow, state)

    async def resume(self, ctx: Context) -> bool:
        """Feed the message to the active flow; ``False`` when there is none (or it expired)."""
        conversation = ctx.conversation
        if conversation.flow is None:
            return False
        flow = self.flows.get(conversation.flow)
        if flow is None or conversation.state is None:
            log.warning("dropping conversation in unknown flow %r", conversation.flow)
            self._end(ctx)
            return False
        if not conversation.active(ctx.now):
            self._end(ctx)
            if ctx.text in CANCEL_WORDS:
                ctx.say(flow.expired_template)
                return True
            return False
        if ctx.text.lower() in CANCEL_WORDS:
            self._end(ctx)
            await flow.cancelled(ctx)
            return True
        state = flow.State(conversation.state)
        try:
            next_state = await flow.step(ctx, state, ctx.text)
        except Reask as reask:
            retries = conversation.data.get("_retries", 0) + 1
            if retries >= flow.max_retries:
                self._end(ctx)
                await flow.give_up(ctx, state)
                return True
            conversation.data["_retries"] = retries
            ctx.say(reask.hint, **reask.values)
            await flow.ask(ctx, state)
            self._touch(ctx)
            return True
        await self._enter(ctx, flow, next_state)
        return True

    async def _enter(self, ctx: Context, flow: Flow, state: enum.StrEnum | None) -> None:
        conversation = ctx.conversation
        if state is None or conversation.flow != flow.name:
            # Done, or the step handed over to another flow (which has set its own state).
            if conversation.flow == flow.name:
                self._end(ctx)
            return
        conversation.state = state.value
        conversation.data.pop("_retries", None)
        self._touch(ctx)
        await flow.ask(ctx, state)

    def _touch(self, ctx: Context) -> None:
        ctx.conversation.expires_at = ctx.now + self.expiry

    @staticmethod
    def _end(ctx: Context) -> None:
        conversation = ctx.conversation
        conversation.flow = conversation.state = None
        conversation.data = {}
        conversation.expires_at = None
