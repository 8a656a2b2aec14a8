"""Console login, sessions and CSRF, through the real app on both databases."""

from __future__ import annotations

import asyncio
import json
import time

from cryptography.fernet import Fernet
from sqlalchemy import func, select

from bot.console.passwords import set_password
from bot.console.site import COOKIE_NAME
from storage.console import attempts, credentials
from storage.repo import audit
from tests.console_support import (
    PASSWORD,
    SESSION_KEY,
    csrf_of,
    give_password,
    logged_in,
    login,
    put_session_cookie,
    session_cookie,
    start_console,
    without_tags,
)


async def audit_actions(db, actor_id=None) -> list[str]:
    async with db.read() as conn:
        query = select(audit.c.action).order_by(audit.c.id)
        if actor_id is not None:
            query = query.where(audit.c.actor_id == actor_id)
        return [r.action for r in await conn.execute(query)]


async def test_login_with_the_right_password_opens_the_overview(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    phone = await give_password(db, demo.admin_id)
    first = await client.get("/console/", allow_redirects=False)
    assert first.status == 302
    assert first.headers["Location"] == "/console/login?next=/console/"

    response = await login(client, phone)
    assert response.status == 302
    assert response.headers["Location"] == "/console/"
    cookie = response.cookies[COOKIE_NAME]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/console"
    page = await client.get("/console/")
    text = without_tags(await page.text())
    assert page.status == 200
    assert "欢迎，区管理员" in text and "桃园社区第1网格" in text
    assert page.headers["Cache-Control"] == "no-store"
    assert await audit_actions(db, demo.admin_id) == ["console.login", "console.overview"]


async def test_login_goes_back_to_the_page_asked_for_and_never_elsewhere(
    db, demo, start_app, make_config
):
    client, _ = await start_console(start_app, make_config)
    phone = await give_password(db, demo.admin_id)
    page = await client.get("/console/login?next=/console/audit")
    token = csrf_of(await page.text())
    response = await client.post(
        "/console/login",
        data={
            "account": phone,
            "password": PASSWORD,
            "csrf_token": token,
            "next": "/console/audit",
        },
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/console/audit"
    await client.post(
        "/console/logout",
        data={"csrf_token": csrf_of(await (await client.get("/console/")).text())},
    )
    page = await client.get("/console/login")
    response = await client.post(
        "/console/login",
        data={
            "account": phone,
            "password": PASSWORD,
            "csrf_token": csrf_of(await page.text()),
            "next": "//evil.example/console/",
        },
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/console/"


async def test_wrong_password_is_refused_and_counted(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    phone = await give_password(db, demo.admin_id)
    response = await login(client, phone, "not-the-password")
    assert response.status == 401
    assert "手机号或密码不正确" in await response.text()
    unknown = await login(client, "13900000000", PASSWORD)
    assert unknown.status == 401
    assert (await client.get("/console/", allow_redirects=False)).status == 302
    async with db.read() as conn:
        rows = list(await conn.execute(select(attempts).order_by(attempts.c.id)))
        targets = [
            r.target_id
            for r in await conn.execute(
                select(audit.c.target_id).where(audit.c.action == "console.login.failed")
            )
        ]
    assert [(r.account, r.succeeded) for r in rows] == [(phone, False), ("13900000000", False)]
    # The audit names the account masked (the log is read by admins, not only by its owner).
    assert targets == [phone[:3] + "****" + phone[-4:], "139****0000"]


async def test_empty_form_is_a_400_with_a_reason(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    page = await client.get("/console/login")
    response = await client.post(
        "/console/login",
        data={"account": "", "password": "", "csrf_token": csrf_of(await page.text())},
    )
    assert response.status == 400
    assert "请填写手机号和密码" in await response.text()


async def test_people_without_a_staff_role_cannot_log_in(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    resident = await give_password(db, demo.resident_ids[0])
    volunteer = await give_password(db, demo.volunteer_id)
    for phone in (resident, volunteer):
        response = await login(client, phone)
        assert response.status == 403
        assert "没有管理台权限" in await response.text()
    assert (await client.get("/console/", allow_redirects=False)).status == 302


async def test_failed_logins_per_account_are_limited_across_the_database(
    db, demo, start_app, make_config
):
    # Two apps on one database stand for two processes: the count is in the database.
    first, _ = await start_console(start_app, make_config, max_failures_per_account=2)
    second, _ = await start_console(start_app, make_config, max_failures_per_account=2)
    phone = await give_password(db, demo.admin_id)
    assert (await login(first, phone, "wrong-one-1")).status == 401
    assert (await login(second, phone, "wrong-two-2")).status == 401
    limited = await login(first, phone)  # even the right password, for the window
    assert limited.status == 429
    assert "登录失败次数过多" in await limited.text()
    assert (await first.get("/console/", allow_redirects=False)).status == 302
    assert "console.login.limited" in await audit_actions(db)


async def test_concurrent_wrong_passwords_cannot_outrun_the_account_limit(
    db, demo, start_app, make_config
):
    # The count was read before any attempt was written: ten guesses sent at once were all
    # checked against the password although the limit is two.
    client, _ = await start_console(
        start_app, make_config, max_failures_per_account=2, max_failures_per_address=100
    )
    phone = await give_password(db, demo.admin_id)
    page = await client.get("/console/login")
    token = csrf_of(await page.text())

    async def guess(n: int) -> int:
        response = await client.post(
            "/console/login",
            data={"account": phone, "password": f"guess-{n:04d}", "csrf_token": token},
            allow_redirects=False,
        )
        return response.status

    statuses = await asyncio.gather(*(guess(n) for n in range(10)))

    assert sorted(statuses) == [401, 401] + [429] * 8
    async with db.read() as conn:
        failures = (
            await conn.execute(
                select(func.count()).select_from(attempts).where(attempts.c.account == phone)
            )
        ).scalar_one()
    assert failures == 2
    assert (await login(client, phone)).status == 429


async def test_failed_logins_per_address_are_limited(db, demo, start_app, make_config):
    client, _ = await start_console(
        start_app, make_config, max_failures_per_address=3, max_failures_per_account=10
    )
    phone = await give_password(db, demo.admin_id)
    for n in range(3):
        assert (await login(client, f"1390000000{n}", "guessing-123")).status == 401
    assert (await login(client, phone)).status == 429


async def test_logout_ends_the_session_everywhere(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    token = await logged_in(client, db, demo.admin_id)
    old_cookie = session_cookie(client)
    assert old_cookie
    put_session_cookie(client, old_cookie)
    assert (await client.get("/console/", allow_redirects=False)).status == 200
    response = await client.post(
        "/console/logout", data={"csrf_token": token}, allow_redirects=False
    )
    assert response.status == 302 and response.headers["Location"] == "/console/login"
    page = await client.get("/console/login")
    assert "您已退出登录" in await page.text()
    # A copy of the old cookie (another tab, a stolen one) no longer opens anything.
    put_session_cookie(client, old_cookie)
    again = await client.get("/console/", allow_redirects=False)
    assert again.status == 302 and again.headers["Location"].startswith("/console/login")
    assert "console.logout" in await audit_actions(db, demo.admin_id)


async def test_a_new_password_ends_earlier_sessions(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    await logged_in(client, db, demo.admin_id)
    await set_password(db, demo.admin_id, "another-password-2")
    response = await client.get("/console/", allow_redirects=False)
    assert response.status == 302
    page = await client.get(response.headers["Location"])
    assert "登录已过期或已在别处退出" in await page.text()
    async with db.read() as conn:
        version = (
            await conn.execute(
                select(credentials.c.version).where(credentials.c.person_id == demo.admin_id)
            )
        ).scalar_one()
    assert version == 2


def _cookie(payload: dict, at: float) -> str:
    return (
        Fernet(SESSION_KEY.encode()).encrypt_at_time(json.dumps(payload).encode(), int(at)).decode()
    )


async def test_sessions_expire_after_their_maximum_age(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config, session_max_age_s=3600)
    await give_password(db, demo.admin_id)
    now = time.time()
    # A well-formed session whose login is older than the maximum age: refused by the server
    # (the cookie's own encryption time is recent, so only the login time can refuse it).
    old_login = {
        "created": int(now),
        "session": {"pid": demo.admin_id, "ver": 1, "at": int(now - 7200), "csrf": "x"},
    }
    put_session_cookie(client, _cookie(old_login, now))
    response = await client.get("/console/", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"].startswith("/console/login")
    # A cookie encrypted longer ago than the maximum age does not even decrypt.
    fresh_login = {
        "created": int(now - 7200),
        "session": {"pid": demo.admin_id, "ver": 1, "at": int(now - 10), "csrf": "x"},
    }
    put_session_cookie(client, _cookie(fresh_login, now - 7200))
    response = await client.get("/console/", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"].startswith("/console/login")
    # The same session within its age is accepted: the refusals above were about age.
    valid = {
        "created": int(now),
        "session": {"pid": demo.admin_id, "ver": 1, "at": int(now - 10), "csrf": "x"},
    }
    put_session_cookie(client, _cookie(valid, now))
    assert (await client.get("/console/", allow_redirects=False)).status == 200


async def test_posts_without_the_session_csrf_token_are_refused(db, demo, start_app, make_config):
    client, _ = await start_console(start_app, make_config)
    phone = await give_password(db, demo.admin_id)
    # Login itself: no token, then someone else's token.
    response = await client.post("/console/login", data={"account": phone, "password": PASSWORD})
    assert response.status == 403
    assert "已拒绝这次提交" in await response.text()
    response = await client.post(
        "/console/login", data={"account": phone, "password": PASSWORD, "csrf_token": "forged"}
    )
    assert response.status == 403
    token = await logged_in(client, db, demo.admin_id)
    for data in ({}, {"csrf_token": token[:-2] + "xx"}):
        refused = await client.post("/console/logout", data=data, allow_redirects=False)
        assert refused.status == 403
        assert "已拒绝这次提交" in await refused.text()
    # Still logged in: nothing was done.
    assert (await client.get("/console/", allow_redirects=False)).status == 200
    header = await client.post(
        "/console/logout", headers={"X-CSRF-Token": token}, allow_redirects=False
    )
    assert header.status == 302


async def test_passwords_are_stored_as_argon2_hashes(db, demo):
    await set_password(db, demo.admin_id, PASSWORD)
    async with db.read() as conn:
        stored = (await conn.execute(select(credentials.c.password_hash))).scalar_one()
        count = (await conn.execute(select(func.count()).select_from(credentials))).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert count == 1


async def login_from(client, phone, forwarded_for, password=PASSWORD):
    """The login form submitted with an ``X-Forwarded-For`` header, as through a proxy."""
    page = await client.get("/console/login")
    return await client.post(
        "/console/login",
        data={"account": phone, "password": password, "csrf_token": csrf_of(await page.text())},
        headers={"X-Forwarded-For": forwarded_for},
        allow_redirects=False,
    )


async def attempt_addresses(db) -> list[str]:
    async with db.read() as conn:
        return [r.address for r in await conn.execute(select(attempts).order_by(attempts.c.id))]


def behind_proxies(make_config, *proxies):
    # The test client connects from 127.0.0.1: listing it makes the client a trusted proxy.
    return make_config(
        server={"trusted_proxies": list(proxies)},
        console={
            "session_key": SESSION_KEY,
            "max_failures_per_address": 3,
            "max_failures_per_account": 10,
        },
    )


async def test_behind_a_trusted_proxy_failures_count_per_forwarded_client(
    db, demo, start_app, make_config
):
    client, _ = await start_app(behind_proxies(make_config, "127.0.0.1"))
    phone = await give_password(db, demo.admin_id)
    for n in range(3):
        response = await login_from(client, f"1390000000{n}", "203.0.113.5", "guessing-123")
        assert response.status == 401
    assert (await login_from(client, phone, "203.0.113.5")).status == 429
    # Everyone else behind the same proxy still gets in: the proxy's address is not the key.
    assert (await login_from(client, phone, "198.51.100.7")).status == 302
    assert await attempt_addresses(db) == ["203.0.113.5"] * 3 + ["198.51.100.7"]
    async with db.read() as conn:
        details = [
            r.detail
            for r in await conn.execute(
                select(audit.c.detail)
                .where(audit.c.action.like("console.login%"))
                .order_by(audit.c.id)
            )
        ]
    assert [d["address"] for d in details] == ["203.0.113.5"] * 4 + ["198.51.100.7"]


async def test_behind_several_trusted_proxies_the_rightmost_untrusted_hop_is_the_client(
    db, demo, start_app, make_config
):
    client, _ = await start_app(behind_proxies(make_config, "127.0.0.1", "10.0.0.0/8"))
    # A client wrote its own 6.6.6.6 and 10.9.9.9; the load balancer saw 203.0.113.5 and
    # nginx (10.0.0.2) added the load balancer's address before passing it on.
    for n in range(3):
        response = await login_from(
            client, f"1390000000{n}", f"6.6.6.{n}, 10.9.9.9, 203.0.113.5, 10.0.0.2", "guess-1234"
        )
        assert response.status == 401
    assert await attempt_addresses(db) == ["203.0.113.5"] * 3
    limited = await login_from(client, "13900000009", "1.1.1.1, 203.0.113.5, 10.0.0.2")
    assert limited.status == 429


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(db, demo, start_app, make_config):
    # Proxies are trusted elsewhere (10.0.0.0/8) but not the peer (127.0.0.1): a client that
    # reaches the app directly cannot pick a fresh address per attempt.
    for proxies in ((), ("10.0.0.0/8",)):
        client, _ = await start_app(behind_proxies(make_config, *proxies))
        phone = await give_password(db, demo.admin_id)
        for n in range(3):
            response = await login_from(
                client, f"1390000000{n}", f"203.0.113.{n}, 10.0.0.2", "guessing-123"
            )
            assert response.status == 401
        assert (await login_from(client, phone, "198.51.100.7")).status == 429
        assert set(await attempt_addresses(db)) == {"127.0.0.1"}
        async with db.write() as conn:
            await conn.execute(attempts.delete())
