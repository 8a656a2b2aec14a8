"""Our small aiohttp client for the WeChat official account, WeCom and WeCom group-robot APIs.

wechatpy's client is synchronous and retries token errors without bound, so outbound calls go
through here instead:

- :class:`AccessTokenHolder` keeps one access token per app id / corp id in the
  ``platform_tokens`` table, shared by every process.  A refresh is done by one process at a time:
  it takes a short lease on the row (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE``
  on SQLite, both through :meth:`Database.write`), fetches the token with no lock held, and stores
  it; the others wait for the row to change.  The HTTP call is made outside the transaction so
  that SQLite's single writer (and with it every inbound message) never waits on Tencent.
- :class:`WxApiClient` makes authenticated calls; 40001, 40014 and 42001 cause exactly one
  refresh and one retry, never a loop.
- :func:`send_result_for` maps an error to the outbox outcome (retry, fail, dead).

Base URLs come from config (``api_base``, ``robot_base``) so tests and staging use a fake.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import aiohttp
from sqlalchemy import Table, select, update

from bot.channels.base import SendResult
from bot.config import WeChatMPConfig, WeComConfig
from storage.db import Database
from storage.models import PlatformToken, utcnow

log = logging.getLogger(__name__)

platform_tokens = cast(Table, PlatformToken.__table__)

TOKEN_ERRORS = frozenset({40001, 40014, 42001})
"""Invalid, not latest or expired access token: refresh once and retry once."""

RATE_LIMITED = {45009: 60.0, 45011: 60.0, 45033: 5.0}
"""Frequency and concurrency limits, with how long to wait before the next attempt (s)."""

BUSY = frozenset({-1})
"""Tencent's "system busy, try again"."""

OUT_OF_WINDOW = frozenset({45015, 45047})
"""Outside the 48-hour customer-service window, or over its message count."""

INVALID_TARGET = frozenset(
    {
        40003,  # invalid openid / userid
        43004,  # the user does not follow the account (any more)
        43019,  # the user blocked the account
        43101,  # the user refused subscribe messages
        60111,  # WeCom: no such userid
        81013,  # WeCom: user, party and tag all invalid
        86001,  # WeCom: bad chatid
        86003,  # WeCom: no such chat
        93000,  # robot: invalid webhook key
    }
)
"""The target can never receive the message: the outbox row is dead."""

HTTP_TIMEOUT_S = 10.0


class WxApiError(Exception):
    """The platform answered with a non-zero ``errcode``."""

    def __init__(self, errcode: int, errmsg: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(f"errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        self.data = data or {}


class WxUnavailable(Exception):
    """No usable answer: network error, timeout, an HTTP error status or a body that is not JSON."""


class TokenUnavailable(WxUnavailable):
    """No access token could be had (the fetch failed, or another process's refresh hung)."""


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    timeout_s: float = HTTP_TIMEOUT_S,
) -> dict[str, Any]:
    """Make one call and return its JSON object; raise ``WxApiError`` for a non-zero errcode.

    Raises ``WxUnavailable`` for a network error, a timeout, a non-2xx status or a body that is
    not a JSON object.
    """
    try:
        async with session.request(
            method,
            url,
            params=params,
            json=body,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            if response.status >= 300:
                raise WxUnavailable(f"HTTP {response.status} from {response.url.path}")
            data = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WxUnavailable(f"{exc.__class__.__name__}: {exc}") from exc
    except ValueError as exc:
        raise WxUnavailable("answer is not JSON") from exc
    if not isinstance(data, dict):
        raise WxUnavailable("answer is not a JSON object")
    errcode = data.get("errcode", 0)
    if errcode not in (0, None, "0"):
        try:
            code = int(errcode)
        except (TypeError, ValueError):
            code = -1
        raise WxApiError(code, str(data.get("errmsg", "")), data)
    return data


TokenFetch = Callable[[], Awaitable[tuple[str, int]]]
"""Fetches a new token from the platform: ``(access_token, expires_in seconds)``."""


@dataclass(frozen=True, slots=True)
class _CachedToken:
    value: str
    usable_until: datetime


class AccessTokenHolder:
    """One platform access token (for one app id / corp id), shared through the database.

    ``app_key`` names the row (e.g. ``wechat_mp:<app_id>``).  Tokens are used until shortly
    before Tencent's expiry (a tenth of the lifetime, at most five minutes, early).
    """

    def __init__(
        self,
        db: Database,
        app_key: str,
        fetch: TokenFetch,
        *,
        lease_s: float = 15.0,
        wait_s: float = 20.0,
        poll_s: float = 0.05,
    ) -> None:
        self.db = db
        self.app_key = app_key
        self.fetch = fetch
        self.lease = timedelta(seconds=lease_s)
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.fetches = 0
        self._cached: _CachedToken | None = None
        self._lock = asyncio.Lock()
        self._insert_row = db.insert_ignore(platform_tokens)

    async def token(self) -> str:
        """A usable token: from memory, else the database, else a refresh."""
        cached = self._cached
        if cached is not None and cached.usable_until > utcnow():
            return cached.value
        async with self._lock:
            cached = self._cached
            if cached is not None and cached.usable_until > utcnow():
                return cached.value
            async with self.db.read() as conn:
                row = (
                    await conn.execute(
                        select(platform_tokens).where(platform_tokens.c.app_key == self.app_key)
                    )
                ).first()
            if row is not None and self._usable(row, stale=None):
                self._cached = _CachedToken(row.token, row.expires_at)
                return str(row.token)
            return await self._refresh_shared(stale=None)

    async def refresh(self, stale: str) -> str:
        """The platform refused ``stale``: get a newer token (one refresh for all processes).

        If another task or process already stored a different usable token, that one is
        returned without calling the platform.
        """
        async with self._lock:
            cached = self._cached
            if cached is not None and cached.value != stale and cached.usable_until > utcnow():
                return cached.value
            return await self._refresh_shared(stale=stale)

    @staticmethod
    def _usable(row: Any, *, stale: str | None) -> bool:
        return bool(
            row.token
            and row.token != stale
            and row.expires_at is not None
            and row.expires_at > utcnow()
        )

    async def _claim_or_take(self, stale: str | None) -> tuple[str | None, datetime | None]:
        """In one short transaction: a token someone else stored, or our lease to refresh."""
        now = utcnow()
        async with self.db.write() as conn:
            await conn.execute(self._insert_row.values(app_key=self.app_key, token=""))
            query = select(platform_tokens).where(platform_tokens.c.app_key == self.app_key)
            if not self.db.is_sqlite:
                query = query.with_for_update()
            row = (await conn.execute(query)).one()
            if self._usable(row, stale=stale):
                self._cached = _CachedToken(row.token, row.expires_at)
                return str(row.token), None
            if row.refreshing_until is not None and row.refreshing_until > now:
                return None, None  # another process is refreshing: wait for it
            lease = now + self.lease
            await conn.execute(
                update(platform_tokens)
                .where(platform_tokens.c.app_key == self.app_key)
                .values(refreshing_until=lease)
            )
            return None, lease

    async def _refresh_shared(self, stale: str | None) -> str:
        deadline = time.monotonic() + self.wait_s
        while True:
            token, lease = await self._claim_or_take(stale)
            if token is not None:
                return token
            if lease is not None:
                return await self._fetch_and_store(lease)
            if time.monotonic() > deadline:
                raise TokenUnavailable(f"{self.app_key}: another process's refresh did not finish")
            await asyncio.sleep(self.poll_s)

    async def _fetch_and_store(self, lease: datetime) -> str:
        mine = (platform_tokens.c.app_key == self.app_key) & (
            platform_tokens.c.refreshing_until == lease
        )
        self.fetches += 1
        try:
            value, expires_in = await self.fetch()
        except BaseException:
            async with self.db.write() as conn:
                await conn.execute(
                    update(platform_tokens).where(mine).values(refreshing_until=None)
                )
            raise
        margin = min(300, max(1, expires_in // 10))
        usable_until = utcnow() + timedelta(seconds=max(1, expires_in - margin))
        async with self.db.write() as conn:
            await conn.execute(
                update(platform_tokens)
                .where(platform_tokens.c.app_key == self.app_key)
                .values(token=value, expires_at=usable_until, refreshing_until=None)
            )
        self._cached = _CachedToken(value, usable_until)
        log.info("access token for %s refreshed (valid %d s)", self.app_key, expires_in)
        return value


def _token_answer(data: dict[str, Any]) -> tuple[str, int]:
    token = data.get("access_token")
    expires_in = data.get("expires_in", 7200)
    if not isinstance(token, str) or not token:
        raise TokenUnavailable("token answer without access_token")
    try:
        return token, int(expires_in)
    except (TypeError, ValueError) as exc:
        raise TokenUnavailable("token answer with a bad expires_in") from exc


async def _fetch_guarded(call: Awaitable[dict[str, Any]], app_key: str) -> tuple[str, int]:
    try:
        return _token_answer(await call)
    except WxApiError as exc:
        # Wrong credentials or a platform failure: nothing a retry of the send can fix now.
        raise TokenUnavailable(f"{app_key}: token refused, {exc}") from exc


class WxApiClient:
    """Authenticated JSON calls to one platform with one token holder."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, tokens: AccessTokenHolder
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` with the access token; one refresh and retry on 40001,
        40014 or 42001.  Raises ``WxApiError`` or ``WxUnavailable``."""
        token = await self.tokens.token()
        try:
            return await self._post(path, body, token)
        except WxApiError as exc:
            if exc.errcode not in TOKEN_ERRORS:
                raise
            log.info("%s answered %s; refreshing the token once", path, exc.errcode)
        token = await self.tokens.refresh(stale=token)
        return await self._post(path, body, token)

    async def _post(self, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
        return await request_json(
            self.session,
            "POST",
            f"{self.base_url}{path}",
            params={"access_token": token},
            body=body,
        )


def official_account_client(
    session: aiohttp.ClientSession, db: Database, config: WeChatMPConfig
) -> WxApiClient:
    """The official account's client; its token comes from ``/cgi-bin/stable_token``.

    The stable token is not forced: forcing it would invalidate the token every other holder
    of the same app id is using, and is limited to a few times a day.
    """
    base = config.api_base.rstrip("/")
    app_key = f"wechat_mp:{config.app_id}"

    async def fetch() -> tuple[str, int]:
        body = {
            "grant_type": "client_credential",
            "appid": config.app_id,
            "secret": config.app_secret,
            "force_refresh": False,
        }
        return await _fetch_guarded(
            request_json(session, "POST", f"{base}/cgi-bin/stable_token", body=body), app_key
        )

    return WxApiClient(session, base, AccessTokenHolder(db, app_key, fetch))


def wecom_client(session: aiohttp.ClientSession, db: Database, config: WeComConfig) -> WxApiClient:
    """A WeCom self-built app's client; its token comes from ``/cgi-bin/gettoken``.

    WeCom tokens belong to a corp id and one app's secret, so the row is per corp and agent.
    """
    base = config.api_base.rstrip("/")
    app_key = f"wecom:{config.corp_id}:{config.agent_id}"

    async def fetch() -> tuple[str, int]:
        params = {"corpid": config.corp_id, "corpsecret": config.secret}
        return await _fetch_guarded(
            request_json(session, "GET", f"{base}/cgi-bin/gettoken", params=params), app_key
        )

    return WxApiClient(session, base, AccessTokenHolder(db, app_key, fetch))


async def send_robot_message(
    session: aiohttp.ClientSession, robot_base: str, key: str, body: dict[str, Any]
) -> dict[str, Any]:
    """POST one message to a WeCom group robot's webhook (no access token: the key is it)."""
    return await request_json(
        session,
        "POST",
        f"{robot_base.rstrip('/')}/cgi-bin/webhook/send",
        params={"key": key},
        body=body,
    )


def send_result_for(exc: Exception) -> SendResult:
    """The outbox outcome of a failed call: back off, retry, fail for good, or dead."""
    if isinstance(exc, WxApiError):
        reason = f"errcode {exc.errcode}: {exc.errmsg}"
        if exc.errcode in RATE_LIMITED:
            return SendResult.transient(reason, retry_after=RATE_LIMITED[exc.errcode])
        if exc.errcode in BUSY or exc.errcode in TOKEN_ERRORS:
            # A token still refused after the one refresh: the outbox retries later, bounded.
            return SendResult.transient(reason)
        if exc.errcode in INVALID_TARGET:
            return SendResult.undeliverable(reason)
        return SendResult.failed(reason)
    if isinstance(exc, WxUnavailable):
        return SendResult.transient(str(exc))
    raise exc


def fit_text(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8 on a character boundary, marked with …."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    cut = encoded[: max_bytes - len("…".encode())].decode("utf-8", "ignore")
    return cut + "…"
