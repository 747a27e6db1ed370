"""Weighted routing over a model's deployments, with retries, failover and cooldowns.

A request tries its deployments in an order drawn by weight. On a connection error, a
timeout, a 429 or a 5xx it tries the same deployment again (`routing.retries` times,
backing off), then the next. All of that happens before the caller has seen a byte; once
a reply is being relayed it is never retried, or the caller would get its text twice.
A deployment that fails `failures_before_cooldown` times in a row is tried last for
`cooldown_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from metering import metrics
from proxy.config import Deployment, ModelConfig, RoutingConfig
from proxy.upstream import UPSTREAM_FAILURES, Operation, Upstream, UpstreamReply

log = logging.getLogger("creditgate.routing")


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


@dataclass(frozen=True, slots=True)
class Target:
    """A deployment with the one credential an attempt uses, and the upstream API call
    that serves the request there."""

    deployment: Deployment
    upstream: Upstream
    credential: str
    operation: Operation

    @property
    def key(self) -> str:
        """provider/upstream, and #credential when the provider has several."""
        name = self.deployment.name
        if self.deployment.credential or len(self.upstream.config.credentials) < 2:
            return name
        return f"{name}#{self.credential}"


@dataclass(slots=True)
class Served:
    """The reply that will reach the caller (its body already read unless streamed)."""

    target: Target
    reply: UpstreamReply
    body: bytes | None


class UpstreamsFailed(Exception):
    """Every attempt failed. The last refusal, if the last attempt got one, is kept so
    that the caller sees what the provider said."""

    def __init__(self, target: Target | None, reason: str, refusal: tuple[int, bytes] | None):
        super().__init__(reason)
        self.target = target
        self.reason = reason  # "unreachable", "timeout" or "http_<status>"
        self.refusal = refusal


@dataclass(slots=True)
class _Health:
    failures: int = 0  # in a row
    cooled_until: float = 0.0


class Router:
    def __init__(self, config: RoutingConfig) -> None:
        self.config = config
        self._health: dict[str, _Health] = {}
        self._cooled: dict[str, str] = {}  # target key -> provider, while cooling down

    def targets(
        self,
        model: ModelConfig,
        upstreams: Mapping[str, Upstream],
        operations: Sequence[Operation],
    ) -> list[Target]:
        """The order to try this model's deployments that can do one of `operations`
        (the first that a deployment can, if several): drawn by weight
        (Efraimidis-Spirakis), those cooling down last."""
        now = time.monotonic()
        self._end_cooldowns(now)
        keyed = []
        several = len(model.deployments) > 1
        for deployment in model.deployments:
            upstream = upstreams[deployment.provider]
            operation = next((op for op in operations if op in upstream.operations), None)
            if operation is None or not upstream.available:
                continue
            drawn = -(random.random() ** (1 / deployment.weight)) if several else 0.0
            # A deployment's credentials follow each other in the provider's rotation.
            for turn, credential in enumerate(upstream.credentials_for(deployment)):
                target = Target(deployment, upstream, credential, operation)
                keyed.append((target.key in self._cooled, drawn, turn, target))
        keyed.sort(key=lambda entry: entry[:3])
        return [entry[3] for entry in keyed]

    def _end_cooldowns(self, now: float) -> None:
        ended = [key for key in self._cooled if self._health[key].cooled_until <= now]
        for key in ended:
            provider = self._cooled.pop(key)
            self._gauge(provider)

    def _gauge(self, provider: str) -> None:
        cooled = sum(1 for p in self._cooled.values() if p == provider)
        metrics.child(metrics.upstream_cooldowns, provider).set(cooled)

    def failed(self, target: Target, reason: str) -> None:
        provider = target.deployment.provider
        metrics.child(metrics.upstream_failures, provider, reason).inc()
        health = self._health.setdefault(target.key, _Health())
        health.failures += 1
        if health.failures >= self.config.failures_before_cooldown and self.config.cooldown_seconds:
            health.cooled_until = time.monotonic() + self.config.cooldown_seconds
            if target.key not in self._cooled:
                log.warning(
                    "deployment %s failed %d times in a row (%s): cooling down for %gs",
                    target.key, health.failures, reason, self.config.cooldown_seconds,
                )  # fmt: skip
            self._cooled[target.key] = provider
            self._gauge(provider)

    def succeeded(self, target: Target) -> None:
        health = self._health.get(target.key)
        if health is not None:
            health.failures = 0
            if self._cooled.pop(target.key, None) is not None:
                self._gauge(target.deployment.provider)

    async def send(
        self,
        targets: list[Target],
        body_for: Callable[[Target], tuple[bytes, dict[str, Any]]],
        headers: Mapping[str, str],
        *,
        read_body: bool,
    ) -> Served:
        """The first good reply, trying each target in turn; raises UpstreamsFailed."""
        failure = UpstreamsFailed(None, "unreachable", None)
        for target in targets:
            body, payload = body_for(target)
            for attempt in range(1 + self.config.retries):
                if attempt:
                    await asyncio.sleep(self.config.retry_backoff * 2 ** (attempt - 1))
                reply: UpstreamReply | None = None
                try:
                    reply = await target.upstream.send(
                        target.operation,
                        target.deployment,
                        target.credential,
                        body,
                        payload,
                        headers,
                    )
                    if _retryable(reply.status):
                        refusal = (reply.status, await reply.read())
                        reply.close()
                        failure = UpstreamsFailed(target, f"http_{reply.status}", refusal)
                        self.failed(target, failure.reason)
                        continue
                    read = await reply.read() if read_body else None
                except UPSTREAM_FAILURES as err:
                    if reply is not None:
                        reply.close()
                    reason = "timeout" if isinstance(err, asyncio.TimeoutError) else "unreachable"
                    failure = UpstreamsFailed(target, reason, None)
                    self.failed(target, reason)
                    continue
                if reply.status < 400:
                    self.succeeded(target)
                return Served(target, reply, read)
        raise failure
