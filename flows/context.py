"""What a handler or flow step receives: the message, the sender, the transaction, the texts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from flows.messages import Inbound, Outbound
from flows.texts import Texts
from storage.db import Database
from storage.repo import ConversationState, PersonInfo

if TYPE_CHECKING:
    from flows.engine import FlowEngine


@dataclass
class Context:
    """One inbound message being handled, inside its (group-commit) transaction.

    ``settings`` is the application's frozen ``Config``; flows read their own sections from it.
    ``group`` is the chat group row when the message came from a bound group chat.
    """

    conn: AsyncConnection
    db: Database
    inbound: Inbound
    person: PersonInfo | None
    conversation: ConversationState
    texts: Texts
    settings: Any
    now: datetime
    flows: FlowEngine
    group: Any | None = None
    outbound: list[Outbound] = field(default_factory=list)
    features: frozenset[str] = frozenset()

    @property
    def text(self) -> str:
        return self.inbound.text.strip()

    def say(self, template: str, **values: Any) -> None:
        """Reply to the sender with a rendered template."""
        self.outbound.append(Outbound(self.texts.render(template, **values)))

    def send_to_person(self, person_id: int, template: str, *, key: str, **values: Any) -> None:
        """Queue a message for another person (through the outbox, idempotent by ``key``)."""
        text = self.texts.render(template, **values)
        self.outbound.append(Outbound(text, person_id=person_id, key=key))

    def send_to_group(self, group_id: int, template: str, *, key: str, **values: Any) -> None:
        text = self.texts.render(template, **values)
        self.outbound.append(Outbound(text, group_id=group_id, key=key))
