"""Signed bridge messages through the whole pipeline into the database, beside a bare echo.

Each server runs in its own process on 127.0.0.1; this process is the load generator.  Every
message is signed, has a unique message_id and comes from a registered demo resident, so it goes
through signature check, dedupe, identify, lock, a handler (the help menu) and the inbound log,
committed with group commit.  The baseline is a bare aiohttp app that parses the same JSON and
answers the same shape, measured in the same run.  Goal: at least half the echo's rate.

The servers (the echo, gridbot on SQLite, gridbot on PostgreSQL) run side by side and are
measured in interleaved rounds (their order rotating), so that load from elsewhere on a shared
machine falls on all of them alike; each is judged by its median round.  Then each gridbot again
at half its median peak, for the latency a normal load sees.  Each line also shows the CPU time
per message of the server and of this load generator: the machine has two cores, and whichever
side needs more sets the pace of a run.

    python bench/pipeline_bench.py [--count 3000] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

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


class Server:
    """One server under test, in its own child process, and its peak runs."""

    def __init__(self, name: str, port: int, process: Any, senders: list[str]) -> None:
        self.name = name
        self.port = port
        self.process = process
        self.senders = senders
        self.peaks: list[LoadResult] = []

    @classmethod
    def start(cls, name: str, serve: Any, args: tuple[Any, ...], senders: list[str]) -> Server:
        port = free_port()
        return cls(name, port, run_in_child(serve, port, *args), senders)

    @property
    def peak(self) -> LoadResult:
        """The median of the peak runs by rate."""
        return sorted(self.peaks, key=lambda result: result.rate)[len(self.peaks) // 2]

    async def run(
        self, name: str, count: int, concurrency: int, rate: float | None = None
    ) -> LoadResult:
        return await load(
            name, self.port, self.senders, count, concurrency, rate, server_pid=self.process.pid
        )

    def server_cpu_us(self) -> float | None:
        """Server CPU per message over all peak runs."""
        seconds = [result.server_cpu_s for result in self.peaks]
        if any(s is None for s in seconds):
            return None
        return sum(s for s in seconds if s is not None) / sum(r.count for r in self.peaks) * 1e6

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(5)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with sqlite_url() as sqlite:
        echo = Server.start("bare aiohttp echo", serve_echo, (), ["u"])
        servers = [echo]
        targets = [("gridbot pipeline (SQLite)", sqlite)]
        pg = await fresh_postgres()
        if pg:
            targets.append(("gridbot pipeline (PostgreSQL)", pg))
        else:
            print("PostgreSQL not reachable: measuring SQLite only")
        try:
            for name, url in targets:
                senders = await prepare_database(url)
                servers.append(Server.start(name, serve_gridbot, (url,), senders))
            for server in servers:
                await wait_for_port(server.port)
            # Rounds interleave the servers (in a rotating order), so that a burst of load from
            # elsewhere on the machine falls on all of them alike; each is judged by its median.
            for i in range(args.rounds):
                turn = i % len(servers)
                for server in servers[turn:] + servers[:turn]:
                    server.peaks.append(await server.run(server.name, args.count, args.concurrency))
            halves = [
                await server.run(
                    f"{server.name} @ half peak",
                    min(args.count, int(server.peak.rate * 10)),
                    args.concurrency,
                    rate=server.peak.rate / 2,
                )
                for server in servers[1:]
            ]
        finally:
            for server in servers:
                server.stop()

    print()
    print(
        f"{args.count} signed messages per run, {args.rounds} interleaved rounds (median shown), "
        f"concurrency {args.concurrency}, 127.0.0.1"
    )
    for result in [server.peak for server in servers] + halves:
        print(result.line())
    for server in servers[1:]:
        rounds = ", ".join(
            f"{mine.rate / theirs.rate:.0%}"
            for mine, theirs in zip(server.peaks, echo.peaks, strict=True)
        )
        print(
            f"{server.name}: {server.peak.rate / echo.peak.rate:.0%} of the echo's rate "
            f"(goal: at least 50%; round by round: {rounds})"
        )
    cpu = [(server.name, server.server_cpu_us()) for server in servers]
    if all(us is not None for _, us in cpu):
        print(
            "server CPU a message over all peak runs: "
            + ", ".join(f"{name} {us:.0f} µs" for name, us in cpu)
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
