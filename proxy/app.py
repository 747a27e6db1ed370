"""The aiohttp application: routes and the lifecycle of the process-wide state."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from billing.database import open_pool, resolve_url
from proxy.chat import chat_completions
from proxy.config import Config
from proxy.errors import error_middleware
from proxy.gateway import GATEWAY, Gateway

CONFIG = web.AppKey("config", Config)


async def list_models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    await gateway.authenticate(request)
    data = [
        {"id": model.name, "object": "model", "created": 0, "owned_by": model.provider}
        for model in gateway.config.models.values()
        if gateway.upstreams[model.provider].available
    ]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    url = await resolve_url(config.database.url, config.database.embedded_dir)
    pool = await open_pool(url, max_size=config.database.pool_size)
    gateway = Gateway(config, pool)
    app[GATEWAY] = gateway
    await gateway.start()
    try:
        yield
    finally:
        await gateway.stop()  # waits for every settlement in flight
        await pool.close()


def create_app(config: Config) -> web.Application:
    app = web.Application(
        client_max_size=config.server.max_body_bytes, middlewares=[error_middleware]
    )
    app[CONFIG] = config
    app.cleanup_ctx.append(_lifespan)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    return app
