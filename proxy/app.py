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
from proxy.chat import ChatCompletions
from proxy.config import Config
from proxy.errors import error_middleware
from proxy.exchange import Surface
from proxy.gateway import GATEWAY, Gateway
from proxy.media import Embeddings, ImageGenerations
from proxy.messages import Messages
from proxy.registration import SIGNUPS, SignupLimiter, credits, signup
from proxy.responses import Responses
from proxy.webhooks import stripe_webhook

CONFIG = web.AppKey("config", Config)
SURFACES: tuple[Surface, ...] = (
    ChatCompletions(),
    Messages(),
    Responses(),
    Embeddings(),
    ImageGenerations(),
)


async def list_models(request: web.Request) -> web.Response:
    """The models this caller can use, priced for the caller's group."""
    gateway = request.app[GATEWAY]
    owner = await gateway.authenticate(request, x_api_key=True)
    data = []
    for model in gateway.config.models.values():
        providers = [d.provider for d in model.deployments]
        if not any(gateway.upstreams[p].available for p in providers):
            continue
        price = model.rate.price_for(owner.group)
        unit = "credits per image" if model.type == "image" else "credits per 1M tokens"
        data.append(
            {
                "id": model.name,
                "object": "model",
                "created": 0,
                "owned_by": providers[0],
                "type": model.type,
                "pricing": {"unit": unit, "group": owner.group, **price.describe()},
            }
        )
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
    for surface in SURFACES:
        app.router.add_post(surface.path, surface.handle)
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
