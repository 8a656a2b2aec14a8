"""The fake WeChat / WeCom / robot API server behaves like Tencent where our code relies on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from fakes.wechat_api import FakeWeChat, start_fake_wechat


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    server = await start_fake_wechat(robot_keys=["grid-7-key"], robot_rate_per_min=3)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _get(http: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with http.get(url, params=params) as response:
        assert response.status == 200
        return await response.json()


async def _post(http: aiohttp.ClientSession, url: str, body: Any, **params: str) -> Any:
    async with http.post(url, json=body, params=params) as response:
        assert response.status == 200
        return await response.json()


async def _mp_token(fake: FakeWeChat, http: aiohttp.ClientSession) -> str:
    answer = await _get(
        http,
        f"{fake.base_url}/cgi-bin/token",
        grant_type="client_credential",
        appid=fake.app_id,
        secret=fake.app_secret,
    )
    assert answer["expires_in"] == 7200
    return str(answer["access_token"])


TEXT = {"touser": "o_resident", "msgtype": "text", "text": {"content": "请完成今日健康打卡"}}


async def test_mp_token_is_issued_and_accepted(
    fake: FakeWeChat, http: aiohttp.ClientSession
) -> None:
    token = await _mp_token(fake, http)
    url = f"{fake.base_url}/cgi-bin/message/custom/send"
    assert await _post(http, url, TEXT, access_token=token) == {"errcode": 0, "errmsg": "ok"}
    call = fake.calls_to("/cgi-bin/message/custom/send")[0]
    assert call.method == "POST"
    assert call.query == {"access_token": token}
    assert call.json == TEXT


async def test_wrong_missing_and_expired_tokens_answer_like_tencent(
    fake: FakeWeChat, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.base_url}/cgi-bin/message/custom/send"
    assert (await _post(http, url, TEXT))["errcode"] == 41001
    assert (await _post(http, url, TEXT, access_token="forged"))["errcode"] == 40001
    token = await _mp_token(fake, http)
    fake.expire_tokens()
    assert (await _post(http, url, TEXT, access_token=token))["errcode"] == 42001
    assert fake.valid_tokens() == []


async def test_wrong_app_secret_is_refused(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    answer = await _get(
        http,
        f"{fake.base_url}/cgi-bin/token",
        grant_type="client_credential",
        appid=fake.app_id,
        secret="guess",
    )
    assert answer["errcode"] == 40125
    assert fake.valid_tokens() == []


async def test_second_refresh_supersedes_first_token_after_grace(
    http: aiohttp.ClientSession,
) -> None:
    fake = await start_fake_wechat(old_token_grace_s=0)
    try:
        first = await _mp_token(fake, http)
        second = await _mp_token(fake, http)
        url = f"{fake.base_url}/cgi-bin/message/custom/send"
        assert (await _post(http, url, TEXT, access_token=first))["errcode"] == 40001
        assert (await _post(http, url, TEXT, access_token=second))["errcode"] == 0
    finally:
        await fake.close()


async def test_stable_token_is_stable_until_forced(
    fake: FakeWeChat, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.base_url}/cgi-bin/stable_token"
    body = {"grant_type": "client_credential", "appid": fake.app_id, "secret": fake.app_secret}
    first = await _post(http, url, body)
    again = await _post(http, url, body)
    assert first["access_token"] == again["access_token"]
    assert first["expires_in"] == 7200
    forced = await _post(http, url, {**body, "force_refresh": True})
    assert forced["access_token"] != first["access_token"]
    send = f"{fake.base_url}/cgi-bin/message/template/send"
    template = {"touser": "o_resident", "template_id": "tpl", "data": {}}
    assert (await _post(http, send, template, access_token=first["access_token"]))[
        "errcode"
    ] == 40001
    answer = await _post(http, send, template, access_token=forced["access_token"])
    assert answer["errcode"] == 0
    assert "msgid" in answer


async def test_scripted_steps_are_consumed_one_per_call(
    fake: FakeWeChat, http: aiohttp.ClientSession
) -> None:
    token = await _mp_token(fake, http)
    path = "/cgi-bin/message/custom/send"
    fake.script(
        path,
        [{"errcode": 42001}, {"errcode": 45009}, {"status": 503}, {"json": {"weird": True}}],
    )
    url = f"{fake.base_url}{path}"
    params = {"access_token": token}
    assert (await _post(http, url, TEXT, **params)) == {
        "errcode": 42001,
        "errmsg": "access_token expired",
    }
    assert (await _post(http, url, TEXT, **params))["errcode"] == 45009
    async with http.post(url, json=TEXT, params=params) as response:
        assert response.status == 503
    assert (await _post(http, url, TEXT, **params)) == {"weird": True}
    assert (await _post(http, url, TEXT, **params))["errcode"] == 0
    assert len(fake.calls_to(path)) == 5


async def test_scripted_delay_and_disconnect(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    url = f"{fake.base_url}/cgi-bin/webhook/send"
    body = {"msgtype": "text", "text": {"content": "通知"}}
    fake.script("/cgi-bin/webhook/send", [{"delay": 0.5}, {"disconnect": True}])
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            url, json=body, params={"key": "grid-7-key"}, timeout=aiohttp.ClientTimeout(0.05)
        ):
            pass
    with pytest.raises(aiohttp.ClientError):
        async with http.post(url, json=body, params={"key": "grid-7-key"}):
            pass
    assert (await _post(http, url, body, key="grid-7-key"))["errcode"] == 0


async def test_wecom_token_message_and_appchat(
    fake: FakeWeChat, http: aiohttp.ClientSession
) -> None:
    base = fake.base_url
    first = await _get(
        http, f"{base}/cgi-bin/gettoken", corpid=fake.corp_id, corpsecret=fake.corp_secret
    )
    again = await _get(
        http, f"{base}/cgi-bin/gettoken", corpid=fake.corp_id, corpsecret=fake.corp_secret
    )
    assert first["errcode"] == 0
    assert first["access_token"] == again["access_token"]
    token = first["access_token"]
    message = {
        "touser": "zhangsan",
        "msgtype": "text",
        "agentid": 1000002,
        "text": {"content": "x"},
    }
    sent = await _post(http, f"{base}/cgi-bin/message/send", message, access_token=token)
    assert sent["errcode"] == 0
    assert sent["invaliduser"] == ""
    created = await _post(
        http,
        f"{base}/cgi-bin/appchat/create",
        {"name": "网格7群", "owner": "zhangsan", "userlist": ["zhangsan", "lisi"]},
        access_token=token,
    )
    chat = {"chatid": created["chatid"], "msgtype": "text", "text": {"content": "通知"}}
    assert (await _post(http, f"{base}/cgi-bin/appchat/send", chat, access_token=token)) == {
        "errcode": 0,
        "errmsg": "ok",
    }
    assert created["chatid"] in fake.chats
    # An official-account token is not a WeCom token.
    mp_token = await _mp_token(fake, http)
    wrong = await _post(http, f"{base}/cgi-bin/message/send", message, access_token=mp_token)
    assert wrong["errcode"] == 40001


async def test_robot_checks_key_length_and_rate(
    fake: FakeWeChat, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.base_url}/cgi-bin/webhook/send"
    body = {"msgtype": "text", "text": {"content": "通知"}}
    assert (await _post(http, url, body, key="unknown"))["errcode"] == 93000
    long_text = {"msgtype": "text", "text": {"content": "字" * 683}}  # 2049 bytes
    assert (await _post(http, url, long_text, key="grid-7-key"))["errcode"] == 40058
    answers = [(await _post(http, url, body, key="grid-7-key"))["errcode"] for _ in range(4)]
    assert answers == [0, 0, 0, 45009]


async def test_qrcode_create(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    token = await _mp_token(fake, http)
    body = {
        "expire_seconds": 604800,
        "action_name": "QR_STR_SCENE",
        "action_info": {"scene": {"scene_str": "grid-7"}},
    }
    answer = await _post(http, f"{fake.base_url}/cgi-bin/qrcode/create", body, access_token=token)
    assert answer["ticket"]
    assert answer["expire_seconds"] == 604800
    assert answer["url"].startswith("http://weixin.qq.com/q/")


async def test_permanent_qrcode_scenes_are_checked_and_kept(
    fake: FakeWeChat, http: aiohttp.ClientSession
) -> None:
    token = await _mp_token(fake, http)
    url = f"{fake.base_url}/cgi-bin/qrcode/create"

    def body(action: str, **scene: Any) -> dict[str, Any]:
        return {"action_name": action, "action_info": {"scene": scene}}

    made = await _post(http, url, body("QR_LIMIT_STR_SCENE", scene_str="G0101"), access_token=token)
    assert "expire_seconds" not in made
    for bad in (
        body("QR_LIMIT_STR_SCENE", scene_str="G" * 65),
        body("QR_LIMIT_STR_SCENE", scene_str=""),
        body("QR_LIMIT_SCENE", scene_id=100001),
        body("QR_FOREVER", scene_str="G0101"),
    ):
        assert (await _post(http, url, bad, access_token=token))["errcode"] == 40097
    assert fake.qrcodes == [
        {
            "action_name": "QR_LIMIT_STR_SCENE",
            "scene": "G0101",
            "ticket": made["ticket"],
            "url": made["url"],
        }
    ]
    assert len(fake.calls_to("/cgi-bin/qrcode/create")) == 5


async def test_every_call_is_recorded_including_token_and_unknown_paths(
    fake: FakeWeChat, http: aiohttp.ClientSession
) -> None:
    await _mp_token(fake, http)
    async with http.post(f"{fake.base_url}/cgi-bin/nowhere", json={"a": 1}) as response:
        assert response.status == 404
    assert [call.path for call in fake.calls] == ["/cgi-bin/token", "/cgi-bin/nowhere"]
    assert fake.calls[1].json == {"a": 1}
