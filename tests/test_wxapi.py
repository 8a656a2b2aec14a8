"""Our WeChat / WeCom API client: the shared access token, one refresh and one retry, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest
from fakes.wechat_api import FakeWeChat, start_fake_wechat
from sqlalchemy import select, update

from bot.config import WeChatMPConfig, WeComConfig
from bot.wxapi import (
    TokenUnavailable,
    WxApiError,
    WxUnavailable,
    fit_text,
    official_account_client,
    send_result_for,
    wecom_client,
)
from storage.db import Database
from storage.models import PlatformToken, utcnow

STABLE = "/cgi-bin/stable_token"
SEND = "/cgi-bin/message/custom/send"
TEXT = {"touser": "o_1", "msgtype": "text", "text": {"content": "你好"}}
tokens = PlatformToken.__table__


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    server = await start_fake_wechat()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
async def other_db(database_url: str) -> AsyncIterator[Database]:
    """A second engine on the same database: another process, as far as locking goes."""
    database = Database(database_url)
    yield database
    await database.dispose()


def mp(fake: FakeWeChat, **kw: str) -> WeChatMPConfig:
    return WeChatMPConfig(
        enabled=True,
        app_id=fake.app_id,
        app_secret=kw.get("secret", fake.app_secret),
        token="t",
        api_base=fake.base_url,
    )


async def token_row(db: Database):
    async with db.read() as conn:
        return (await conn.execute(select(tokens))).one()


async def test_token_is_stored_with_its_expiry_and_shared(fake, session, db, other_db):
    first = official_account_client(session, db, mp(fake))
    second = official_account_client(session, other_db, mp(fake))
    value = await first.tokens.token()
    assert await second.tokens.token() == value
    assert len(fake.calls_to(STABLE)) == 1
    assert fake.calls_to(STABLE)[0].json["force_refresh"] is False
    row = await token_row(db)
    assert row.app_key == f"wechat_mp:{fake.app_id}"
    assert row.token == value
    assert row.refreshing_until is None
    # Used until five minutes before Tencent's two hours.
    expected = utcnow() + timedelta(seconds=7200 - 300)
    assert abs((row.expires_at - expected).total_seconds()) < 5


async def test_concurrent_refresh_in_two_processes_calls_the_platform_once(
    fake, session, db, other_db
):
    first = official_account_client(session, db, mp(fake))
    second = official_account_client(session, other_db, mp(fake))
    stale = await first.tokens.token()
    assert await second.tokens.token() == stale
    fake.expire_tokens()
    refreshed = await asyncio.gather(
        *[holder.refresh(stale) for holder in (first.tokens, second.tokens) for _ in range(5)]
    )
    assert len(set(refreshed)) == 1
    assert refreshed[0] != stale
    assert len(fake.calls_to(STABLE)) == 2
    assert first.tokens.fetches + second.tokens.fetches == 2


@pytest.mark.parametrize("errcode", [40001, 40014, 42001])
async def test_token_error_causes_one_refresh_and_one_retry(fake, session, db, errcode):
    client = official_account_client(session, db, mp(fake))
    fake.script(SEND, [{"errcode": errcode}])
    assert (await client.post(SEND, TEXT))["errcode"] == 0
    assert len(fake.calls_to(SEND)) == 2
    assert len(fake.calls_to(STABLE)) == 2


async def test_token_error_after_the_refresh_is_raised_not_retried(fake, session, db):
    client = official_account_client(session, db, mp(fake))
    fake.script(SEND, [{"errcode": 40001}] * 5)
    with pytest.raises(WxApiError) as caught:
        await client.post(SEND, TEXT)
    assert caught.value.errcode == 40001
    assert len(fake.calls_to(SEND)) == 2
    assert len(fake.calls_to(STABLE)) == 2
    assert send_result_for(caught.value).retry


async def test_refresh_waits_for_another_process_that_holds_the_lease(fake, session, db):
    client = official_account_client(session, db, mp(fake))
    client.tokens.poll_s = 0.02
    async with db.write() as conn:
        await conn.execute(
            tokens.insert().values(
                app_key=client.tokens.app_key,
                token="",
                refreshing_until=utcnow() + timedelta(seconds=10),
            )
        )

    async def other_process_finishes() -> None:
        await asyncio.sleep(0.2)
        async with db.write() as conn:
            await conn.execute(
                update(tokens).values(
                    token="from-the-other-process",
                    expires_at=utcnow() + timedelta(hours=1),
                    refreshing_until=None,
                )
            )

    waiting = asyncio.ensure_future(client.tokens.token())
    await other_process_finishes()
    assert await waiting == "from-the-other-process"
    assert fake.calls_to(STABLE) == []


async def test_lease_of_a_dead_process_is_taken_over(fake, session, db):
    client = official_account_client(session, db, mp(fake))
    async with db.write() as conn:
        await conn.execute(
            tokens.insert().values(
                app_key=client.tokens.app_key,
                token="old",
                expires_at=utcnow() - timedelta(minutes=1),
                refreshing_until=utcnow() - timedelta(seconds=1),
            )
        )
    assert (await client.tokens.token()).startswith("mp_stable-token-")
    assert len(fake.calls_to(STABLE)) == 1


async def test_failed_fetch_releases_the_lease(fake, session, db):
    client = official_account_client(session, db, mp(fake, secret="wrong"))
    with pytest.raises(TokenUnavailable, match="40125"):
        await client.tokens.token()
    row = await token_row(db)
    assert row.refreshing_until is None
    assert row.token == ""
    # A send that cannot get a token is retried later, not lost.
    with pytest.raises(TokenUnavailable) as caught:
        await client.post(SEND, TEXT)
    assert send_result_for(caught.value).retry


async def test_wecom_token_comes_from_gettoken_per_corp_and_agent(fake, session, db):
    config = WeComConfig(
        enabled=True,
        corp_id=fake.corp_id,
        agent_id=1000002,
        secret=fake.corp_secret,
        token="t",
        encoding_aes_key="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        api_base=fake.base_url,
    )
    client = wecom_client(session, db, config)
    value = await client.tokens.token()
    (call,) = fake.calls_to("/cgi-bin/gettoken")
    assert call.query == {"corpid": fake.corp_id, "corpsecret": fake.corp_secret}
    assert (await token_row(db)).app_key == f"wecom:{fake.corp_id}:1000002"
    assert value.startswith("wecom-token-")


async def test_http_errors_and_bad_answers_are_unavailable(fake, session, db):
    client = official_account_client(session, db, mp(fake))
    fake.script(SEND, [{"status": 503}, {"json": ["not", "an", "object"]}, {"disconnect": True}])
    for _ in range(3):
        with pytest.raises(WxUnavailable):
            await client.post(SEND, TEXT)


@pytest.mark.parametrize(
    ("errcode", "outcome"),
    [
        (45009, "retry"),
        (45011, "retry"),
        (-1, "retry"),
        (40003, "dead"),
        (43004, "dead"),
        (93000, "dead"),
        (86003, "dead"),
        (40037, "failed"),
        (44004, "failed"),
    ],
)
def test_errors_map_to_outbox_outcomes(errcode: int, outcome: str) -> None:
    result = send_result_for(WxApiError(errcode, "x"))
    assert not result.ok
    assert (result.retry, result.dead) == (outcome == "retry", outcome == "dead")
    assert str(errcode) in result.error
    if errcode in (45009, 45011):
        assert result.retry_after == 60.0


def test_fit_text_cuts_on_a_character_boundary() -> None:
    assert fit_text("短", 2048) == "短"
    cut = fit_text("谣" * 1000, 2048)
    assert len(cut.encode()) <= 2048
    assert cut.endswith("…")
