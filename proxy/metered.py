"""One paid request: its hold, its extensions and its settlement."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

import orjson

from billing.accounts import KeyOwner
from billing.ledger import LEDGER_UNAVAILABLE, Charge, Hold
from billing.money import micro_to_credits
from billing.rates import ImagePrice, ImageRate, Rate, TextRate
from metering import metrics
from metering.usage import NO_USAGE, Usage
from proxy.config import Deployment, ModelConfig
from proxy.errors import APIError, ledger_unavailable
from proxy.gateway import Gateway
from proxy.routing import Target

log = logging.getLogger("creditgate.requests")
T = TypeVar("T")

# A stream that outgrows its hold asks for room for this many more output tokens at a time.
EXTENSION_TOKENS = 256
_SETTLE_ATTEMPTS = 5


class _RequestIds:
    """Unique request ids without a system call each: a random prefix drawn once per
    process (a forked worker draws its own), then a counter."""

    def __init__(self) -> None:
        self._start()
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self.pid = os.getpid()  # for the log lines, without a getpid() per request
        self._prefix = uuid.uuid4().hex[:20]
        self._count = itertools.count()

    def next(self) -> str:
        return f"req_{self._prefix}{next(self._count):012x}"


REQUEST_IDS = _RequestIds()


class Outcome(StrEnum):
    OK = "ok"
    CLIENT_CLOSED = "client_closed"
    UPSTREAM_ERROR = "upstream_error"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    REJECTED = "rejected"  # refused before any credit was held (bad input, auth, model)


async def timed(operation: str, statement: Awaitable[T]) -> T:
    """Run a ledger statement, observing its latency and counting its failures."""
    started = time.perf_counter()
    try:
        return await statement
    except BaseException:
        metrics.child(metrics.ledger_errors, operation).inc()
        raise
    finally:
        metrics.child(metrics.ledger_seconds, operation).observe(time.perf_counter() - started)


Price = TextRate | ImagePrice


def priced(rate: Rate, image: tuple[str | None, str | None] | None) -> Price:
    """A rate as it applies to one request: an image rate for the size and quality asked."""
    if isinstance(rate, ImageRate):
        size, quality = image or (None, None)
        return rate.price(size, quality)
    return rate


class MeteredCall:
    """A request from its hold to its settlement, with the times its metrics need."""

    def __init__(
        self,
        gateway: Gateway,
        owner: KeyOwner,
        model: ModelConfig,
        prompt_tokens: int,
        *,
        endpoint: str,
        arrived: float,
        image: tuple[str | None, str | None] | None = None,
    ) -> None:
        self.gateway = gateway
        self.owner = owner
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.endpoint = endpoint
        self._image = image  # the (size, quality) that image rates depend on
        # The price is fixed when the request starts, whatever a reload does meanwhile.
        self.price = priced(model.rate.price_for(owner.group), image)
        self.deployment: Deployment | None = None  # the one that served, once known
        self.deployment_key = ""  # ... and the credential it used
        self.request_id = REQUEST_IDS.next()
        self.held = 0
        self.started_at = datetime.now(UTC)
        self._arrived = arrived  # perf_counter() when the request came in
        self.first_byte_at: float | None = None
        self.upstream_sent_at: float | None = None  # when the request went upstream
        self.upstream_headers_at: float | None = None
        self.upstream_done_at: float | None = None
        self._settled = False
        self._gauged = False  # counted in the open-holds gauges

    def serve(self, target: Target) -> None:
        """Record the deployment (and credential) that this request was sent to."""
        self.deployment = target.deployment
        self.deployment_key = target.key

    @property
    def provider(self) -> str:
        return self.deployment.provider if self.deployment else self.model.provider

    def _labels(self) -> tuple[str, str, str]:
        return self.model.name, self.provider, self.endpoint

    def worst_case(self, output_tokens: int = 0, images: int = 0) -> int:
        """The most this request can cost: its prompt, and `output_tokens` or `images`."""
        if isinstance(self.price, ImagePrice):
            return self.price.charge(Usage(images=images))
        return self.price.worst_case(self.prompt_tokens, output_tokens)

    async def hold(self, amount: int) -> None:
        """Reserve `amount` before anything goes upstream; 402 when it is not there.

        The statement runs in a task of its own: if the caller goes away while it runs,
        the hold it may have made is released, not left behind.
        """
        gateway = self.gateway
        gateway.inflight.request_ids.add(self.request_id)
        task = gateway.inflight.spawn(
            timed(
                "hold",
                gateway.holds.hold(
                    Hold(
                        self.request_id,
                        self.owner.account_id,
                        amount,
                        self.model.name,
                        self.provider,
                        gateway.config.server.hold_ttl_seconds,
                    )
                ),
            )
        )
        try:
            granted = await asyncio.shield(task)
        except asyncio.CancelledError:
            self.held = amount
            self.finish(NO_USAGE, Outcome.CLIENT_CLOSED, 499, after=task)
            raise
        except BaseException as err:
            gateway.inflight.request_ids.discard(self.request_id)
            if isinstance(err, LEDGER_UNAVAILABLE):
                log.error("cannot hold credit for %s: %r", self.request_id, err)
                raise ledger_unavailable() from None
            raise
        if not granted:
            gateway.inflight.request_ids.discard(self.request_id)
            metrics.child(metrics.insufficient_credits, self.model.name).inc()
            link = gateway.purchase_link(self.owner.account_id)
            buy = f" Buy more at {link}" if link else ""
            raise APIError(
                402,
                "insufficient_credits",
                f"Insufficient credits: this request can cost up to {micro_to_credits(amount)} "
                f"credits, more than the account has available.{buy}",
                type="insufficient_credits",
                purchase_link=link or None,
            )
        self.held = amount
        self._gauged = True
        metrics.open_holds.inc()
        metrics.held_credits.inc(amount / metrics.MICRO)

    def output_tokens_covered(self) -> int:
        if isinstance(self.price, ImagePrice):
            return 1 << 62  # images are held whole; their streams carry no tokens to cover
        return self.price.output_tokens_covered(self.held, self.prompt_tokens)

    async def cover(self, output_tokens: int) -> int | None:
        """Extend the hold to pay for `output_tokens`; the tokens now covered, or None."""
        target = self.worst_case(output_tokens + EXTENSION_TOKENS)
        extra = target - self.held
        if extra > 0:
            try:
                extended = await timed(
                    "extend",
                    self.gateway.ledger.extend_hold(self.request_id, self.owner.account_id, extra),
                )
            except LEDGER_UNAVAILABLE as err:
                # Unable to reserve more, the stream must stop: no output goes unpaid.
                log.error("cannot extend the hold of %s: %r", self.request_id, err)
                return None
            if not extended:
                metrics.child(metrics.insufficient_credits, self.model.name).inc()
                return None
            metrics.held_credits.inc(extra / metrics.MICRO)
            self.held = target
        return self.output_tokens_covered()

    def mark_first_byte(self) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()

    def finish(
        self, usage: Usage, outcome: str, status: int, *, after: asyncio.Task | None = None
    ) -> asyncio.Task:
        """Settle exactly once, in a task that outlives the handler's cancellation."""
        if self._settled:
            raise RuntimeError(f"{self.request_id} settled twice")
        self._settled = True
        return self.gateway.inflight.spawn(self._settle(usage, outcome, status, after))

    async def _settle(
        self, usage: Usage, outcome: str, status: int, after: asyncio.Task | None
    ) -> None:
        deployment = self.deployment
        cost = priced(deployment.cost if deployment else self.model.rate.cost, self._image)
        prices = self.price.describe()
        charge = Charge(
            request_id=self.request_id,
            model=self.model.name,
            provider=self.provider,
            upstream_model=deployment.upstream if deployment else "",
            usage=usage,
            credits=self.price.charge(usage),
            provider_cost=cost.charge(usage),
            price_input=prices.get("input", ""),
            price_output=prices.get("output", ""),
            outcome=outcome,
            http_status=status,
            started_at=self.started_at,
            ended_at=datetime.now(UTC),
            group=self.owner.group,
            endpoint=self.endpoint,
            deployment=self.deployment_key,
            prices=orjson.dumps(prices).decode(),
        )
        written = False
        try:
            if after is not None and not await after:
                return  # the hold was never made: nothing to settle
            for attempt in range(_SETTLE_ATTEMPTS):
                try:
                    balance = await timed("settle", self.gateway.settlements.settle(charge))
                    # None: the hold was gone (expired and swept), so nothing was charged.
                    written = balance is not None
                    break
                except LEDGER_UNAVAILABLE as err:
                    # The charge row's request id makes a retry safe: it is written once.
                    log.warning("settling %s failed (%s), retrying", self.request_id, err)
                    await asyncio.sleep(0.2 * 2**attempt)
        except Exception:
            log.exception("settling %s failed", self.request_id)
        finally:
            self.gateway.inflight.request_ids.discard(self.request_id)
        if self._gauged:
            metrics.open_holds.dec()
            metrics.held_credits.dec(self.held / metrics.MICRO)
        if written:
            self._observe(charge)  # counted once it is in the ledger, so the two agree
        else:
            log.error("could not settle %s; its hold will expire", self.request_id)

    def _observe(self, charge: Charge) -> None:
        """The request's metrics and its one log line."""
        now = time.perf_counter()
        labels = self._labels()
        metrics.child(metrics.requests, *labels, charge.outcome, str(charge.http_status)).inc()
        metrics.record_usage(
            self.model.name,
            self.provider,
            self.owner.group,
            charge.usage,
            charge.credits,
            charge.provider_cost,
            str(self.owner.account_id) if self.gateway.config.metrics.account_labels else None,
        )
        total = now - self._arrived
        metrics.child(metrics.duration, *labels).observe(total)
        if self.first_byte_at is not None:
            metrics.child(metrics.time_to_first_byte, *labels).observe(
                self.first_byte_at - self._arrived
            )
        if self.upstream_sent_at is not None and self.upstream_headers_at is not None:
            metrics.child(metrics.upstream_time_to_first_byte, *labels).observe(
                self.upstream_headers_at - self.upstream_sent_at
            )
            upstream = (self.upstream_done_at or now) - self.upstream_sent_at
            metrics.child(metrics.overhead, *labels).observe(max(total - upstream, 0.0))
        self._log(charge, total)

    def _log(self, charge: Charge, total: float) -> None:
        usage = charge.usage
        log.info(
            orjson.dumps(
                {
                    "request_id": self.request_id,
                    "pid": REQUEST_IDS.pid,
                    "account_id": self.owner.account_id,
                    "model": self.model.name,
                    "provider": self.provider,
                    "deployment": charge.deployment,
                    "outcome": charge.outcome,
                    "status": charge.http_status,
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "usage_source": usage.source.value,
                    "credits": micro_to_credits(charge.credits),
                    "duration_ms": round(total * 1000, 3),
                    "ttfb_ms": round((self.first_byte_at - self._arrived) * 1000, 3)
                    if self.first_byte_at is not None
                    else None,
                }
            ).decode()
        )
