"""The web console for wardens, doctors and admins: server-rendered pages under
``console.path`` (default ``/console``), one aiohttp sub-application.

``install_console(app, config, db, wake_delivery)`` is the one call the composition root makes.

How to add a page
=================

1. Write a module ``bot/console/<noun>.py`` with plain aiohttp handlers and an ``install``::

       from bot.console.site import (Console, audit, console_of, flash, redirect, render,
                                     scoped_region, user_of)

       def install(console: Console) -> None:
           console.add_page("GET", "/notices", list_notices, name="notices")
           console.add_page("POST", "/notices", create_notice, name="notices_create",
                            roles=(Role.WARDEN, Role.ADMIN))
           console.add_nav("notices", "notices")           # a link in the top navigation

       async def list_notices(request):
           console, user = console_of(request), user_of(request)
           async with console.db.write() as conn:
               region = await scoped_region(conn, request, request.query["region"])  # 404/403
               rows = ...                                   # the feature's own storage/flows
               await audit(conn, request, "console.notices.list", target_type="region",
                           target_id=region.code, region=region, detail={"count": len(rows)})
           return await render(request, "console/notices.html", rows=rows)

   and add ``<noun>.install`` to ``PAGES`` below.

2. What is applied for you:

   * **Login and roles**: every page added without ``public=True`` needs a logged-in user
     holding one of ``roles`` (default: warden, doctor, admin); otherwise the login page (GET)
     or a 403 page.  ``user_of(request)`` is the ``ConsoleUser`` (``.person`` is the
     ``repo.PersonInfo``; ``.roots(*roles)`` / ``.paths(*roles)`` its scope).
   * **CSRF**: every POST (PUT, PATCH, DELETE) must carry the session's token; templates put
     ``<input type="hidden" name="{{ csrf_field }}" value="{{ csrf_token }}">`` in each form
     (or send header ``X-CSRF-Token``).  A missing or wrong token gets the 403 page.
   * **Errors**: raise ``PageError(status, "reason")`` for a friendly page whose sentence is
     ``templates/console/reasons/<reason>.html``; any other exception is logged and shown as
     the 500 page, never a stack trace.  Unknown paths get the 404 page.

3. What each page does itself (one line each, shown above):

   * **Scope**: ``scoped_region(conn, request, code, *roles)`` for any region named in the
     request (the one shared check, ``repo.region_in_scope``); lists use ``user.paths()``.
   * **Audit**: ``audit(conn, request, "console.<feature>.<verb>", ...)`` in the same
     transaction as every read of personal data and every change.
   * **Phones**: ``repo.sees_full_phone(user.person, region)``; else the ``masked`` filter.

4. Templates live in ``templates/console/``, extend ``console/base.html`` and fill
   ``{% block title %}`` and ``{% block content %}`` (``{% block scripts %}`` for page JS).
   Text only in templates: the navigation label is ``console/nav/<name>.html``, a flash
   message (``await flash(request, "key", "ok", **values)``) is ``console/flash/<key>.html``.
   Charts: put data in the page with ``<script type="application/json" id="...">{{ data|tojson
   }}</script>`` and draw it in ``static/console.js`` (ECharts is vendored, see ``make vendor``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from cryptography.fernet import Fernet

from bot.config import Config
from bot.console import audit_log, auth, checkin, notices, overview, people, requests, rumors
from bot.console.site import Console
from bot.posters import GridQrCodes
from flows.texts import Texts
from storage.db import Database

log = logging.getLogger(__name__)

PAGES: list[Callable[[Console], None]] = [
    auth.install,
    overview.install,
    checkin.install,
    notices.install,
    rumors.install,
    requests.install,
    people.install,
    audit_log.install,
]
"""Every page module's ``install``; the navigation follows this order."""


def install_console(
    app: web.Application,
    config: Config,
    db: Database,
    wake_delivery: Callable[[], None],
    qrcodes: GridQrCodes | None = None,
) -> Console | None:
    """Mount the console under ``config.console.path`` (nothing when it is disabled).

    ``qrcodes`` makes grid QR codes for the poster pages (None: posters without codes)."""
    settings = config.console
    if not settings.enabled:
        return None
    key = settings.session_key.encode("ascii")
    if not key:
        key = Fernet.generate_key()
        log.warning(
            "console.session_key is empty: using a key made for this process, so console "
            "logins end when it restarts and do not carry to other processes "
            "(set GRIDBOT_CONSOLE_KEY)"
        )
    console = Console(
        config=config,
        db=db,
        texts=Texts(),
        wake_delivery=wake_delivery,
        session_key=key,
        qrcodes=qrcodes,
    )
    for install in PAGES:
        install(console)

    async def to_overview(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(settings.path + "/")

    # "/console" itself is outside the sub-application (whose pages are "/console/...").
    app.router.add_get(settings.path, to_overview)
    app.add_subapp(settings.path, console.build_app())
    return console
