"""Neutral message types: what every channel turns a platform request into, and back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Inbound:
    """One verified message or event from a resident, warden or group, on any channel.

    ``dedupe_key`` is unique per channel: the platform's message id, or for events a key built
    from sender, time and event.  ``chat_id`` is set for group chats and ``None`` for direct
    messages.  ``kind`` is ``text``, ``event``, ``image``, ``location`` or ``other``.
    """

    channel: str
    sender_id: str
    text: str
    dedupe_key: str
    sender_name: str = ""
    chat_id: str | None = None
    chat_name: str = ""
    kind: str = "text"
    event: str | None = None
    event_key: str | None = None
    timestamp: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_group(self) -> bool:
        return self.chat_id is not None


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message a flow wants sent.

    With neither ``person_id`` nor ``group_id`` it is a reply to the sender of the inbound
    message being handled (in the same chat).  Otherwise it goes to that person through the
    channel they use, or to that group chat, always through the outbox.  ``key`` makes a
    system-initiated message idempotent; replies get theirs from the inbound message.
    """

    text: str
    person_id: int | None = None
    group_id: int | None = None
    key: str | None = None
    urgent: bool = False
    kind: str = "text"

    @property
    def is_reply(self) -> bool:
        return self.person_id is None and self.group_id is None
