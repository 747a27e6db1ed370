"""POST /webhooks/stripe: signed Stripe events that pay for credits."""

from __future__ import annotations

import logging

import orjson
import stripe
from aiohttp import web

from billing.money import micro_to_credits
from billing.payments import apply_event
from proxy.bodies import json_response
from proxy.errors import APIError
from proxy.gateway import GATEWAY

log = logging.getLogger("creditgate.payments")


def _verified(payload: bytes, header: str, secrets: tuple[str, ...], tolerance: int) -> bool:
    """Any configured secret's HMAC-SHA256 matches one of the header's v1 signatures.

    Stripe signs with every active secret while one is being rolled; we may hold the old
    and the new one too. The timestamp must be within the tolerance (no replays).
    """
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
        except stripe.SignatureVerificationError:
            continue
        return True
    return False


async def stripe_webhook(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    config = gateway.config.stripe
    if not config.webhook_secrets:
        raise APIError(404, "not_found", "Stripe webhooks are not configured.")
    payload = await request.read()
    header = request.headers.get("Stripe-Signature", "")
    if not _verified(payload, header, config.webhook_secrets, config.tolerance_seconds):
        log.warning("refused a Stripe webhook with a bad or stale signature")
        raise APIError(400, "invalid_signature", "The Stripe-Signature does not verify.")
    try:
        event = orjson.loads(payload)
        if not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
            raise ValueError
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        raise APIError(400, "invalid_event", "The body is not a Stripe event.") from None
    result = await apply_event(gateway.pool, event, config.credits_per_unit)
    if result.status in ("unknown_account", "unconvertible"):
        # Answered 200 so that Stripe stops retrying; the operator finds it in
        # GET /admin/v1/payments?status=... and in this log.
        log.warning("Stripe event %s paid nothing: %s", event["id"], result.status)
    elif result.status == "granted":
        log.info(
            "Stripe event %s granted %s credits to account %s",
            event["id"],
            micro_to_credits(result.credits),
            result.account_id,
        )
    return json_response({"received": True, "status": result.status})
