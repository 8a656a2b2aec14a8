"""Helpers of the console tests: start the app with a known session key, log in through the
real login form, read CSRF tokens and flash messages out of the pages."""

from __future__ import annotations

import json
import re
from typing import Any

from cryptography.fernet import Fernet

from bot.console.passwords import set_password
from bot.console.site import COOKIE_NAME
from storage import repo

PASSWORD = "correct-horse-9"
SESSION_KEY = Fernet.generate_key().decode()
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_CHART = re.compile(r'<script type="application/json" id="chart-data">(.*?)</script>', re.DOTALL)


def console_config(make_config: Any, **console: Any) -> Any:
    return make_config(console={"session_key": SESSION_KEY, **console})


async def start_console(start_app: Any, make_config: Any, **console: Any) -> tuple[Any, Any]:
    return await start_app(console_config(make_config, **console))


async def give_password(db: Any, person_id: int, password: str = PASSWORD) -> str:
    """Set the person's console password; returns their phone number (the login)."""
    await set_password(db, person_id, password)
    async with db.read() as conn:
        person = await repo.load_person(conn, person_id)
    assert person is not None and person.phone
    return person.phone


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def login(client: Any, phone: str, password: str = PASSWORD) -> Any:
    """Submit the login form as a browser would; returns the (unfollowed) response."""
    page = await client.get("/console/login")
    assert page.status == 200
    token = csrf_of(await page.text())
    return await client.post(
        "/console/login",
        data={"account": phone, "password": password, "csrf_token": token},
        allow_redirects=False,
    )


async def logged_in(client: Any, db: Any, person_id: int) -> str:
    """Log ``person_id`` in (password set first); returns a CSRF token of the session."""
    phone = await give_password(db, person_id)
    response = await login(client, phone)
    assert response.status == 302, await response.text()
    page = await client.get("/console/")
    assert page.status == 200
    return csrf_of(await page.text())


def session_cookie(client: Any) -> str | None:
    for cookie in client.session.cookie_jar:
        if cookie.key == COOKIE_NAME:
            return str(cookie.value)
    return None


def put_session_cookie(client: Any, value: str) -> None:
    """Make ``value`` the only session cookie the client sends (as a browser would after
    being handed it), replacing whatever the server set."""
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies(
        {COOKIE_NAME: value}, response_url=client.make_url("/console/")
    )


def chart_data(html: str) -> dict[str, Any]:
    match = _CHART.search(html)
    assert match, "no chart data on the page"
    return dict(json.loads(match.group(1)))


def without_tags(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
