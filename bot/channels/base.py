"""What every channel provides to the delivery worker: a sender that maps errors to outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from storage.outbox import ClaimedMessage


@dataclass(frozen=True, slots=True)
class SendResult:
    """How one attempt ended.

    ``ok``: delivered.  Otherwise ``retry`` asks for another attempt (after ``retry_after``
    seconds if the platform said so, else the backoff), and ``dead`` means the message can never
    be delivered (a bad target); neither means failed for good, with the reason in ``error``.
    """

    ok: bool
    error: str = ""
    retry: bool = False
    dead: bool = False
    retry_after: float | None = None
    platform_msg_id: str | None = None

    @classmethod
    def sent(cls, platform_msg_id: str | None = None) -> SendResult:
        return cls(True, platform_msg_id=platform_msg_id)

    @classmethod
    def transient(cls, error: str, retry_after: float | None = None) -> SendResult:
        return cls(False, error=error, retry=True, retry_after=retry_after)

    @classmethod
    def failed(cls, error: str) -> SendResult:
        return cls(False, error=error)

    @classmethod
    def undeliverable(cls, error: str) -> SendResult:
        return cls(False, error=error, dead=True)


class Sender(Protocol):
    """Sends one claimed outbox message on one channel."""

    channel: str

    def rate_per_minute(self, message: ClaimedMessage) -> int | None:
        """The most messages a minute this message's target accepts (``None``: the default)."""
        ...

    async def send(self, message: ClaimedMessage) -> SendResult: ...
