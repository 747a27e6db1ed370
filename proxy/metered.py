"""One paid request: its hold, its extensions and its settlement."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum

import orjson

from billing.accounts import KeyOwner
from billing.ledger import LEDGER_UNAVAILABLE, Charge
from billing.money import micro_to_credits
from metering.usage import NO_USAGE, Usage
from proxy.config import ModelConfig
from proxy.errors import APIError, ledger_unavailable
from proxy.gateway import Gateway

log = logging.getLogger("creditgate.requests")

# A stream that outgrows its hold asks for room for this many more output tokens at a time.
EXTENSION_TOKENS = 256
_SETTLE_ATTEMPTS = 5


class Outcome(StrEnum):
    OK = "ok"
    CLIENT_CLOSED = "client_closed"
    UPSTREAM_ERROR = "upstream_error"
    INSUFFICIENT_CREDITS = "insufficient_credits"


class MeteredCall:
    def __init__(
        self, gateway: Gateway, owner: KeyOwner, model: ModelConfig, prompt_tokens: int
    ) -> None:
        self.gateway = gateway
        self.owner = owner
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.price = model.rate.price_for(owner.group)  # fixed for the request's life
        self.request_id = f"req_{uuid.uuid4().hex}"
        self.held = 0
        self.started_at = datetime.now(UTC)
        self.first_byte_at: float | None = None
        self._t0 = time.perf_counter()
        self._settled = False

    async def hold(self, max_output_tokens: int) -> None:
        """Reserve the worst case before anything goes upstream; 402 when it is not there.

        The statement runs in a task of its own: if the caller goes away while it runs,
        the hold it may have made is released, not left behind.
        """
        amount = self.price.worst_case(self.prompt_tokens, max_output_tokens)
        gateway = self.gateway
        gateway.inflight.request_ids.add(self.request_id)
        task = gateway.inflight.spawn(
            gateway.ledger.hold(
                self.request_id,
                self.owner.account_id,
                amount,
                model=self.model.name,
                provider=self.model.provider,
                ttl_seconds=gateway.config.server.hold_ttl_seconds,
            )
        )
        try:
            granted = await asyncio.shield(task)
        except asyncio.CancelledError:
            self.held = amount
            self.finish(NO_USAGE, Outcome.CLIENT_CLOSED, 499, after=task)
            raise
        except LEDGER_UNAVAILABLE as err:
            gateway.inflight.request_ids.discard(self.request_id)
            log.error("cannot hold credit for %s: %r", self.request_id, err)
            raise ledger_unavailable() from None
        except BaseException:
            gateway.inflight.request_ids.discard(self.request_id)
            raise
        if not granted:
            gateway.inflight.request_ids.discard(self.request_id)
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

    def output_tokens_covered(self) -> int:
        return self.price.output_tokens_covered(self.held, self.prompt_tokens)

    async def cover(self, output_tokens: int) -> int | None:
        """Extend the hold to pay for `output_tokens`; the tokens now covered, or None."""
        target = self.price.worst_case(self.prompt_tokens, output_tokens + EXTENSION_TOKENS)
        extra = target - self.held
        if extra > 0:
            try:
                extended = await self.gateway.ledger.extend_hold(
                    self.request_id, self.owner.account_id, extra
                )
            except LEDGER_UNAVAILABLE as err:
                # Unable to reserve more, the stream must stop: no output goes unpaid.
                log.error("cannot extend the hold of %s: %r", self.request_id, err)
                return None
            if not extended:
                return None
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
        charge = Charge(
            request_id=self.request_id,
            model=self.model.name,
            provider=self.model.provider,
            upstream_model=self.model.upstream,
            usage=usage,
            credits=self.price.charge(usage),
            provider_cost=self.model.rate.cost.charge(usage),
            price_input=str(self.price.input),
            price_output=str(self.price.output),
            outcome=outcome,
            http_status=status,
            started_at=self.started_at,
            group=self.owner.group,
        )
        try:
            if after is not None and not await after:
                return  # the hold was never made: nothing to settle
            for attempt in range(_SETTLE_ATTEMPTS):
                try:
                    await self.gateway.ledger.settle(charge)
                    break
                except LEDGER_UNAVAILABLE as err:
                    # The charge row's request id makes a retry safe: it is written once.
                    log.warning("settling %s failed (%s), retrying", self.request_id, err)
                    await asyncio.sleep(0.2 * 2**attempt)
            else:
                log.error("could not settle %s; its hold will expire", self.request_id)
        finally:
            self.gateway.inflight.request_ids.discard(self.request_id)
        self._log(charge)

    def _log(self, charge: Charge) -> None:
        now = time.perf_counter()
        usage = charge.usage
        log.info(
            orjson.dumps(
                {
                    "request_id": self.request_id,
                    "account_id": self.owner.account_id,
                    "model": self.model.name,
                    "provider": self.model.provider,
                    "outcome": charge.outcome,
                    "status": charge.http_status,
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "usage_source": usage.source.value,
                    "credits": micro_to_credits(charge.credits),
                    "duration_ms": round((now - self._t0) * 1000, 3),
                    "ttfb_ms": round((self.first_byte_at - self._t0) * 1000, 3)
                    if self.first_byte_at is not None
                    else None,
                }
            ).decode()
        )
