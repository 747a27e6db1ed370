"""The caller's own view of its credits, and self-service sign-up."""

from __future__ import annotations

import secrets
import time
from collections import deque

from aiohttp import web

from billing.accounts import AccountExists
from billing.money import micro_to_credits
from metering import metrics
from proxy.bodies import json_response, read_json_object, text_field
from proxy.errors import APIError
from proxy.gateway import GATEWAY
from proxy.views import account_view

SIGNUP_WINDOW = 3600.0  # seconds over which per-address sign-ups are counted
_TRACKED_ADDRESSES = 100_000


CALLER_FIELDS = ("balance", "pending", "total_purchased", "purchase_link")


async def credits(request: web.Request) -> web.Response:
    """GET /v1/credits: what the caller has, has pending, has bought, and where to buy."""
    gateway = request.app[GATEWAY]
    owner = await gateway.authenticate(request)
    account = await gateway.accounts.get(owner.account_id)
    view = account_view(account, gateway.purchase_link(account.id))
    return json_response({field: view[field] for field in CALLER_FIELDS})


class SignupLimiter:
    """At most N sign-ups per client address in a sliding hour, in this process."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[float]] = {}

    def allow(self, address: str, per_hour: int) -> float:
        """0 when allowed (and counted), else the seconds until the next one is."""
        now = time.monotonic()
        times = self._seen.get(address)
        if times is None:
            if len(self._seen) >= _TRACKED_ADDRESSES:
                self._prune(now)
            times = self._seen[address] = deque()
        while times and times[0] <= now - SIGNUP_WINDOW:
            times.popleft()
        if len(times) >= per_hour:
            return times[0] + SIGNUP_WINDOW - now
        times.append(now)
        return 0.0

    def _prune(self, now: float) -> None:
        for address in [a for a, t in self._seen.items() if not t or t[-1] <= now - SIGNUP_WINDOW]:
            del self._seen[address]


SIGNUPS = web.AppKey("signups", SignupLimiter)


async def signup(request: web.Request) -> web.Response:
    """POST /v1/signup: a new account and its key, when self-service sign-up is on."""
    gateway = request.app[GATEWAY]
    registration = gateway.config.registration
    if "signup" not in registration.modes:
        raise APIError(404, "signup_disabled", "Self-service sign-up is not enabled here.")
    body = await read_json_object(request) if request.can_read_body else {}
    name = text_field(body, "name", required=False) or f"user-{secrets.token_hex(6)}"
    wait = request.app[SIGNUPS].allow(request.remote or "", registration.signups_per_hour)
    if wait:
        metrics.rate_limited.labels("signup").inc()
        raise APIError(
            429,
            "signup_rate_limited",
            f"Too many sign-ups from this address; try again in {wait:.0f} s.",
            type="rate_limit_error",
        )
    try:
        account, key = await gateway.accounts.create(
            name, group=registration.group, starter=gateway.settings.starter
        )
    except AccountExists:
        raise APIError(
            409, "account_exists", f"The name {name!r} is taken.", param="name"
        ) from None
    return json_response(
        {
            "account_id": account.id,
            "name": account.name,
            "api_key": key,
            "balance": micro_to_credits(account.balance),
            "purchase_link": gateway.purchase_link(account.id) or None,
        },
        status=201,
    )
