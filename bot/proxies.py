"""The client's address behind trusted reverse proxies (``server.trusted_proxies``).

Behind nginx or a load balancer the TCP peer is the proxy, the same address for everyone.  The
proxy appends the address it saw to ``X-Forwarded-For``; a client can write anything to the left
of that.  So the header is read only when the peer itself is a trusted proxy, and from the right:
every hop that is a trusted proxy is skipped and the first one that is not is the client.  When
every hop is trusted the leftmost is the best we know.  A hop that is not an IP address ends the
walk at the last trusted hop, the most that can be said for sure.

With no trusted proxies (the default) no middleware is installed and ``request.remote`` stays
the peer address, whatever headers the request carries.

aiohttp's access log reads the request as it arrived, before any middleware, so it would name the
proxy; :func:`access_logger_class` gives ``serve`` an access log that names the client instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler, Middleware

Network = IPv4Network | IPv6Network


def forwarded_client(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str | None:
    """The client address: ``peer`` unless it is a trusted proxy, else the rightmost hop of the
    ``X-Forwarded-For`` values (each maybe a comma-separated list, in header order) that is not."""
    client = peer
    address = _address(peer)
    if address is None or not _is_trusted(address, trusted):
        return client
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not _is_trusted(address, trusted):
            break
    return client


def client_address_middleware(trusted: Sequence[Network]) -> Middleware:
    """A middleware that sets ``request.remote`` to :func:`forwarded_client` for every handler
    (console logins, audit entries, anything added later), sub-applications included."""

    @web.middleware
    async def client_address(request: web.Request, handler: Handler) -> web.StreamResponse:
        client = forwarded_client(
            request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, ()), trusted
        )
        if client is not None and client != request.remote:
            request = request.clone(remote=client)
        return await handler(request)

    return client_address


def access_logger_class(trusted: Sequence[Network]) -> type[AbstractAccessLogger]:
    """An access logger writing one line a request, with the client as :func:`forwarded_client`
    finds it: ``203.0.113.5 "GET /healthz HTTP/1.1" 200 15 0.412 ms``.

    The path is logged without its query string: WeChat's callbacks carry the sender's openid
    and a signature there, which an access log has no business keeping.
    """

    class ClientAccessLogger(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            client = forwarded_client(
                request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, ()), trusted
            )
            self.logger.info(
                '%s "%s %s HTTP/%d.%d" %d %d %.3f ms',
                client or "-",
                request.method,
                request.path,
                request.version.major,
                request.version.minor,
                response.status,
                response.body_length,
                time * 1000,
            )

    return ClientAccessLogger


def _address(text: str | None) -> IPv4Address | IPv6Address | None:
    if not text:
        return None
    try:
        address = ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPv4Address | IPv6Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)
