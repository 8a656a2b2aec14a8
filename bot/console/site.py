"""The console's machinery: the sub-application, its middlewares and the helpers pages use.

Middlewares, outermost first: error pages (every error becomes a page from
``templates/console/error.html``, never a stack trace), security headers, the encrypted session
cookie (aiohttp-session), and CSRF (every POST must carry the session's token).  Login and
roles are checked per page by :meth:`Console.add_page`, so a page says who may see it where it
is declared.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import Session, get_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet
from jinja2 import FileSystemLoader, StrictUndefined, pass_context, select_autoescape
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.config import Config
from bot.posters import GridQrCodes
from flows.texts import TEMPLATE_ROOT, Texts
from storage import console as store
from storage import repo
from storage.db import Database
from storage.models import Role, is_number, utcnow

log = logging.getLogger(__name__)
# aiohttp-session 2.12 keys its request storage by strings, which aiohttp 3.14 warns about
# once per process; nothing is wrong, so keep it out of the logs.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_session")

STATIC_DIR = Path(__file__).with_name("static")
STAFF_ROLES: tuple[str, ...] = (Role.WARDEN, Role.DOCTOR, Role.ADMIN)
"""Who may log in.  Volunteers may not: they act through chat on what is handed to them."""
ADMIN_ROLES: tuple[str, ...] = (Role.ADMIN,)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
COOKIE_NAME = "gridbot_console"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PageError(Exception):
    """Stop a page with a friendly error page: ``status`` and a ``reason`` naming
    ``templates/console/reasons/<reason>.html`` (the sentence shown)."""

    def __init__(self, status: int, reason: str, **values: Any) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.values = values


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """The logged-in staff member of a console request: ``user_of(request)``."""

    person: repo.PersonInfo
    version: int

    @property
    def id(self) -> int:
        return self.person.id

    def has_role(self, *names: str) -> bool:
        return self.person.has_role(*names)

    def roots(self, *role_names: str) -> list[repo.RegionInfo]:
        """The top regions this user acts on in ``role_names`` (all staff roles when none)."""
        return repo.scope_roots(self.person.scope_regions(*(role_names or STAFF_ROLES)))

    def paths(self, *role_names: str) -> list[str]:
        return [r.path for r in self.roots(*role_names)]


@dataclass(frozen=True, slots=True)
class NavItem:
    """A link in the top navigation: ``label`` is ``templates/console/nav/<name>.html``."""

    name: str
    route: str
    roles: tuple[str, ...]


@dataclass
class Console:
    """The console's resources and its table of pages.  Page modules add themselves with
    :meth:`add_page` and :meth:`add_nav`; :meth:`build_app` makes the sub-application."""

    config: Config
    db: Database
    texts: Texts
    wake_delivery: Callable[[], None]
    session_key: bytes
    qrcodes: GridQrCodes | None = None
    """Grid QR codes for the poster pages (None without the official account wiring)."""
    max_upload_bytes: int = 1024**2
    """Largest multipart form body; a page module that takes files raises it."""
    routes: list[web.RouteDef] = field(default_factory=list)
    nav: list[NavItem] = field(default_factory=list)

    @property
    def settings(self) -> Any:
        return self.config.console

    def add_page(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        name: str,
        roles: Iterable[str] = STAFF_ROLES,
        public: bool = False,
    ) -> None:
        """Serve ``handler`` at ``path`` (below the console prefix) as route ``name``.

        Unless ``public``, the request must come from a logged-in user holding one of
        ``roles`` (else the login page, or a 403 page); ``user_of(request)`` is then set.
        Every POST is CSRF-checked by the middleware, public or not."""
        wanted = tuple(roles)

        async def guarded(request: web.Request) -> web.StreamResponse:
            if not public:
                user = await self._authenticate(request)
                if not user.has_role(*wanted):
                    raise PageError(403, "role")
                request[USER] = user
            return await handler(request)

        guarded.__doc__ = handler.__doc__
        self.routes.append(web.route(method, path, guarded, name=name))

    def add_nav(self, name: str, route: str, *, roles: Iterable[str] = STAFF_ROLES) -> None:
        """Show a link to ``route`` in the navigation to users holding one of ``roles``."""
        self.nav.append(NavItem(name, route, tuple(roles)))

    def build_app(self) -> web.Application:
        storage = EncryptedCookieStorage(
            Fernet(self.session_key),
            cookie_name=COOKIE_NAME,
            max_age=self.settings.session_max_age_s,
            path=self.settings.path,
            secure=self.settings.secure_cookie,
            httponly=True,
            samesite="Lax",
        )
        # Error pages inside the session middleware, so the session (its CSRF token, flash
        # messages) is saved with them; security headers on every answer, error pages too.
        app = web.Application(
            middlewares=[
                _security_headers,
                session_middleware(storage),
                self._error_pages,
                _csrf,
            ]
        )
        app[CONSOLE] = self
        env = aiohttp_jinja2.setup(
            app,
            loader=FileSystemLoader(str(TEMPLATE_ROOT)),
            autoescape=select_autoescape(("html",)),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.globals["static"] = _static_url
        env.filters["masked"] = repo.mask_phone
        app.router.add_routes(self.routes)
        app.router.add_static("/static", STATIC_DIR, name="static")
        return app

    # -- authentication ----------------------------------------------------------------------

    async def _authenticate(self, request: web.Request) -> ConsoleUser:
        """The user of the session, if it is still valid: same credential version (no logout
        or password change since) and within the maximum age."""
        session = await get_session(request)
        person_id, version, at = session.get("pid"), session.get("ver"), session.get("at")
        if not isinstance(person_id, int) or not isinstance(version, int):
            raise self._to_login(request)
        expired = not isinstance(at, int | float) or (
            utcnow().timestamp() - at > self.settings.session_max_age_s
        )
        async with self.db.read() as conn:
            credential = await store.credential_of(conn, person_id)
            person = await repo.load_person(conn, person_id)
        if expired or credential is None or credential.version != version or person is None:
            session.invalidate()
            add_flash(session, "session_ended")
            raise self._to_login(request)
        return ConsoleUser(person, version)

    def _to_login(self, request: web.Request) -> web.HTTPFound:
        target = request.app.router["login"].url_for()
        if request.method == "GET":
            target = target.with_query(next=request.path_qs)
        return web.HTTPFound(target)

    # -- error pages -------------------------------------------------------------------------

    @web.middleware
    async def _error_pages(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except PageError as error:
            return await self._error_page(request, error.status, error.reason, error.values)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = {404: "not_found", 405: "method"}.get(exc.status, "bad_request")
            if exc.status == 413:
                reason = "too_large"
            return await self._error_page(request, exc.status, reason, {})
        except Exception:
            log.exception("console page failed: %s %s", request.method, request.path)
            return await self._error_page(request, 500, "internal", {})

    async def _error_page(
        self, request: web.Request, status: int, reason: str, values: Mapping[str, Any]
    ) -> web.Response:
        try:
            return await render(
                request,
                "console/error.html",
                status=status,
                reason=reason,
                values=dict(values),
                _status=status,
            )
        except Exception:
            # The page itself failed (the database is down?): still no stack trace.
            log.exception("console error page failed")
            return web.Response(status=status, text=str(status), content_type="text/plain")


CONSOLE = web.AppKey("console", Console)
USER = web.RequestKey("console_user", ConsoleUser)


@pass_context
def _static_url(context: Mapping[str, Any], filename: str) -> str:
    app = context["app"]
    return str(app.router["static"].url_for(filename=filename))


# -- helpers for pages -----------------------------------------------------------------------


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


def user_of(request: web.Request) -> ConsoleUser:
    """The logged-in user (set for every page not added as ``public``)."""
    return request[USER]


def optional_user(request: web.Request) -> ConsoleUser | None:
    return request.get(USER)


async def render(
    request: web.Request, template: str, *, _status: int = 200, **context: Any
) -> web.Response:
    """Render ``template`` (under ``templates/``) inside the layout: the user, navigation,
    flash messages and CSRF token are added for it.  Pages are never cached (they carry
    personal data)."""
    console = console_of(request)
    session = await get_session(request)
    user = optional_user(request)
    nav = [n for n in console.nav if user is not None and user.has_role(*n.roles)]
    context.update(
        app=request.app,
        request=request,
        user=user,
        nav=nav,
        flashes=session.pop("flash", []),
        csrf_token=csrf_token(session),
        csrf_field=CSRF_FIELD,
        tz=console.config.tz,
    )
    response = aiohttp_jinja2.render_template(template, request, context, status=_status)
    response.headers["Cache-Control"] = "no-store"
    return response


def csrf_token(session: Session) -> str:
    """The session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def add_flash(session: Session, key: str, level: str = "info", **values: Any) -> None:
    """Queue a message for the next page: ``templates/console/flash/<key>.html`` rendered
    with ``values`` (JSON-able), styled by ``level`` (info, ok, warn)."""
    flashes = list(session.get("flash", []))
    flashes.append({"key": key, "level": level, "values": values})
    session["flash"] = flashes[-5:]


async def flash(request: web.Request, key: str, level: str = "info", **values: Any) -> None:
    add_flash(await get_session(request), key, level, **values)


def redirect(
    request: web.Request, route: str, query: Mapping[str, str] | None = None, **parts: str
) -> web.HTTPFound:
    """A 302 to a console route (raise it, or return it)."""
    target = str(request.app.router[route].url_for(**parts))
    if query:
        target += "?" + urlencode(query)
    return web.HTTPFound(target)


async def scoped_region(
    conn: AsyncConnection, request: web.Request, code: str, *role_names: str
) -> repo.RegionInfo:
    """The region ``code`` if the user acts on it in ``role_names`` (any staff role when
    none): a 404 page for an unknown code, a 403 page outside the user's scope."""
    try:
        return await repo.region_in_scope(
            conn, user_of(request).person, code, *(role_names or STAFF_ROLES)
        )
    except repo.RegionNotFound:
        raise PageError(404, "unknown_region", code=code) from None
    except repo.OutOfScope:
        raise PageError(403, "out_of_scope", code=code) from None


async def audit(
    conn: AsyncConnection,
    request: web.Request,
    action: str,
    *,
    target_type: str = "",
    target_id: str | int = "",
    region: repo.RegionInfo | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write the audit entry of a view of personal data or a change, by the current user.
    Actions of the console start with ``console.``."""
    user = optional_user(request)
    await repo.record_audit(
        conn,
        actor_id=user.id if user else None,
        action=action,
        target_type=target_type,
        target_id=str(target_id)[:64],
        region_id=region.id if region else None,
        detail=detail,
    )


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter in ``[low, high]``; a 400 page otherwise."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not is_number(raw) or not low <= int(raw) <= high:
        raise PageError(400, "bad_parameter", name=name)
    return int(raw)


def query_choice(request: web.Request, name: str, choices: Iterable[str]) -> str | None:
    """A query parameter that must be one of ``choices`` (absent or empty: None); a 400 page
    otherwise."""
    value = request.query.get(name) or None
    if value is not None and value not in choices:
        raise PageError(400, "bad_parameter", name=name)
    return value


def keyset_links(
    key: str, ids: Sequence[int], size: int, *, paged: bool, **filters: str | None
) -> dict[str, Any]:
    """The paging links of a table paged by id (``ids`` of the rows shown, ``size`` a full
    page): ``paged`` (a later page, so link to the first), ``first_query`` (the filters) and
    ``next_query`` (the filters and ``key`` = the last id shown, when the page is full)."""
    kept = {name: value for name, value in filters.items() if value}
    return {
        "paged": paged,
        "first_query": kept or None,
        "next_query": {key: str(ids[-1]), **kept} if ids and len(ids) == size else None,
    }


def now() -> datetime:
    return datetime.now(UTC)


# -- middlewares -----------------------------------------------------------------------------


@web.middleware
async def _csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every unsafe request carries the session's token, as a form field or a header."""
    if request.method not in UNSAFE_METHODS:
        return await handler(request)
    session = await get_session(request)
    if request.content_type != "multipart/form-data":
        await _check_csrf(request, session)
        return await handler(request)
    # An upload may exceed the app's 1 MiB body limit: read it through a clone allowed
    # ``max_upload_bytes`` (the session object is shared, so what the page flashes is saved).
    upload = request.clone(client_max_size=request.app[CONSOLE].max_upload_bytes)
    try:
        await _check_csrf(upload, session)
        return await handler(upload)
    finally:
        # aiohttp releases the form's temporary files only for the request it created.
        upload._finish()


async def _check_csrf(request: web.Request, session: Session) -> None:
    expected = session.get("csrf")
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await request.post()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not (
        isinstance(expected, str)
        and isinstance(given, str)
        and hmac.compare_digest(expected.encode(), given.encode())
    ):
        raise PageError(403, "csrf")


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    )
    return response
