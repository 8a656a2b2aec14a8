"""Thin routing from messages to flows.  ``build_router`` assembles every feature's router."""

from __future__ import annotations

from flows.engine import Flow
from flows.registration import Registration
from handlers import basic
from handlers.router import Router


def build_router() -> Router:
    """The root router: basics first, each feature's routes, the fallback last."""
    root = Router("root")
    root.include(basic.router)
    root.include(basic.fallback)
    return root


def build_flows() -> list[Flow]:
    return [Registration()]
