"""WeCom (企业微信) self-built app: callback, app messages, app chats and group robots.

Inbound, at ``channels.wecom.path``, always encrypted:

- ``GET``: URL verification; ``echostr`` is verified with ``msg_signature``, decrypted and the
  plaintext answered (403 on a bad signature or a stale timestamp).
- ``POST``: verified, decrypted and handled like the official account's safe mode (dedupe,
  reply budget, ``success``); replies are always encrypted.  Events such as ``enter_agent`` and
  group-chat messages (``ChatId``) go to the dispatcher like any other message.

Outbound (the outbox sender for channel ``wecom``), by target kind:

- ``user``: ``/cgi-bin/message/send`` to a userid from this app (``agent_id``);
- ``chat``: ``/cgi-bin/appchat/send`` to an app chat (create one with
  :meth:`WeComChannel.create_app_chat`);
- ``robot``: a group robot's webhook under ``robot_base``; the address is the robot key (a
  chat group's ``robot_key``), at most 20 messages a minute per robot (the outbox enforces it).

``payload["format"] == "markdown"`` sends markdown instead of text.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from aiohttp import web

from bot.channels.base import SendResult
from bot.channels.wxcallback import WxCallback, read_body, refuse
from bot.channels.wxprotocol import MessageCrypto, ProtocolError
from bot.config import WeComConfig
from bot.dispatcher import Dispatcher
from bot.wxapi import (
    WxApiError,
    WxUnavailable,
    fit_text,
    send_result_for,
    send_robot_message,
    wecom_client,
)
from storage.outbox import ClaimedMessage

log = logging.getLogger(__name__)

CHANNEL = "wecom"
ROBOT_RATE_PER_MINUTE = 20
MAX_TEXT_BYTES = 2048
MAX_MARKDOWN_BYTES = 4096


class WeComChannel(WxCallback):
    """Callback routes and outbox sender of one WeCom self-built app."""

    def __init__(
        self,
        config: WeComConfig,
        dispatcher: Dispatcher,
        session: aiohttp.ClientSession,
        *,
        reply_budget_s: float,
    ) -> None:
        crypto = MessageCrypto(
            "wecom",
            token=config.token,
            encoding_aes_key=config.encoding_aes_key,
            corp_id=config.corp_id,
        )
        super().__init__(
            CHANNEL,
            "wecom",
            dispatcher,
            reply_budget_s=reply_budget_s,
            crypto=crypto,
            token=config.token,
            max_clock_skew_s=config.max_clock_skew_s,
        )
        self.config = config
        self.session = session
        self.api = wecom_client(session, dispatcher.db, config)

    def routes(self) -> list[web.RouteDef]:
        path = self.config.path.rstrip("/") or "/"
        return [web.get(path, self.verify_url), web.post(path, self.receive)]

    # -- inbound -----------------------------------------------------------------------------

    async def verify_url(self, request: web.Request) -> web.Response:
        """URL verification: decrypt the signed ``echostr`` and answer its plaintext."""
        assert self.crypto is not None
        query = request.query
        timestamp = query.get("timestamp", "")
        try:
            plaintext = self.crypto.decrypt_echostr(
                query.get("echostr", ""),
                query.get("msg_signature", ""),
                timestamp,
                query.get("nonce", ""),
            )
        except ProtocolError as exc:
            return refuse(exc.status, exc.reason)
        if not self.fresh(timestamp):
            return refuse(403, "timestamp outside the allowed clock skew")
        return web.Response(text=plaintext, content_type="text/plain")

    async def receive(self, request: web.Request) -> web.Response:
        """A message or event; always encrypted."""
        body = await read_body(request)
        if body is None:
            return refuse(413, "body over 64 KiB")
        query = request.query
        opened = await self.open_envelope(
            body,
            msg_signature=query.get("msg_signature", ""),
            timestamp=query.get("timestamp", ""),
            nonce=query.get("nonce", ""),
            url_signed=False,
        )
        if isinstance(opened, web.Response):
            return opened
        return await self.answer(opened, encrypt=True)

    # -- outbound ----------------------------------------------------------------------------

    def rate_per_minute(self, message: ClaimedMessage) -> int | None:
        return ROBOT_RATE_PER_MINUTE if message.target.kind == "robot" else None

    async def send(self, message: ClaimedMessage) -> SendResult:
        """Send one outbox row to a user, an app chat or a group robot."""
        text = str(message.payload.get("text", ""))
        if not text.strip():
            return SendResult.failed("empty message")
        markdown = message.payload.get("format") == "markdown"
        kind, address = message.target.kind, message.target.address
        try:
            if kind == "user":
                return await self._send_to_user(address, text, markdown=markdown)
            if kind == "chat":
                await self.api.post(
                    "/cgi-bin/appchat/send", {"chatid": address, **_content(text, markdown)}
                )
                return SendResult.sent()
            if kind == "robot":
                await send_robot_message(
                    self.session, self.config.robot_base, address, _content(text, markdown)
                )
                return SendResult.sent()
        except (WxApiError, WxUnavailable) as exc:
            return send_result_for(exc)
        return SendResult.undeliverable(f"unknown target kind {kind!r}")

    async def _send_to_user(self, userid: str, text: str, *, markdown: bool) -> SendResult:
        body = {"touser": userid, "agentid": self.config.agent_id, **_content(text, markdown)}
        answer = await self.api.post("/cgi-bin/message/send", body)
        if answer.get("invaliduser"):
            return SendResult.undeliverable(f"invalid userid: {answer['invaliduser']}")
        msg_id = answer.get("msgid")
        return SendResult.sent(str(msg_id) if msg_id else None)

    async def create_app_chat(
        self, name: str, owner: str, members: list[str], *, chat_id: str | None = None
    ) -> str:
        """Create an app chat (a grid group) of at least two members; returns its chat id.

        Raises ``WxApiError`` or ``WxUnavailable``.
        """
        body: dict[str, Any] = {"name": name, "owner": owner, "userlist": members}
        if chat_id:
            body["chatid"] = chat_id
        answer = await self.api.post("/cgi-bin/appchat/create", body)
        return str(answer.get("chatid") or chat_id or "")


def _content(text: str, markdown: bool) -> dict[str, Any]:
    """The ``msgtype`` and content part of a message body, cut to the platform's limit."""
    if markdown:
        return {"msgtype": "markdown", "markdown": {"content": fit_text(text, MAX_MARKDOWN_BYTES)}}
    return {"msgtype": "text", "text": {"content": fit_text(text, MAX_TEXT_BYTES)}}
