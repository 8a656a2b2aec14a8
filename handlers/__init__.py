"""Thin routing from messages to flows.  ``build_router`` assembles every feature's router."""

from __future__ import annotations

from flows.checkin import Checkin
from flows.engine import Flow
from flows.notice_compose import ComposeNotice
from flows.registration import Registration
from flows.request_intake import RequestIntake, RequestRating
from flows.rumors import RumorDesk
from handlers import basic, menu
from handlers import checkin as checkin_handlers
from handlers import notices as notices_handlers
from handlers import requests as requests_handlers
from handlers import rumors as rumors_handlers
from handlers.router import Router


def build_router() -> Router:
    """The root router: basics first, each feature's routes, the fallback last."""
    root = Router("root")
    root.include(basic.router)
    root.include(notices_handlers.router)
    root.include(requests_handlers.router)
    root.include(checkin_handlers.router)
    root.include(rumors_handlers.router)
    # Menu clicks last but one: a feature's own click route (keys=...) comes first.
    root.include(menu.build_menu_router(root))
    root.include(basic.fallback)
    return root


def build_flows() -> list[Flow]:
    return [
        Registration(),
        RequestIntake(),
        RequestRating(),
        Checkin(),
        ComposeNotice(),
        RumorDesk(),
    ]
