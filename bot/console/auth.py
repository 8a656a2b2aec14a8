"""Login and logout.

Login takes a phone number and a password.  Failed attempts are rows in the database, counted
over ``console.login_window_s`` by account and by client address (``request.remote``: behind a
reverse proxy listed in ``server.trusted_proxies``, the address it forwards, see
``bot.proxies``), so the limit holds however many processes serve the console.  A successful
login starts a fresh session (a new cookie and CSRF token) bound to the person and their
credential version; logout raises the version, which ends every session of that person, on
every device.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web
from aiohttp_session import get_session, new_session

from bot.console.passwords import MAX_LENGTH, find_login
from bot.console.site import (
    STAFF_ROLES,
    Console,
    add_flash,
    audit,
    console_of,
    csrf_token,
    redirect,
    render,
    user_of,
)
from storage import console as store
from storage import repo
from storage.models import utcnow


def install(console: Console) -> None:
    console.add_page("GET", "/login", login_form, name="login", public=True)
    console.add_page("POST", "/login", login, name="login_post", public=True)
    console.add_page("POST", "/logout", logout, name="logout")


async def login_form(request: web.Request) -> web.Response:
    """The login page."""
    return await render(request, "console/login.html", account="", error=None, next=_next(request))


async def login(request: web.Request) -> web.StreamResponse:
    """Check the rate limit, then the password; start the session."""
    console = console_of(request)
    settings = console.settings
    form = await request.post()
    account = str(form.get("account", "")).strip()[:32]
    password = str(form.get("password", ""))[: MAX_LENGTH + 1]
    target = _next(request, str(form.get("next", "")))
    address = request.remote or "unknown"
    if not account or not password:
        return await _refuse(request, account, target, "empty", 400)
    now = utcnow()
    since = now - timedelta(seconds=settings.login_window_s)
    # Counted and, within the limit, stored (as failed until the password proves right) in
    # one serialized transaction: of attempts sent at once, each counts those before it.
    async with console.db.write() as conn:
        await store.lock_attempts(conn)
        by_account, by_address = await store.recent_failures(
            conn, account=account, address=address, since=since
        )
        limited = (
            by_account >= settings.max_failures_per_account
            or by_address >= settings.max_failures_per_address
        )
        if limited:
            await repo.record_audit(
                conn,
                actor_id=None,
                action="console.login.limited",
                target_type="account",
                target_id=repo.mask_phone(account),
                detail={"address": address},
            )
        else:
            attempt_id = await store.start_attempt(
                conn, account=account, address=address, now=now, forget_before=since
            )
    if limited:
        return await _refuse(request, account, target, "limited", 429)

    credential = await find_login(console.db, account, password)
    person = None
    if credential is not None:
        async with console.db.read() as conn:
            person = await repo.load_person(conn, credential.person_id)
    allowed = person is not None and person.has_role(*STAFF_ROLES)
    async with console.db.write() as conn:
        await store.finish_attempt(conn, attempt_id, succeeded=allowed)
        await repo.record_audit(
            conn,
            actor_id=person.id if person else None,
            action="console.login" if allowed else "console.login.failed",
            target_type="person" if person else "account",
            target_id=person.id if person else repo.mask_phone(account),
            region_id=person.region.id if person and person.region else None,
            detail={"address": address},
        )
    if credential is None or person is None:
        return await _refuse(request, account, target, "wrong", 401)
    if not allowed:
        return await _refuse(request, account, target, "not_staff", 403)

    session = await new_session(request)
    session["pid"] = person.id
    session["ver"] = credential.version
    session["at"] = int(now.timestamp())
    csrf_token(session)
    add_flash(session, "welcome", "ok", name=person.name)
    raise web.HTTPFound(target or str(request.app.router["overview"].url_for()))


async def logout(request: web.Request) -> web.StreamResponse:
    """End every session of the user (raises the credential version)."""
    console = console_of(request)
    user = user_of(request)
    async with console.db.write() as conn:
        await store.bump_version(conn, user.id, now=utcnow())
        await audit(
            request=request,
            conn=conn,
            action="console.logout",
            target_type="person",
            target_id=user.id,
        )
    session = await get_session(request)
    session.invalidate()
    add_flash(session, "logged_out", "ok")
    raise redirect(request, "login")


async def _refuse(
    request: web.Request, account: str, target: str, error: str, status: int
) -> web.Response:
    return await render(
        request, "console/login.html", _status=status, account=account, error=error, next=target
    )


def _next(request: web.Request, raw: str | None = None) -> str:
    """Where to go after login: a console path only (never another site)."""
    value = request.query.get("next", "") if raw is None else raw
    prefix = console_of(request).settings.path
    if value.startswith(prefix + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return ""
