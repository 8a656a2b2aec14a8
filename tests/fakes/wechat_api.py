"""A fake WeChat official account + WeCom + WeCom group-robot API server for tests.

Start it on 127.0.0.1 with a random port and point the channels' API base URL at
``fake.base_url``::

    fake = await start_fake_wechat()
    try:
        ...  # POST f"{fake.base_url}/cgi-bin/message/custom/send?access_token=..."
    finally:
        await fake.close()

Routes follow Tencent's documentation (paths, query parameters, JSON bodies, ``errcode``
answers with HTTP 200).  Every request is recorded in ``fake.calls``.  Access tokens are
issued per credential and checked on every API call: a token the fake never issued answers
40001, an expired one 42001, a missing one 41001.  ``fake.script(path, steps)`` queues
behaviour for the next calls of one path, consumed one step per call before the normal
handling:

- ``{"errcode": 45009}`` (optionally ``"errmsg"``): answer that Tencent error, HTTP 200;
- ``{"status": 503}`` (optionally ``"body"``): answer that HTTP status;
- ``{"json": {...}}``: answer exactly that JSON;
- ``{"delay": 2.0}``: wait, then go on (combine with any of the others, e.g. a slow 503);
- ``{"disconnect": True}``: drop the connection without answering.

``/cgi-bin/qrcode/create`` issues a ticket and a ``http://weixin.qq.com/q/<ticket>`` URL and
keeps every code it made in ``fake.qrcodes`` (scene strings of 1 to 64 characters, numeric
scenes of 1 to 100000 for permanent codes, as Tencent documents).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["ERRMSG", "FakeWeChat", "RecordedCall", "start_fake_wechat"]

ERRMSG: dict[int, str] = {
    0: "ok",
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40003: "invalid openid",
    40008: "invalid message type",
    40013: "invalid appid",
    40014: "invalid access_token",
    40037: "invalid template_id",
    40056: "invalid agentid",
    40058: "content exceed max length",
    40097: "invalid args",
    40125: "invalid appsecret",
    41001: "access_token missing",
    42001: "access_token expired",
    44004: "empty content",
    45009: "api freq out of limit",
    45015: "response out of time limit or subscription is canceled",
    47001: "data format error",
    86003: "chat not found",
    93000: "invalid webhook url",
}

TOKEN_TTL_S = 7200
ROBOT_TEXT_MAX_BYTES = 2048
ROBOT_MARKDOWN_MAX_BYTES = 4096

_MP = ("mp", "mp_stable")
_WECOM = ("wecom",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One request the fake received: method, path, query, parsed JSON body (or None)."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    text: str = ""


@dataclass(slots=True)
class _Token:
    kind: str  # "mp", "mp_stable" or "wecom"
    owner: str  # app id or corp id
    expires_at: float
    revoked_at: float = float("inf")  # superseded by a newer token: 40001 "not latest"


def _tencent(errcode: int, errmsg: str | None = None, **fields: Any) -> web.Response:
    return web.json_response(
        {"errcode": errcode, "errmsg": errmsg or ERRMSG.get(errcode, "error"), **fields}
    )


@dataclass
class FakeWeChat:
    """The running fake; build it with ``start_fake_wechat``."""

    app_id: str = "wx_fake_app"
    app_secret: str = "fake_app_secret"
    corp_id: str = "ww_fake_corp"
    corp_secret: str = "fake_corp_secret"
    robot_keys: frozenset[str] | None = None
    token_ttl_s: int = TOKEN_TTL_S
    old_token_grace_s: float = 300.0
    robot_rate_per_min: int = 20
    calls: list[RecordedCall] = field(default_factory=list)
    base_url: str = ""
    chats: dict[str, dict[str, Any]] = field(default_factory=dict)
    qrcodes: list[dict[str, Any]] = field(default_factory=list)
    _tokens: dict[str, _Token] = field(default_factory=dict)
    _scripts: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)
    _robot_sent: dict[str, deque[float]] = field(default_factory=dict)
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    # --- control from tests ---------------------------------------------------------------

    def script(self, path: str, steps: Iterable[dict[str, Any]]) -> None:
        """Queue ``steps`` for the next calls to ``path`` (appended after any still queued)."""
        self._scripts.setdefault(path, deque()).extend(dict(step) for step in steps)

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired (the next use answers 42001)."""
        now = time.monotonic()
        for token in self._tokens.values():
            token.expires_at = min(token.expires_at, now - 1)

    def calls_to(self, path: str) -> list[RecordedCall]:
        """The recorded calls to ``path``, oldest first."""
        return [call for call in self.calls if call.path == path]

    def valid_tokens(self) -> list[str]:
        """The access tokens that would be accepted right now."""
        now = time.monotonic()
        return [
            value
            for value, token in self._tokens.items()
            if token.expires_at > now and token.revoked_at > now
        ]

    async def close(self) -> None:
        """Stop the server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- tokens ---------------------------------------------------------------------------

    def _next_id(self) -> int:
        return next(self._counter)

    def _issue_token(self, kind: str, owner: str) -> str:
        now = time.monotonic()
        value = f"{kind}-token-{self._next_id()}-{int(time.time())}"
        self._tokens[value] = _Token(kind, owner, now + self.token_ttl_s)
        return value

    def _current_token(self, kind: str, owner: str) -> tuple[str, float] | None:
        now = time.monotonic()
        best: tuple[str, float] | None = None
        for value, token in self._tokens.items():
            usable = token.expires_at > now and token.revoked_at > now
            newer = best is None or token.expires_at > best[1]
            if token.kind == kind and token.owner == owner and usable and newer:
                best = (value, token.expires_at)
        return best

    def _revoke_tokens(self, kind: str, owner: str, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        for token in self._tokens.values():
            if token.kind == kind and token.owner == owner:
                token.revoked_at = min(token.revoked_at, deadline)

    def _check_token(self, request: web.Request, kinds: tuple[str, ...]) -> web.Response | None:
        value = request.query.get("access_token", "")
        if not value:
            return _tencent(41001)
        token = self._tokens.get(value)
        now = time.monotonic()
        if token is None or token.kind not in kinds or token.revoked_at <= now:
            return _tencent(40001)
        if token.expires_at <= now:
            return _tencent(42001)
        return None

    # --- middleware: record and script ----------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        text = await request.text() if request.can_read_body else ""
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        self.calls.append(
            RecordedCall(request.method, request.path, dict(request.query), body, text)
        )
        queue = self._scripts.get(request.path)
        step = queue.popleft() if queue else None
        if step is not None:
            if step.get("delay"):
                await asyncio.sleep(float(step["delay"]))
            if step.get("disconnect"):
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)
            if "status" in step:
                return web.Response(status=int(step["status"]), text=str(step.get("body", "")))
            if "json" in step:
                return web.json_response(step["json"])
            if "errcode" in step:
                return _tencent(int(step["errcode"]), step.get("errmsg"))
        return await handler(request)

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    # --- official account -----------------------------------------------------------------

    async def _mp_token(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("grant_type") != "client_credential":
            return _tencent(40002, "invalid grant_type")
        if query.get("appid") != self.app_id:
            return _tencent(40013)
        if query.get("secret") != self.app_secret:
            return _tencent(40125)
        # A new token each call; the previous ones keep working for a grace period only.
        self._revoke_tokens("mp", self.app_id, self.old_token_grace_s)
        token = self._issue_token("mp", self.app_id)
        return web.json_response({"access_token": token, "expires_in": self.token_ttl_s})

    async def _mp_stable_token(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if body is None:
            return _tencent(47001)
        if body.get("grant_type") != "client_credential":
            return _tencent(40002, "invalid grant_type")
        if body.get("appid") != self.app_id:
            return _tencent(40013)
        if body.get("secret") != self.app_secret:
            return _tencent(40125)
        current = self._current_token("mp_stable", self.app_id)
        if current is not None and not body.get("force_refresh"):
            value, expires_at = current
            remaining = max(1, int(expires_at - time.monotonic()))
            return web.json_response({"access_token": value, "expires_in": remaining})
        # force_refresh invalidates the previous stable token at once.
        self._revoke_tokens("mp_stable", self.app_id, -1)
        token = self._issue_token("mp_stable", self.app_id)
        return web.json_response({"access_token": token, "expires_in": self.token_ttl_s})

    async def _api_body(
        self, request: web.Request, kinds: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, Any] | web.Response:
        """The JSON body of an API call, or the error answer (token, format, missing field)."""
        error = self._check_token(request, kinds)
        if error is not None:
            return error
        body = await self._json_body(request)
        if body is None:
            return _tencent(47001)
        for name in required:
            if not body.get(name):
                return _tencent(40003 if name == "touser" else 40097, f"missing {name}")
        return body

    async def _mp_custom_send(self, request: web.Request) -> web.Response:
        body = await self._api_body(request, _MP, ("touser", "msgtype"))
        if isinstance(body, web.Response):
            return body
        msgtype = body["msgtype"]
        if msgtype == "text":
            content = (body.get("text") or {}).get("content", "")
            if not content:
                return _tencent(44004)
        elif msgtype not in ("image", "voice", "video", "music", "news", "mpnews", "menu"):
            return _tencent(40008)
        return _tencent(0)

    async def _mp_template_send(self, request: web.Request) -> web.Response:
        body = await self._api_body(request, _MP, ("touser", "template_id"))
        if isinstance(body, web.Response):
            return body
        return _tencent(0, msgid=self._next_id())

    async def _mp_subscribe_send(self, request: web.Request) -> web.Response:
        body = await self._api_body(request, _MP, ("touser", "template_id", "data"))
        if isinstance(body, web.Response):
            return body
        return _tencent(0, msgid=self._next_id())

    async def _mp_qrcode_create(self, request: web.Request) -> web.Response:
        body = await self._api_body(request, _MP, ("action_name", "action_info"))
        if isinstance(body, web.Response):
            return body
        action = body["action_name"]
        if action not in ("QR_SCENE", "QR_STR_SCENE", "QR_LIMIT_SCENE", "QR_LIMIT_STR_SCENE"):
            return _tencent(40097, "invalid action_name")
        scene = (body.get("action_info") or {}).get("scene") or {}
        if action.endswith("STR_SCENE"):
            value = scene.get("scene_str")
            if not isinstance(value, str) or not 1 <= len(value) <= 64:
                return _tencent(40097, "invalid scene_str")
        else:
            value = scene.get("scene_id")
            high = 100000 if action == "QR_LIMIT_SCENE" else 2**32 - 1
            if not isinstance(value, int) or not 1 <= value <= high:
                return _tencent(40097, "invalid scene_id")
        ticket = f"fake-ticket-{self._next_id()}"
        answer: dict[str, Any] = {"ticket": ticket, "url": f"http://weixin.qq.com/q/{ticket}"}
        if not action.startswith("QR_LIMIT"):
            answer["expire_seconds"] = int(body.get("expire_seconds") or 60)
        self.qrcodes.append({"action_name": action, "scene": value, **answer})
        return web.json_response(answer)

    # --- WeCom ----------------------------------------------------------------------------

    async def _wecom_gettoken(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("corpid") != self.corp_id:
            return _tencent(40013, "invalid corpid")
        if query.get("corpsecret") != self.corp_secret:
            return _tencent(40001, "invalid secret")
        # WeCom answers the same token while it is valid.
        current = self._current_token("wecom", self.corp_id)
        if current is not None:
            value, expires_at = current
            remaining = max(1, int(expires_at - time.monotonic()))
            return _tencent(0, access_token=value, expires_in=remaining)
        token = self._issue_token("wecom", self.corp_id)
        return _tencent(0, access_token=token, expires_in=self.token_ttl_s)

    async def _wecom_message_send(self, request: web.Request) -> web.Response:
        body = await self._api_body(request, _WECOM)
        if isinstance(body, web.Response):
            return body
        if not (body.get("touser") or body.get("toparty") or body.get("totag")):
            return _tencent(40097, "missing touser, toparty and totag")
        if not body.get("agentid"):
            return _tencent(40056)
        if not body.get("msgtype"):
            return _tencent(40008)
        if body["msgtype"] == "text" and not (body.get("text") or {}).get("content"):
            return _tencent(44004)
        return _tencent(
            0,
            invaliduser="",
            invalidparty="",
            invalidtag="",
            unlicenseduser="",
            msgid=f"fake-msg-{self._next_id()}",
        )

    async def _wecom_appchat_create(self, request: web.Request) -> web.Response:
        body = await self._api_body(request, _WECOM)
        if isinstance(body, web.Response):
            return body
        members = body.get("userlist") or []
        if not isinstance(members, list) or len(members) < 2:
            return _tencent(40097, "userlist needs at least 2 members")
        chat_id = str(body.get("chatid") or f"fakechat{self._next_id()}")
        self.chats[chat_id] = body
        return _tencent(0, chatid=chat_id)

    async def _wecom_appchat_send(self, request: web.Request) -> web.Response:
        body = await self._api_body(request, _WECOM)
        if isinstance(body, web.Response):
            return body
        if not body.get("chatid"):
            return _tencent(86003)
        if not body.get("msgtype"):
            return _tencent(40008)
        if body["msgtype"] == "text" and not (body.get("text") or {}).get("content"):
            return _tencent(44004)
        return _tencent(0)

    # --- group robot ----------------------------------------------------------------------

    async def _robot_send(self, request: web.Request) -> web.Response:
        key = request.query.get("key", "")
        if not key or (self.robot_keys is not None and key not in self.robot_keys):
            return _tencent(93000)
        body = await self._json_body(request)
        if body is None:
            return _tencent(47001)
        msgtype = body.get("msgtype")
        if msgtype in ("text", "markdown"):
            content = str((body.get(msgtype) or {}).get("content", ""))
            if not content:
                return _tencent(44004)
            limit = ROBOT_TEXT_MAX_BYTES if msgtype == "text" else ROBOT_MARKDOWN_MAX_BYTES
            if len(content.encode("utf-8")) > limit:
                return _tencent(40058, f"{msgtype}.content exceed max length {limit}")
        elif msgtype not in ("image", "news", "file", "voice", "template_card"):
            return _tencent(40008)
        if self.robot_rate_per_min > 0:
            now = time.monotonic()
            sent = self._robot_sent.setdefault(key, deque())
            while sent and sent[0] <= now - 60:
                sent.popleft()
            if len(sent) >= self.robot_rate_per_min:
                return _tencent(45009)
            sent.append(now)
        return _tencent(0)

    # --- assembly -------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application with Tencent's routes."""
        app = web.Application(middlewares=[self._middleware])

        app.router.add_get("/cgi-bin/token", self._mp_token)
        app.router.add_post("/cgi-bin/stable_token", self._mp_stable_token)
        app.router.add_post("/cgi-bin/message/custom/send", self._mp_custom_send)
        app.router.add_post("/cgi-bin/message/template/send", self._mp_template_send)
        app.router.add_post("/cgi-bin/message/subscribe/bizsend", self._mp_subscribe_send)
        app.router.add_post("/cgi-bin/qrcode/create", self._mp_qrcode_create)
        app.router.add_get("/cgi-bin/gettoken", self._wecom_gettoken)
        app.router.add_post("/cgi-bin/message/send", self._wecom_message_send)
        app.router.add_post("/cgi-bin/appchat/create", self._wecom_appchat_create)
        app.router.add_post("/cgi-bin/appchat/send", self._wecom_appchat_send)
        app.router.add_post("/cgi-bin/webhook/send", self._robot_send)
        return app


async def start_fake_wechat(
    *,
    app_id: str = "wx_fake_app",
    app_secret: str = "fake_app_secret",
    corp_id: str = "ww_fake_corp",
    corp_secret: str = "fake_corp_secret",
    robot_keys: Iterable[str] | None = None,
    token_ttl_s: int = TOKEN_TTL_S,
    old_token_grace_s: float = 300.0,
    robot_rate_per_min: int = 20,
) -> FakeWeChat:
    """Start a fake on 127.0.0.1 with a free port; ``await fake.close()`` when done.

    ``robot_keys`` limits the accepted robot webhook keys (any non-empty key by default).
    ``old_token_grace_s`` is how long a ``/cgi-bin/token`` token keeps working once a newer
    one is issued (Tencent: 5 minutes; 0 models "a second refresh breaks the first holder").
    ``robot_rate_per_min`` is the per-key robot limit (0 disables).
    """
    fake = FakeWeChat(
        app_id=app_id,
        app_secret=app_secret,
        corp_id=corp_id,
        corp_secret=corp_secret,
        robot_keys=frozenset(robot_keys) if robot_keys is not None else None,
        token_ttl_s=token_ttl_s,
        old_token_grace_s=old_token_grace_s,
        robot_rate_per_min=robot_rate_per_min,
    )
    runner = web.AppRunner(fake.build_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base_url = f"http://{host}:{port}"
    fake._runner = runner
    return fake
