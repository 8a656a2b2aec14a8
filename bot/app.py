"""The composition root: builds the whole application from a ``Config``.

Every long-lived resource (database and group commit, HTTP client session, delivery worker,
scheduler) has its lifecycle in ``cleanup_ctx``; nothing lives in module globals.
"""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from jinja2 import Environment, FileSystemLoader, select_autoescape

from bot.api import Api
from bot.api_checkin import install_checkin_api
from bot.api_notices import install_notices_api
from bot.api_people import install_people_api
from bot.api_quarantine import install_quarantine_api
from bot.api_requests import install_requests_api
from bot.api_rumors import install_rumors_api
from bot.channels.base import Sender
from bot.channels.bridge import BridgeChannel
from bot.channels.simulator import SimulatorChannel
from bot.channels.wechat_mp import WeChatMPChannel
from bot.channels.wecom import WeComChannel
from bot.checkin_jobs import checkin_jobs
from bot.config import Config
from bot.console import install_console
from bot.delivery import DeliveryWorker
from bot.dispatcher import Dispatcher
from bot.errors import ErrorReporter
from bot.jobs import foundation_jobs
from bot.notices_jobs import notices_jobs
from bot.posters import GridQrCodes
from bot.proxies import access_logger_class, client_address_middleware
from bot.requests_jobs import requests_jobs
from bot.scheduler import JobRuntime, JobSpec, Scheduler
from flows.engine import FlowEngine
from flows.notices import channel_limits
from flows.texts import TEMPLATE_ROOT, Texts
from handlers import build_flows, build_router
from storage.db import Database, GroupCommitter

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything the running app is made of; tests and the CLI reach parts through it."""

    config: Config
    db: Database
    committer: GroupCommitter
    dispatcher: Dispatcher
    delivery: DeliveryWorker
    scheduler: Scheduler
    errors: ErrorReporter
    api: Api
    session: aiohttp.ClientSession
    qrcodes: GridQrCodes
    channels: dict[str, Any] = field(default_factory=dict)


RUNTIME = web.AppKey("runtime", Runtime)


def page_environment() -> Environment:
    """Jinja2 for HTML pages (autoescaped), from the same template tree as chat texts."""
    return Environment(
        loader=FileSystemLoader(str(TEMPLATE_ROOT)),
        autoescape=select_autoescape(("html",)),
    )


def build_jobs(config: Config) -> list[JobSpec]:
    return foundation_jobs() + requests_jobs(config) + checkin_jobs(config) + notices_jobs(config)


async def build_runtime(config: Config, *, session: aiohttp.ClientSession | None = None) -> Runtime:
    """Create every component (nothing started yet).  Call inside a running event loop."""
    errors = ErrorReporter()
    db = Database(config.database.url, pool_size=config.database.pool_size)
    committer = GroupCommitter(
        db, max_batch=config.database.commit_batch, lanes=config.database.commit_lanes
    )
    texts = Texts()
    flows = FlowEngine(build_flows(), expiry=timedelta(minutes=config.conversation.expiry_minutes))
    dispatcher = Dispatcher(
        config=config,
        db=db,
        committer=committer,
        router=build_router(),
        flows=flows,
        texts=texts,
        errors=errors,
    )
    session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    pages = page_environment()
    channels: dict[str, Any] = {}
    if config.channels.simulator.enabled:
        channels["sim"] = SimulatorChannel(config.channels.simulator, dispatcher, db, pages)
    if config.channels.bridge.enabled:
        channels["bridge"] = BridgeChannel(
            config.channels.bridge,
            dispatcher,
            session,
            reply_budget_s=config.conversation.reply_budget_s,
        )
    if config.channels.wechat_mp.enabled:
        channels["wechat_mp"] = WeChatMPChannel(
            config.channels.wechat_mp,
            dispatcher,
            session,
            reply_budget_s=config.conversation.reply_budget_s,
        )
    if config.channels.wecom.enabled:
        channels["wecom"] = WeComChannel(
            config.channels.wecom,
            dispatcher,
            session,
            reply_budget_s=config.conversation.reply_budget_s,
        )
    senders: dict[str, Sender] = {name: ch for name, ch in channels.items()}
    delivery = DeliveryWorker(
        db,
        senders,
        config.outbox,
        errors,
        limits=channel_limits(config.notices.max_length),
        texts=texts,
        part_gap_s=config.notices.part_gap_s,
    )
    dispatcher.on_queued = delivery.wake
    job_runtime = JobRuntime(
        id=uuid.uuid4().hex,
        config=config,
        db=db,
        committer=committer,
        errors=errors,
        wake_delivery=delivery.wake,
    )
    scheduler = Scheduler(job_runtime, build_jobs(config))
    mp = channels.get("wechat_mp")
    qrcodes = GridQrCodes(db, mp.create_permanent_qrcode if mp is not None else None)
    api = Api(db)
    install_requests_api(api, db, config, delivery.wake)
    install_checkin_api(api, db, config)
    install_notices_api(api, db, config, delivery.wake)
    install_rumors_api(api, db, config, delivery.wake)
    install_quarantine_api(api, db, config, delivery.wake)
    install_people_api(api, db, config, qrcodes)
    return Runtime(
        config=config,
        db=db,
        committer=committer,
        dispatcher=dispatcher,
        delivery=delivery,
        scheduler=scheduler,
        errors=errors,
        api=api,
        session=session,
        qrcodes=qrcodes,
        channels=channels,
    )


async def create_app(config: Config, *, run_workers: bool = True) -> web.Application:
    """The aiohttp application.  ``run_workers=False`` leaves delivery and the scheduler off
    (tests drive them by hand)."""
    rt = await build_runtime(config)
    middlewares: list[Middleware] = [rt.api.middleware]
    if config.server.trusted_proxies:
        middlewares.insert(0, client_address_middleware(config.server.trusted_proxies))
    app = web.Application(middlewares=middlewares, client_max_size=1024**2)
    app[RUNTIME] = rt
    for channel in rt.channels.values():
        app.add_routes(channel.routes())
    app.add_routes(rt.api.routes())
    app.add_routes([web.get("/healthz", _health), web.get("/", _home)])
    install_console(app, config, rt.db, rt.delivery.wake, rt.qrcodes)

    async def database_ctx(app: web.Application) -> AsyncIterator[None]:
        rt.committer.start()
        yield
        await rt.dispatcher.drain()
        await rt.committer.stop()
        await rt.db.dispose()

    async def http_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await rt.session.close()

    async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
        if run_workers:
            rt.delivery.start()
            if config.scheduler.enabled:
                await rt.scheduler.start()
        yield
        await rt.scheduler.stop()
        await rt.delivery.stop()

    app.cleanup_ctx.extend([http_ctx, database_ctx, workers_ctx])
    return app


def serve(
    config: Config, *, run_workers: bool = True, access_log: logging.Logger | None = None
) -> None:
    """Run the application on ``config.server`` until interrupted: ``main.py serve``, and the
    benchmarks, which measure what production runs."""

    async def build() -> web.Application:
        app = await create_app(config, run_workers=run_workers)
        app.on_startup.append(_tune_collector)
        return app

    web.run_app(
        build(),
        host=config.server.host,
        port=config.server.port,
        print=None,
        **access_log_options(config, access_log),
    )


def access_log_options(config: Config, access_log: logging.Logger | None) -> dict[str, Any]:
    """aiohttp runner options for the access log (off when ``access_log`` is None): one line a
    request, naming the client behind ``server.trusted_proxies`` rather than the proxy."""
    return {
        "access_log": access_log,
        "access_log_class": access_logger_class(config.server.trusted_proxies),
    }


async def _tune_collector(app: web.Application) -> None:
    """Once everything is built: what exists now (modules, compiled statements and templates,
    the app) lives as long as the process, so the cyclic garbage collector stops scanning it
    (``gc.freeze``); and it runs after 20 000 allocations instead of 700, so that the objects
    of a request in flight are mostly gone before it looks.  Together about a tenth of the CPU
    time of a message."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


async def _health(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    async with rt.db.read() as conn:
        await conn.exec_driver_sql("SELECT 1")
    return web.json_response({"status": "ok", "scheduler_leader": rt.scheduler.is_leader})


async def _home(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if rt.config.channels.simulator.enabled:
        raise web.HTTPFound(rt.config.channels.simulator.path)
    return web.json_response({"service": "gridbot", "api": "/api/v1/openapi.json"})
