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

PG_ADMIN_URL = os.environ.get(
    "GRIDBOT_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test"
)
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


async def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@dataclass
class LoadResult:
    name: str
    count: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self) -> str:
        return (
            f"{self.name:<34} {self.rate:9.0f} msg/s   p50 {self.percentile(0.50):7.2f} ms   "
            f"p99 {self.percentile(0.99):7.2f} ms   errors {self.errors}"
        )


async def drive(
    name: str,
    count: int,
    concurrency: int,
    send_one: Callable[[int], Awaitable[bool]],
    *,
    rate_limit: float | None = None,
    time_limit: float = 60.0,
) -> LoadResult:
    """Call ``send_one(i)`` for i < count with bounded concurrency (and an optional paced rate)."""
    latencies: list[float] = []
    errors = 0
    next_index = 0
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
    return LoadResult(name, len(latencies), errors, time.perf_counter() - start, latencies)


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
