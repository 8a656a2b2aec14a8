"""Signed bridge messages through the whole pipeline into the database, beside a bare echo.

Each server runs in its own process on 127.0.0.1; this process is the load generator.  Every
message is signed, has a unique message_id and comes from a registered demo resident, so it goes
through signature check, dedupe, identify, lock, a handler (the help menu) and the inbound log,
committed with group commit.  The baseline is a bare aiohttp app that parses the same JSON and
answers the same shape, measured in the same run.  Goal: at least half the echo's rate.

    python bench/pipeline_bench.py [--count 3000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp
from common import (
    LoadResult,
    drive,
    free_port,
    fresh_postgres,
    run_in_child,
    sqlite_url,
    wait_for_port,
)

SECRET = "bench-secret"


def serve_echo(port: int) -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        return web.json_response(
            {"replies": [{"to": {"user_id": data["sender"]["id"]}, "text": data["text"]}]}
        )

    app = web.Application()
    app.router.add_post("/bridge/inbound", echo)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_gridbot(port: int, url: str) -> None:
    import logging

    from bot.app import serve
    from bot.config import parse_config

    logging.basicConfig(level=logging.WARNING)
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": port},
            "database": {"url": url},
            "channels": {"bridge": {"enabled": True, "secret": SECRET}},
            "scheduler": {"enabled": False},
            "log_level": "WARNING",
        }
    )
    serve(config)


async def prepare_database(url: str) -> list[str]:
    """Migrate, seed the demo city, give every resident a bridge identity; their ids."""
    from bench_setup import migrate_and_seed

    return await migrate_and_seed(url)


async def load(
    name: str,
    port: int,
    senders: list[str],
    count: int,
    concurrency: int,
    rate: float | None = None,
    server_pid: int | None = None,
) -> LoadResult:
    from bot.channels.bridge import sign

    url = f"http://127.0.0.1:{port}/bridge/inbound"
    run_id = f"{name}-{time.time_ns()}"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send_one(i: int) -> bool:
            body = json.dumps(
                {
                    "message_id": f"{run_id}-{i}",
                    "sender": {"id": senders[i % len(senders)], "name": ""},
                    "chat": {"type": "direct"},
                    "text": "帮助",
                    "timestamp": int(time.time()),
                },
                ensure_ascii=False,
            ).encode()
            ts = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Bridge-Timestamp": ts,
                "X-Bridge-Signature": sign(SECRET, ts, body),
            }
            async with session.post(url, data=body, headers=headers) as response:
                payload = await response.json()
                return response.status == 200 and bool(payload["replies"])

        # Warm up connections and caches, then measure.
        await drive(f"{name} warm-up", min(200, count), concurrency, send_one)
        run_id = f"{name}-{time.time_ns()}"
        return await drive(
            name, count, concurrency, send_one, rate_limit=rate, server_pid=server_pid
        )


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    results: list[LoadResult] = []
    echo_port = free_port()
    echo = run_in_child(serve_echo, echo_port)
    try:
        await wait_for_port(echo_port)
        echo_result = await load(
            "bare aiohttp echo", echo_port, ["u"], args.count, args.concurrency, server_pid=echo.pid
        )
        results.append(echo_result)
    finally:
        echo.terminate()

    targets: list[tuple[str, str]] = []
    with sqlite_url() as sqlite:
        targets.append(("gridbot pipeline (SQLite)", sqlite))
        pg = await fresh_postgres()
        if pg:
            targets.append(("gridbot pipeline (PostgreSQL)", pg))
        else:
            print("PostgreSQL not reachable: measuring SQLite only")
        for name, url in targets:
            senders = await prepare_database(url)
            port = free_port()
            server = run_in_child(serve_gridbot, port, url)
            try:
                await wait_for_port(port)
                peak = await load(
                    name, port, senders, args.count, args.concurrency, server_pid=server.pid
                )
                results.append(peak)
                half = await load(
                    f"{name} @ half peak",
                    port,
                    senders,
                    min(args.count, int(peak.rate * 10)),
                    args.concurrency,
                    rate=peak.rate / 2,
                    server_pid=server.pid,
                )
                results.append(half)
            finally:
                server.terminate()

    print()
    print(f"{args.count} signed messages per run, concurrency {args.concurrency}, 127.0.0.1")
    for result in results:
        print(result.line())
    for result in results[1:]:
        if "half" not in result.name:
            print(
                f"{result.name}: {result.rate / echo_result.rate:.0%} of the echo's rate "
                f"(goal: at least 50%)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
