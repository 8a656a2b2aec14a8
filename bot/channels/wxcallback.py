"""What the official-account and WeCom callbacks share once a request is verified.

Both channels read the body under the 64 KiB limit, verify it their own way, and then hand the
plaintext XML to :class:`WxCallback`, which:

- maps it to an ``Inbound`` (``wxprotocol.to_inbound``); a document that cannot be read, or a
  message type we do not know, is kept (size-capped) in ``raw_payloads`` and answered
  ``success``, never a 500;
- runs the dispatcher within the reply budget (the platform waits 5 s and then retries); the
  dispatcher deduplicates by ``Inbound.dedupe_key``, so a retry gets the same reply;
- answers with one passive text reply (encrypted when the request was), ``success`` when
  there is nothing to say or the budget ran out (the reply then goes through the outbox).

A passive reply carries one message: several replies are joined while they fit, the rest go
through the outbox with the same keys the dispatcher uses for late replies.  A first reply too
long for a passive reply goes through the outbox too, which splits it into numbered parts,
instead of being cut.  Replies to a group chat always go through the outbox (a passive reply
reaches the sender only).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any, cast

from aiohttp import web
from sqlalchemy import Table, insert

from bot.channels.wxprotocol import (
    MAX_BODY,
    CryptoKind,
    MessageCrypto,
    ProtocolError,
    render_text_reply,
    safe_parse_xml,
    to_inbound,
    verify_url_signature,
    within_skew,
)
from bot.dispatcher import Dispatcher
from bot.messages import Inbound, Outbound
from storage.models import RawPayload, utcnow
from storage.outbox import Target, answer_key, enqueue, outbox, outbox_row
from storage.storable import storable_text

log = logging.getLogger(__name__)

raw_payloads = cast(Table, RawPayload.__table__)
outbox_table = cast(Table, outbox)

SUCCESS = "success"
MAX_REPLY_BYTES = 2048
"""Most UTF-8 bytes of one passive text reply's content."""
RAW_PAYLOAD_CAP = 16 * 1024
"""Most characters of a refused body kept for inspection."""
KNOWN_TYPES = frozenset(
    {"text", "image", "voice", "video", "shortvideo", "location", "link", "file", "event"}
)


async def read_body(request: web.Request) -> bytes | None:
    """The request body, or ``None`` when it is over ``MAX_BODY`` (answer 413)."""
    length = request.content_length
    if length is not None and length > MAX_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:  # read() returns what has arrived so far, not necessarily the whole body
        chunk = await request.content.read(MAX_BODY + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            return None


def refuse(status: int, reason: str) -> web.Response:
    """A refusal: 400 malformed, 403 signature or timestamp, 413 too large."""
    return web.Response(status=status, text=reason)


def success() -> web.Response:
    """The answer that tells Tencent "received, nothing to reply" and stops its retries."""
    return web.Response(text=SUCCESS, content_type="text/plain")


def inspectable(body: bytes | str) -> str:
    """A size-capped text form of a body that could not be used: invalid UTF-8 and NUL (which
    PostgreSQL text cannot hold) become backslash escapes, a lone surrogate U+FFFD."""
    if isinstance(body, bytes):
        text = body[:RAW_PAYLOAD_CAP].decode("utf-8", "backslashreplace")
    else:
        text = body[:RAW_PAYLOAD_CAP]
    return storable_text(text, nul="\\x00")


def pack_replies(replies: Sequence[Outbound]) -> tuple[str, list[tuple[int, Outbound]]]:
    """Join replies into one passive reply while they fit; return it (empty when not even the
    first fits) and the ones left over (with their positions, which make their outbox keys)."""
    texts: list[str] = []
    rest: list[tuple[int, Outbound]] = []
    size = 0
    for i, reply in enumerate(replies):
        piece = reply.text.encode("utf-8")
        extra = len(piece) + (2 if texts else 0)
        if not rest and size + extra <= MAX_REPLY_BYTES:
            texts.append(reply.text)
            size += extra
        else:
            rest.append((i, reply))
    return "\n\n".join(texts), rest


class WxCallback:
    """The verified half of a WeChat-style callback: parse, dispatch, answer."""

    def __init__(
        self,
        channel: str,
        platform: CryptoKind,
        dispatcher: Dispatcher,
        *,
        reply_budget_s: float,
        crypto: MessageCrypto | None,
        token: str,
        max_clock_skew_s: int,
    ) -> None:
        self.channel = channel
        self.platform: CryptoKind = platform
        self.dispatcher = dispatcher
        self.reply_budget_s = reply_budget_s
        self.crypto = crypto
        self.token = token
        self.max_clock_skew_s = max_clock_skew_s
        self._outbox_insert = dispatcher.db.insert_ignore(outbox_table)

    def fresh(self, timestamp: str) -> bool:
        """Whether the callback's timestamp is within the allowed clock skew."""
        return within_skew(timestamp, time.time(), self.max_clock_skew_s)

    async def open_envelope(
        self,
        body: bytes,
        *,
        msg_signature: str,
        timestamp: str,
        nonce: str,
        url_signed: bool,
    ) -> str | web.Response:
        """Verify and decrypt a safe-mode body: the plaintext XML, or the answer to give.

        ``url_signed`` says the request's URL signature (official account) already proved it
        came from Tencent; then even an unreadable envelope is kept and answered ``success``.
        Without it (WeCom) the envelope must be readable to be verified at all (else 400).
        A timestamp outside the allowed skew is refused (403) before anything is decrypted.
        """
        assert self.crypto is not None
        if not self.fresh(timestamp):
            return refuse(403, "timestamp outside the allowed clock skew")
        try:
            return self.crypto.decrypt_body(body, msg_signature, timestamp, nonce)
        except ProtocolError as exc:
            if exc.status != 400:
                return refuse(exc.status, exc.reason)
            failure = exc
        # Unreadable envelope, or one that verified and then did not decrypt: only a request we
        # know came from Tencent is kept and answered success.
        if not url_signed and not self._envelope_signed(body, msg_signature, timestamp, nonce):
            return refuse(400, failure.reason)
        await self.keep_raw(body, failure.reason)
        return success()

    def _envelope_signed(self, body: bytes, msg_signature: str, timestamp: str, nonce: str) -> bool:
        try:
            encrypted = safe_parse_xml(body).get("Encrypt", "")
        except ProtocolError:
            return False
        return bool(encrypted) and verify_url_signature(
            msg_signature, self.token, timestamp, nonce, encrypted
        )

    async def answer(self, xml: bytes | str, *, encrypt: bool) -> web.Response:
        """Handle one verified plaintext callback and build the HTTP answer."""
        try:
            inbound = to_inbound(self.channel, xml, platform=self.platform)
        except ProtocolError as exc:
            if exc.status == 413:
                return refuse(413, exc.reason)
            await self.keep_raw(xml, exc.reason)
            return success()
        if inbound is None:
            await self.keep_raw(xml, "no sender")
            return success()
        msg_type = str(inbound.extra.get("msg_type", ""))
        if msg_type not in KNOWN_TYPES:
            await self.keep_raw(xml, f"unknown message type {msg_type[:64]!r}")
            return success()
        if await self.handle_platform_event(inbound):
            return success()
        replies = await self.dispatcher.handle(inbound, budget=self.reply_budget_s)
        if not replies:
            return success()
        if inbound.is_group:
            await self.queue_replies(inbound, list(enumerate(replies)))
            return success()
        text, rest = pack_replies(replies)
        if rest:
            await self.queue_replies(inbound, rest)
        if not text:
            return success()
        reply = render_text_reply(
            inbound.sender_id,
            str(inbound.extra.get("to_user", "")),
            text,
            # The callback's own time: a retry gets a byte-identical reply.
            inbound.timestamp or int(time.time()),
        )
        if encrypt and self.crypto is not None:
            nonce = f"{secrets.randbelow(10**10):010d}"  # ten digits, one CSPRNG read
            reply = self.crypto.encrypt_reply(reply, nonce, str(int(time.time())))
        return web.Response(text=reply, content_type="application/xml")

    async def handle_platform_event(self, inbound: Inbound) -> bool:
        """Handle an event that is about the platform, not a conversation (a delivery receipt);
        ``True`` if it was one.  Channels override this."""
        return False

    async def keep_raw(self, body: bytes | str, reason: str) -> None:
        """Store a verified body we could not use, for inspection (never fails the request)."""
        log.warning("%s: kept an unusable callback body (%s)", self.channel, reason)
        values: dict[str, Any] = {
            "channel": self.channel,
            "reason": reason[:255],
            "body": inspectable(body),
            "received_at": utcnow(),
        }

        async def store(conn: Any) -> None:
            await conn.execute(insert(raw_payloads).values(**values))

        try:
            await self.dispatcher.committer.run(store, lane_key=f"{self.channel}:raw")
        except Exception as exc:  # keeping it is a courtesy; the answer is "success" regardless
            self.dispatcher.errors.report(exc, where="raw_payload", channel=self.channel)

    async def queue_replies(self, inbound: Inbound, replies: list[tuple[int, Outbound]]) -> None:
        """Send replies through the outbox, keyed like the dispatcher's late replies."""
        if inbound.is_group:
            assert inbound.chat_id is not None
            target = Target(self.channel, "chat", inbound.chat_id)
        else:
            target = Target(self.channel, "user", inbound.sender_id)
        rows = [
            outbox_row(
                key=answer_key("reply", self.channel, inbound.dedupe_key, i),
                target=target,
                payload={"text": reply.text},
            )
            for i, reply in replies
        ]

        async def store(conn: Any) -> None:
            await enqueue(conn, rows, self._outbox_insert)

        await self.dispatcher.committer.run(
            store, lane_key=f"{inbound.channel}:{inbound.sender_id}"
        )
        self.dispatcher.on_queued()
