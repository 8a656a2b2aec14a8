"""The signed JSON bridge for any other gateway (a personal-WeChat relay, another IM).

Inbound ``POST {path}/inbound`` with ``X-Bridge-Timestamp`` and ``X-Bridge-Signature`` =
hex HMAC-SHA256(secret, timestamp + "." + raw body).  Outbound: the outbox POSTs
``{"message_id", "to", "text"}`` to ``outbound_url``, signed the same way; the outbox key is the
``message_id``, so a gateway that deduplicates by it never shows a message twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import time
from typing import Any

import aiohttp
from aiohttp import web

from bot.channels.base import SendResult
from bot.config import BridgeConfig
from bot.dispatcher import Dispatcher
from bot.messages import Inbound, Outbound
from storage.outbox import ClaimedMessage
from storage.storable import storable_text

log = logging.getLogger(__name__)

CHANNEL = "bridge"
MAX_TEXT = 10_000
MAX_ADDRESS = 128  # identities.external_id, chat_groups.external_id: a sender or chat id
MAX_NAME = 128  # identities.display_name
UNIX_SECONDS = re.compile("[0-9]{1,20}")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The bridge signature of ``body`` sent at ``timestamp``."""
    message = timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class BadMessage(ValueError):
    """The JSON is well formed but not a bridge message; the text says which field."""


def _checked_id(value: str, field: str, limit: int | None = None) -> str:
    """An id as given, if the database can hold it (a long message id is stored as a digest;
    a sender or chat id is an address and must fit as it is)."""
    if storable_text(value) != value:
        raise BadMessage(f"{field} must not contain NUL or a lone surrogate")
    if limit is not None and len(value) > limit:
        raise BadMessage(f"{field} is longer than {limit} characters")
    return value


def parse_message(data: Any) -> Inbound:
    """Turn a bridge JSON body into an ``Inbound``; unknown fields are ignored."""
    if not isinstance(data, dict):
        raise BadMessage("body must be a JSON object")
    message_id = data.get("message_id")
    if not isinstance(message_id, str | int) or isinstance(message_id, bool) or message_id == "":
        raise BadMessage("message_id must be a non-empty string or integer")
    sender = data.get("sender")
    if not isinstance(sender, dict) or not isinstance(sender.get("id"), str) or not sender["id"]:
        raise BadMessage("sender.id must be a non-empty string")
    sender_id = _checked_id(sender["id"], "sender.id", MAX_ADDRESS)
    chat = data.get("chat") or {"type": "direct"}
    if not isinstance(chat, dict) or chat.get("type", "direct") not in ("direct", "group"):
        raise BadMessage("chat.type must be 'direct' or 'group'")
    is_group = chat.get("type") == "group"
    if is_group and (not isinstance(chat.get("id"), str) or not chat["id"]):
        raise BadMessage("chat.id is required for a group message")
    chat_id = _checked_id(chat["id"], "chat.id", MAX_ADDRESS) if is_group else None
    text = data.get("text", "")
    if not isinstance(text, str):
        raise BadMessage("text must be a string")
    if len(text) > MAX_TEXT:
        raise BadMessage(f"text is longer than {MAX_TEXT} characters")
    timestamp = data.get("timestamp", 0)
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        raise BadMessage("timestamp must be a number")
    if not math.isfinite(timestamp):  # JSON's 1e999 reads as inf; Python's reader takes NaN
        raise BadMessage("timestamp must be a finite number")
    name = sender.get("name", "")
    # A gateway may cut text at UTF-16 code units (half an emoji) or pass NUL through.
    return Inbound(
        channel=CHANNEL,
        sender_id=sender_id,
        sender_name=storable_text(name)[:MAX_NAME] if isinstance(name, str) else "",
        chat_id=chat_id,
        chat_name=storable_text(str(chat.get("name", ""))) if is_group else "",
        text=storable_text(text),
        dedupe_key=_checked_id(str(message_id), "message_id"),
        kind="text",
        timestamp=int(timestamp),
    )


class BridgeChannel:
    """Inbound route and outbound sender of the bridge."""

    channel = CHANNEL

    def __init__(
        self,
        config: BridgeConfig,
        dispatcher: Dispatcher,
        session: aiohttp.ClientSession,
        *,
        reply_budget_s: float,
    ) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.session = session
        self.reply_budget_s = reply_budget_s

    def routes(self) -> list[web.RouteDef]:
        return [web.post(f"{self.config.path.rstrip('/')}/inbound", self.inbound)]

    async def inbound(self, request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > self.config.max_body_bytes:
            return _error(413, "too_large", f"body over {self.config.max_body_bytes} bytes")
        body = await request.content.read(self.config.max_body_bytes + 1)
        if len(body) > self.config.max_body_bytes:
            return _error(413, "too_large", f"body over {self.config.max_body_bytes} bytes")
        timestamp = request.headers.get("X-Bridge-Timestamp", "")
        signature = request.headers.get("X-Bridge-Signature", "")
        if not UNIX_SECONDS.fullmatch(timestamp):
            return _error(401, "bad_timestamp", "X-Bridge-Timestamp must be unix seconds")
        skew = self.config.max_clock_skew_s
        if skew and abs(time.time() - int(timestamp)) > skew:
            return _error(401, "stale_timestamp", f"timestamp outside the allowed {skew} s")
        expected = sign(self.config.secret, timestamp, body)
        if not hmac.compare_digest(expected, signature.lower()):
            return _error(401, "bad_signature", "X-Bridge-Signature does not match the body")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, "malformed_json", f"body is not valid JSON: {exc}")
        try:
            inbound = parse_message(data)
        except BadMessage as exc:
            return _error(400, "bad_message", str(exc))
        replies = await self.dispatcher.handle(inbound, budget=self.reply_budget_s)
        return web.json_response(
            {"replies": [self._render(inbound, reply) for reply in replies or []]},
            dumps=lambda obj: json.dumps(obj, ensure_ascii=False),
        )

    @staticmethod
    def _render(inbound: Inbound, reply: Outbound) -> dict[str, Any]:
        to = {"chat_id": inbound.chat_id} if inbound.chat_id else {"user_id": inbound.sender_id}
        return {"to": to, "text": reply.text}

    # -- outbound ----------------------------------------------------------------------------

    def rate_per_minute(self, message: ClaimedMessage) -> int | None:
        return None

    async def send(self, message: ClaimedMessage) -> SendResult:
        if not self.config.outbound_url:
            return SendResult.failed("channels.bridge.outbound_url is not configured")
        kind = "chat_id" if message.target.kind == "chat" else "user_id"
        body = json.dumps(
            {
                "message_id": message.key,
                "to": {kind: message.target.address},
                "text": message.payload.get("text", ""),
            },
            ensure_ascii=False,
        ).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Bridge-Timestamp": timestamp,
            "X-Bridge-Signature": sign(self.config.secret, timestamp, body),
        }
        try:
            async with self.session.post(
                self.config.outbound_url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                if 200 <= response.status < 300:
                    return SendResult.sent()
                retry_after = response.headers.get("Retry-After")
                return SendResult.transient(
                    f"bridge answered HTTP {response.status}",
                    retry_after=float(retry_after)
                    if retry_after and retry_after.isdigit()
                    else None,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return SendResult.transient(f"bridge unreachable: {exc.__class__.__name__} {exc}")
