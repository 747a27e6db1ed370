"""Prometheus metrics: usage, revenue, provider cost and gateway health.

Labels are the model, provider, endpoint, outcome and customer group: never an account
or key (unbounded cardinality) unless the operator opts in to the per-account series.
With several worker processes, prometheus-client's multiprocess mode is used (the
PROMETHEUS_MULTIPROC_DIR environment variable, set before this module is imported).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from metering.usage import Usage

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# From 50 µs: creditgate's own overhead is sub-millisecond and must be resolved.
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
)  # fmt: skip

_REQUEST = ("model", "provider", "endpoint")
_MONEY = ("model", "provider", "group")

requests = Counter(
    "creditgate_requests", "Requests by outcome and HTTP status", (*_REQUEST, "outcome", "code")
)
tokens = Counter(
    "creditgate_tokens", "Tokens billed, by kind and usage source", (*_MONEY, "kind", "source")
)
images = Counter("creditgate_images", "Images generated and billed", _MONEY)
credits_charged = Counter(
    "creditgate_credits_charged", "Credits charged to callers (revenue)", _MONEY
)
provider_cost = Counter(
    "creditgate_provider_cost", "What the providers charge the operator, in credits", _MONEY
)
account_credits_charged = Counter(
    "creditgate_account_credits_charged",
    "Credits charged per account (only when metrics.account_labels is on)",
    ("account",),
)
insufficient_credits = Counter(
    "creditgate_insufficient_credits",
    "Requests refused or stopped for lack of credit",
    ("model",),
)
rate_limited = Counter("creditgate_rate_limited", "Requests refused by a rate limit", ("route",))

duration = Histogram(
    "creditgate_request_duration_seconds",
    "Total time of a request",
    _REQUEST,
    buckets=LATENCY_BUCKETS,
)
time_to_first_byte = Histogram(
    "creditgate_time_to_first_byte_seconds",
    "Time until the caller got the first byte",
    _REQUEST,
    buckets=LATENCY_BUCKETS,
)
upstream_time_to_first_byte = Histogram(
    "creditgate_upstream_time_to_first_byte_seconds",
    "Time until the provider's response headers arrived",
    _REQUEST,
    buckets=LATENCY_BUCKETS,
)
overhead = Histogram(
    "creditgate_overhead_seconds",
    "creditgate's own time: total minus the provider's",
    _REQUEST,
    buckets=OVERHEAD_BUCKETS,
)
ledger_seconds = Histogram(
    "creditgate_ledger_seconds",
    "Time of a ledger statement",
    ("operation",),
    buckets=OVERHEAD_BUCKETS,
)
ledger_errors = Counter("creditgate_ledger_errors", "Ledger statements that failed", ("operation",))

active_streams = Gauge(
    "creditgate_active_streams", "Streams being relayed", multiprocess_mode="livesum"
)
open_holds = Gauge(
    "creditgate_open_holds", "Holds of requests in flight", multiprocess_mode="livesum"
)
held_credits = Gauge(
    "creditgate_held_credits",
    "Credits reserved by requests in flight",
    multiprocess_mode="livesum",
)
upstream_cooldowns = Gauge(
    "creditgate_upstream_cooldowns",
    "Upstream deployments cooling down after failures",
    ("provider",),
    multiprocess_mode="livemax",
)
upstream_failures = Counter(
    "creditgate_upstream_failures",
    "Upstream attempts that failed and were retried or failed over",
    ("provider", "reason"),
)
credits_outstanding = Gauge(
    "creditgate_credits_outstanding",
    "Credits on all accounts' balances (read from the ledger)",
    multiprocess_mode="mostrecent",
)
funded_accounts = Gauge(
    "creditgate_accounts_with_balance",
    "Accounts with a positive balance (read from the ledger)",
    multiprocess_mode="mostrecent",
)

MICRO = 1_000_000


@lru_cache(maxsize=4096)
def child(metric: Any, *values: str) -> Any:
    """metric.labels(*values), remembered: the label sets are few (configured models,
    providers, groups, outcomes) and labels() takes a lock and checks each value."""
    return metric.labels(*values)


LEDGER_OPERATIONS = ("hold", "extend", "settle")


def initialize(models: list[str], providers: list[str]) -> None:
    """Create the known series at zero, so that a rate of "none yet" is 0, not missing."""
    for model in models:
        insufficient_credits.labels(model)
    for provider in providers:
        upstream_cooldowns.labels(provider).set(0)
    for operation in LEDGER_OPERATIONS:
        ledger_errors.labels(operation)
    rate_limited.labels("signup")


def record_usage(
    model: str,
    provider: str,
    group: str,
    usage: Usage,
    charged: int,
    cost: int,
    account: str | None,
) -> None:
    """Count what one settled request used and cost (amounts in micro-credits)."""
    source = usage.source.value
    for kind, count in (
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cached", usage.cached_tokens),
        ("reasoning", usage.reasoning_tokens),
        ("cache_write", usage.cache_write_tokens),
    ):
        child(tokens, model, provider, group, kind, source).inc(count)
    if usage.images:
        child(images, model, provider, group).inc(usage.images)
    child(credits_charged, model, provider, group).inc(charged / MICRO)
    child(provider_cost, model, provider, group).inc(cost / MICRO)
    if account is not None:
        account_credits_charged.labels(account).inc(charged / MICRO)


def exposition() -> tuple[bytes, str]:
    """The text of /metrics: this process's, or the sum over every worker's."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
