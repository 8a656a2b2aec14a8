"""Routers: which handler answers which message, by keyword, event, role and chat type.

Handlers are registered with decorators and tried in registration order; the first whose filters
all match handles the message.  A handler is ``async def handler(ctx) -> None`` and speaks
through ``ctx.say`` or by starting a flow.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from flows.answers import strip_trailing_punctuation
from flows.context import Context

Handler = Callable[[Context], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    handler: Handler
    keywords: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    events: frozenset[str] = frozenset()
    event_keys: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    registered: bool | None = True
    chats: frozenset[str] = frozenset({"direct"})
    kinds: frozenset[str] = frozenset({"text"})

    def matches(self, ctx: Context) -> bool:
        inbound = ctx.inbound
        if inbound.kind not in self.kinds:
            return False
        if ("group" if inbound.is_group else "direct") not in self.chats:
            return False
        if self.registered is not None and (ctx.person is not None) != self.registered:
            return False
        if self.roles and not (ctx.person and ctx.person.has_role(*self.roles)):
            return False
        if self.events and (inbound.event or "") not in self.events:
            return False
        if self.event_keys and (inbound.event_key or "") not in self.event_keys:
            return False
        text = ctx.text
        if self.keywords or self.prefixes:
            # "满意！": a keyword with the sentence end a keyboard or speech recognition adds.
            word = strip_trailing_punctuation(text)
            return word in self.keywords or any(text.startswith(p) for p in self.prefixes)
        return True


@dataclass
class Router:
    """An ordered set of routes; routers can include other routers (features)."""

    name: str = "root"
    routes: list[Route] = field(default_factory=list)
    features: set[str] = field(default_factory=set)

    def message(
        self,
        *keywords: str,
        prefixes: Iterable[str] = (),
        roles: Iterable[str] = (),
        registered: bool | None = True,
        chats: Iterable[str] = ("direct",),
        kinds: Iterable[str] = ("text",),
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(
                Route(
                    handler,
                    keywords=frozenset(keywords),
                    prefixes=tuple(prefixes),
                    roles=frozenset(roles),
                    registered=registered,
                    chats=frozenset(chats),
                    kinds=frozenset(kinds),
                )
            )
            return handler

        return register

    def event(
        self,
        *events: str,
        keys: Iterable[str] = (),
        registered: bool | None = None,
        chats: Iterable[str] = ("direct",),
    ) -> Callable[[Handler], Handler]:
        """Route events by name; ``keys`` narrows to these event keys (a menu item's EventKey)."""

        def register(handler: Handler) -> Handler:
            self.routes.append(
                Route(
                    handler,
                    events=frozenset(events),
                    event_keys=frozenset(keys),
                    registered=registered,
                    chats=frozenset(chats),
                    kinds=frozenset({"event"}),
                )
            )
            return handler

        return register

    def include(self, other: Router) -> None:
        self.routes.extend(other.routes)
        self.features |= other.features

    def find(self, ctx: Context) -> Handler | None:
        for route in self.routes:
            if route.matches(ctx):
                return route.handler
        return None
