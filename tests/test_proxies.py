"""The client address behind trusted reverse proxies (``bot.proxies``), hop by hop, and in the
access log of the real app; console logins behind proxies are in tests/test_console_auth.py."""

from __future__ import annotations

import logging
from ipaddress import ip_network

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.app import access_log_options, create_app
from bot.proxies import forwarded_client

PROXIES = (ip_network("127.0.0.1"), ip_network("10.0.0.0/8"), ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("peer", "headers", "trusted", "client"),
    [
        # Nobody trusted (the default): the header is whatever the client wrote.
        ("127.0.0.1", ["203.0.113.5"], (), "127.0.0.1"),
        # An untrusted peer cannot choose its address by sending the header.
        ("198.51.100.9", ["203.0.113.5"], PROXIES, "198.51.100.9"),
        ("198.51.100.9", ["10.0.0.2"], PROXIES, "198.51.100.9"),
        # The proxy's own requests (health checks) carry no header.
        ("127.0.0.1", [], PROXIES, "127.0.0.1"),
        # One proxy: the address it appended.
        ("127.0.0.1", ["203.0.113.5"], PROXIES, "203.0.113.5"),
        # What the client wrote to the left of its real address is never believed.
        ("127.0.0.1", ["6.6.6.6, 203.0.113.5"], PROXIES, "203.0.113.5"),
        ("127.0.0.1", ["10.9.9.9, 203.0.113.5"], PROXIES, "203.0.113.5"),
        # Several trusted hops (load balancer, then nginx): skipped from the right.
        ("10.0.0.3", ["6.6.6.6, 203.0.113.5, 10.0.0.2 ,127.0.0.1"], PROXIES, "203.0.113.5"),
        # Repeated header lines read as one list, in order.
        ("127.0.0.1", ["6.6.6.6", "203.0.113.5, 10.0.0.2"], PROXIES, "203.0.113.5"),
        # Every hop trusted: the leftmost is the furthest known.
        ("127.0.0.1", ["10.0.0.7, 10.0.0.2"], PROXIES, "10.0.0.7"),
        # A hop that is not an address ends the walk at the last trusted hop.
        ("127.0.0.1", ["203.0.113.5, unknown, 10.0.0.2"], PROXIES, "10.0.0.2"),
        ("127.0.0.1", ["203.0.113.5, "], PROXIES, "127.0.0.1"),
        # IPv6 clients and proxies; an IPv4 peer seen through a dual-stack socket.
        ("fd00::1", ["2001:db8::7"], PROXIES, "2001:db8::7"),
        ("127.0.0.1", ["[2001:db8::7]"], PROXIES, "2001:db8::7"),
        ("::ffff:127.0.0.1", ["203.0.113.5"], PROXIES, "203.0.113.5"),
        # No peer address (a Unix socket): nothing to trust.
        (None, ["203.0.113.5"], PROXIES, None),
    ],
)
def test_client_is_the_rightmost_untrusted_hop_behind_a_trusted_peer(
    peer, headers, trusted, client
):
    assert forwarded_client(peer, headers, trusted) == client


async def access_lines(make_config, caplog, trusted, forwarded=None):
    """Request /healthz once through the real app with serve()'s access log; its lines."""
    config = make_config(server={"trusted_proxies": trusted})
    logger = logging.getLogger("test.access")
    app = await create_app(config, run_workers=False)
    server = TestServer(app)
    client = TestClient(server)
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    # The line is written once the response is sent, maybe after the client has read it:
    # closing the server waits for it.
    with caplog.at_level(logging.INFO, logger="test.access"):
        await server.start_server(**access_log_options(config, logger))
        await client.start_server()
        try:
            response = await client.get("/healthz?probe=1", headers=headers)
            assert response.status == 200
            await response.read()
        finally:
            await client.close()
    return [r.getMessage() for r in caplog.records if r.name == "test.access"]


async def test_access_log_names_the_client_behind_a_trusted_proxy(make_config, caplog):
    # The test client connects from 127.0.0.1, here a trusted proxy.
    [line] = await access_lines(make_config, caplog, ["127.0.0.1"], "6.6.6.6, 203.0.113.5")

    assert line.startswith('203.0.113.5 "GET /healthz HTTP/1.1" 200 ')
    assert line.endswith(" ms")
    assert "probe" not in line  # query strings carry openids and signatures


async def test_access_log_ignores_the_header_from_an_untrusted_peer(make_config, caplog):
    [line] = await access_lines(make_config, caplog, [], "203.0.113.5")

    assert line.startswith('127.0.0.1 "GET /healthz HTTP/1.1" 200 ')
