"""The WeChat official account (公众号, a verified service account): callback and sender.

Inbound, at ``channels.wechat_mp.path``:

- ``GET``: URL verification; answers ``echostr`` when ``signature`` matches, else 403.
- ``POST`` in plaintext mode (``signature`` only), compatible mode and safe mode
  (``encrypt_type=aes`` with ``msg_signature``; answered encrypted), as ``message_mode`` says.
  With no ``encoding_aes_key`` configured, or in ``plain`` mode, the body is read as plaintext
  whatever the query says; in ``safe`` mode a plaintext body is 403 (the URL signature does not
  cover the body, so anyone who saw one callback URL could post any body under it).
  Signatures are compared in constant time, a timestamp outside ``max_clock_skew_s`` is 403,
  a body over 64 KiB is 413.  What happens next is :class:`bot.channels.wxcallback.WxCallback`.
- Template send-finish events (``TEMPLATESENDJOBFINISH``) are delivery receipts: the outbox row
  whose ``platform_msg_id`` is the event's ``MsgID`` gets ``payload["platform_status"]`` and,
  unless it is ``success``, ``last_error`` (the row stays ``sent``: status never moves back).

Outbound (the outbox sender for channel ``wechat_mp``; targets are openids):

- ``payload["text"]``: customer-service text (``/cgi-bin/message/custom/send``); refused with
  45015 (outside the 48-hour window) or 45047 (over its count) it falls back to the configured
  template message, else the configured subscribe message, else fails with the reason;
- ``payload["template"] = {"template_id", "data", "url"?, "miniprogram"?}``: template message;
- ``payload["subscribe"] = {"template_id", "data", "page"?, "miniprogram"?}``: subscribe message
  (``/cgi-bin/message/subscribe/bizsend``).

Other calls: :meth:`WeChatMPChannel.create_permanent_qrcode` (``/cgi-bin/qrcode/create``) makes
a grid poster's parametric QR code.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import aiohttp
from aiohttp import web
from sqlalchemy import Table, select, update

from bot.channels.base import SendResult
from bot.channels.wxcallback import WxCallback, read_body, refuse
from bot.channels.wxprotocol import MessageCrypto, verify_url_signature
from bot.config import WeChatMPConfig
from bot.dispatcher import Dispatcher
from bot.messages import Inbound
from bot.wxapi import (
    OUT_OF_WINDOW,
    WxApiError,
    WxUnavailable,
    fit_text,
    official_account_client,
    send_result_for,
)
from storage.outbox import ClaimedMessage, outbox

log = logging.getLogger(__name__)

outbox_table = cast(Table, outbox)

CHANNEL = "wechat_mp"
MAX_TEXT_BYTES = 2048
TEMPLATE_VALUE_CHARS = 200
SUBSCRIBE_THING_CHARS = 20
RECEIPT_EVENTS = frozenset({"templatesendjobfinish"})


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


class WeChatMPChannel(WxCallback):
    """Callback routes and outbox sender of one official account."""

    def __init__(
        self,
        config: WeChatMPConfig,
        dispatcher: Dispatcher,
        session: aiohttp.ClientSession,
        *,
        reply_budget_s: float,
    ) -> None:
        crypto = (
            MessageCrypto(
                "wechat_mp",
                token=config.token,
                encoding_aes_key=config.encoding_aes_key,
                app_id=config.app_id,
            )
            if config.encoding_aes_key and config.message_mode != "plain"
            else None
        )
        super().__init__(
            CHANNEL,
            "wechat_mp",
            dispatcher,
            reply_budget_s=reply_budget_s,
            crypto=crypto,
            token=config.token,
            max_clock_skew_s=config.max_clock_skew_s,
        )
        self.config = config
        self.api = official_account_client(session, dispatcher.db, config)

    def routes(self) -> list[web.RouteDef]:
        path = self.config.path.rstrip("/") or "/"
        return [web.get(path, self.verify_url), web.post(path, self.receive)]

    # -- inbound -----------------------------------------------------------------------------

    async def verify_url(self, request: web.Request) -> web.Response:
        """URL verification when the callback is configured: echo ``echostr`` if signed."""
        query = request.query
        timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
        signature = query.get("signature", "")
        if not verify_url_signature(signature, self.token, timestamp, nonce):
            return refuse(403, "bad signature")
        if not self.fresh(timestamp):
            return refuse(403, "timestamp outside the allowed clock skew")
        return web.Response(text=query.get("echostr", ""), content_type="text/plain")

    async def receive(self, request: web.Request) -> web.Response:
        """A message or event, in plaintext, compatible or safe mode."""
        body = await read_body(request)
        if body is None:
            return refuse(413, "body over 64 KiB")
        query = request.query
        timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
        signature = query.get("signature")
        if signature is not None and not verify_url_signature(
            signature, self.token, timestamp, nonce
        ):
            return refuse(403, "bad signature")
        url_signed = signature is not None
        encrypted = query.get("encrypt_type", "raw").lower() == "aes" and self.crypto is not None
        if not encrypted:
            if not url_signed:
                return refuse(403, "no signature")
            if not self.fresh(timestamp):
                return refuse(403, "timestamp outside the allowed clock skew")
            if self.config.message_mode == "safe":
                log.warning(
                    "%s: refused a plaintext callback: message_mode is safe (a replayed callback "
                    "URL, or the account was switched out of safe mode in the WeChat console)",
                    self.channel,
                )
                return refuse(403, "plaintext message to a safe-mode account")
            return await self.answer(body, encrypt=False)
        opened = await self.open_envelope(
            body,
            msg_signature=query.get("msg_signature", ""),
            timestamp=timestamp,
            nonce=nonce,
            url_signed=url_signed,
        )
        if isinstance(opened, web.Response):
            return opened
        return await self.answer(opened, encrypt=True)

    async def handle_platform_event(self, inbound: Inbound) -> bool:
        """Template send-finish events update the outbox row they report on."""
        if inbound.kind != "event" or inbound.event not in RECEIPT_EVENTS:
            return False
        msg_id = str(inbound.extra.get("msg_id", "")).strip()
        status = str(inbound.extra.get("status", "")).strip()[:100]
        if msg_id:
            await self.dispatcher.committer.run(
                lambda conn: self._record_receipt(conn, msg_id, status), lane_key="receipts"
            )
        return True

    async def _record_receipt(self, conn: Any, msg_id: str, status: str) -> None:
        rows = (
            await conn.execute(
                select(outbox.c.id, outbox.c.payload).where(
                    outbox.c.channel == self.channel, outbox.c.platform_msg_id == msg_id
                )
            )
        ).all()
        if not rows:
            log.info("template receipt for unknown msgid %s (%s)", msg_id, status)
        for row in rows:
            values: dict[str, Any] = {"payload": {**(row.payload or {}), "platform_status": status}}
            if status.lower() != "success":
                values["last_error"] = f"template delivery: {status}"
            await conn.execute(
                update(outbox_table).where(outbox_table.c.id == row.id).values(**values)
            )

    # -- outbound ----------------------------------------------------------------------------

    def rate_per_minute(self, message: ClaimedMessage) -> int | None:
        return None

    async def send(self, message: ClaimedMessage) -> SendResult:
        """Send one outbox row to an openid; errors map to retry, fail or dead."""
        if message.target.kind != "user":
            return SendResult.undeliverable(
                f"an official account sends to users only, not to a {message.target.kind}"
            )
        openid = message.target.address
        payload = message.payload
        try:
            if isinstance(payload.get("template"), dict):
                return await self._send_template(openid, payload["template"])
            if isinstance(payload.get("subscribe"), dict):
                return await self._send_subscribe(openid, payload["subscribe"])
            return await self._send_text(openid, str(payload.get("text", "")))
        except (WxApiError, WxUnavailable) as exc:
            return send_result_for(exc)

    async def _send_text(self, openid: str, text: str) -> SendResult:
        if not text.strip():
            return SendResult.failed("empty message")
        body = {
            "touser": openid,
            "msgtype": "text",
            "text": {"content": fit_text(text, MAX_TEXT_BYTES)},
        }
        try:
            await self.api.post("/cgi-bin/message/custom/send", body)
        except WxApiError as exc:
            if exc.errcode not in OUT_OF_WINDOW:
                raise
            return await self._send_fallback(openid, text, exc)
        return SendResult.sent()

    async def _send_fallback(self, openid: str, text: str, refused: WxApiError) -> SendResult:
        """The customer-service window is closed: a template or subscribe message instead."""
        config = self.config
        if config.fallback_template_id:
            template: dict[str, Any] = {
                "template_id": config.fallback_template_id,
                "data": {
                    config.fallback_template_field: {"value": _cut(text, TEMPLATE_VALUE_CHARS)}
                },
            }
            if config.fallback_page:
                template["url"] = config.fallback_page
            return await self._send_template(openid, template)
        if config.fallback_subscribe_template_id:
            subscribe: dict[str, Any] = {
                "template_id": config.fallback_subscribe_template_id,
                "data": {
                    config.fallback_subscribe_field: {"value": _cut(text, SUBSCRIBE_THING_CHARS)}
                },
            }
            if config.fallback_page:
                subscribe["page"] = config.fallback_page
            return await self._send_subscribe(openid, subscribe)
        return SendResult.failed(
            f"errcode {refused.errcode}: {refused.errmsg}; no fallback configured "
            "(channels.wechat_mp.fallback_template_id or fallback_subscribe_template_id)"
        )

    # -- other calls -------------------------------------------------------------------------

    async def create_permanent_qrcode(self, scene: str) -> tuple[str, str]:
        """Create a permanent string-scene QR code (``QR_LIMIT_STR_SCENE``): (ticket, url).

        Scanning it subscribes with ``EventKey = qrscene_<scene>``.  The account may make a
        limited number of these, so callers store the answer.  Raises ``WxApiError`` or
        ``WxUnavailable``.
        """
        answer = await self.api.post(
            "/cgi-bin/qrcode/create",
            {"action_name": "QR_LIMIT_STR_SCENE", "action_info": {"scene": {"scene_str": scene}}},
        )
        ticket, url = answer.get("ticket"), answer.get("url")
        if not (isinstance(ticket, str) and ticket and isinstance(url, str) and url):
            raise WxUnavailable("qrcode/create answered without ticket or url")
        return ticket, url

    async def _send_template(self, openid: str, template: dict[str, Any]) -> SendResult:
        answer = await self.api.post(
            "/cgi-bin/message/template/send", {**template, "touser": openid}
        )
        return SendResult.sent(_msg_id(answer))

    async def _send_subscribe(self, openid: str, subscribe: dict[str, Any]) -> SendResult:
        answer = await self.api.post(
            "/cgi-bin/message/subscribe/bizsend", {**subscribe, "touser": openid}
        )
        return SendResult.sent(_msg_id(answer))


def _msg_id(answer: dict[str, Any]) -> str | None:
    value = answer.get("msgid")
    return None if value in (None, "") else str(value)
