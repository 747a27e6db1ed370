"""The aiohttp application: routes and the lifecycle of the process-wide state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from billing.database import open_pool, resolve_url
from billing.ledger import LEDGER_UNAVAILABLE
from metering import metrics
from proxy.admin import add_admin_routes
from proxy.bodies import MAX_BODY_BYTES, json_response
from proxy.chat import chat_completions
from proxy.config import Config
from proxy.errors import error_middleware
from proxy.gateway import GATEWAY, Gateway
from proxy.registration import SIGNUPS, SignupLimiter, credits, signup
from proxy.webhooks import stripe_webhook

CONFIG = web.AppKey("config", Config)


async def list_models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    await gateway.authenticate(request)
    data = [
        {"id": model.name, "object": "model", "created": 0, "owned_by": model.provider}
        for model in gateway.config.models.values()
        if gateway.upstreams[model.provider].available
    ]
    return json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def metrics_endpoint(request: web.Request) -> web.Response:
    body, content_type = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the config is loaded and the database answers."""
    gateway = request.app.get(GATEWAY)
    if gateway is None:
        return json_response({"status": "starting"}, status=503)
    try:
        await asyncio.wait_for(gateway.pool.fetchval("SELECT 1"), timeout=2)
    except (TimeoutError, *LEDGER_UNAVAILABLE) as err:
        return json_response({"status": "unavailable", "database": type(err).__name__}, 503)
    return json_response({"status": "ready", "models": len(gateway.config.models)})


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
    app[MAX_BODY_BYTES] = config.server.max_body_bytes
    app.cleanup_ctx.append(_lifespan)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/credits", credits)
    app.router.add_post("/v1/signup", signup)
    app.router.add_post("/webhooks/stripe", stripe_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    add_admin_routes(app)
    app[SIGNUPS] = SignupLimiter()
    return app
