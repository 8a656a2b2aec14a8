"""Helpers shared by the benchmarks: temporary databases, servers in child processes, load."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("GRIDBOT_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
PG_BENCH_DB = os.environ.get("GRIDBOT_BENCH_PG_DB", "gridbot_bench")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fresh_postgres() -> str | None:
    """(Re)create the benchmark database; ``None`` when no server answers."""
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{PG_BENCH_DB}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{PG_BENCH_DB}"')
    finally:
        await conn.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{PG_BENCH_DB}"


@contextmanager
def sqlite_url() -> Any:
    with tempfile.TemporaryDirectory(prefix="gridbot-bench-") as tmp:
        yield f"sqlite+aiosqlite:///{tmp}/bench.db"


def run_in_child(target: Callable[..., None], *args: Any) -> multiprocessing.Process:
    """Start ``target(*args)`` in a fresh process (spawned: no inherited event loop)."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    return process


async def wait_for_port(port: int, patience_s: float = 30.0) -> None:
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {patience_s} s")


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) a process has used so far; ``None`` off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class LoadResult:
    name: str
    count: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    client_cpu_s: float | None = None
    server_cpu_s: float | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def cpu_per_message_us(self, seconds: float | None) -> str:
        if seconds is None or not self.count:
            return "   ?"
        return f"{seconds / self.count * 1e6:4.0f}"

    def line(self) -> str:
        return (
            f"{self.name:<34} {self.rate:6.0f} msg/s   p50 {self.percentile(0.50):6.2f} ms   "
            f"p99 {self.percentile(0.99):6.2f} ms   errors {self.errors}   CPU µs/msg: "
            f"server {self.cpu_per_message_us(self.server_cpu_s)}, "
            f"client {self.cpu_per_message_us(self.client_cpu_s)}"
        )


async def drive(
    name: str,
    count: int,
    concurrency: int,
    send_one: Callable[[int], Awaitable[bool]],
    *,
    rate_limit: float | None = None,
    time_limit: float = 60.0,
    server_pid: int | None = None,
) -> LoadResult:
    """Call ``send_one(i)`` for i < count with bounded concurrency (and an optional paced rate).

    The result also has the CPU time this process (the client) used, and the server's when
    ``server_pid`` is given: on two cores, whichever needs more per message sets the pace."""
    latencies: list[float] = []
    errors = 0
    next_index = 0
    server_cpu = process_cpu_seconds(server_pid) if server_pid else None
    client_cpu = time.process_time()
    start = time.perf_counter()
    deadline = start + time_limit

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < count and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            if rate_limit:
                due = start + i / rate_limit
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            t0 = time.perf_counter()
            ok = await send_one(i)
            latencies.append((time.perf_counter() - t0) * 1000)
            if not ok:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    client_cpu = time.process_time() - client_cpu
    if server_cpu is not None and server_pid:
        server_now = process_cpu_seconds(server_pid)
        server_cpu = None if server_now is None else server_now - server_cpu
    return LoadResult(
        name,
        len(latencies),
        errors,
        seconds,
        latencies,
        client_cpu_s=client_cpu,
        server_cpu_s=server_cpu,
    )


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
