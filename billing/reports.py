"""The operator's reports: every charge, and usage summed by model or by day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

CHARGE_FIELDS = (
    "request_id", "account_id", "group_name", "model", "provider", "upstream_model",
    "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "images",
    "cache_write_tokens", "credits", "provider_cost", "price_input", "price_output",
    "prices", "usage_source", "outcome", "http_status", "started_at", "ended_at", "endpoint",
    "deployment",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChargeFilter:
    account_id: int | None = None
    model: str | None = None
    provider: str | None = None
    outcome: str | None = None
    since: datetime | None = None  # ended at or after
    until: datetime | None = None  # ended before


# Newest first; (ended_at, request_id) is the cursor: unique and indexed.
_CHARGES = f"""
SELECT {", ".join(CHARGE_FIELDS)} FROM charges
WHERE ($1::bigint IS NULL OR account_id = $1)
  AND ($2::text IS NULL OR model = $2)
  AND ($3::text IS NULL OR provider = $3)
  AND ($4::text IS NULL OR outcome = $4)
  AND ($5::timestamptz IS NULL OR ended_at >= $5)
  AND ($6::timestamptz IS NULL OR ended_at < $6)
  AND ($7::timestamptz IS NULL OR (ended_at, request_id) < ($7, $8::text))
ORDER BY ended_at DESC, request_id DESC
LIMIT $9
"""


async def list_charges(
    pool: asyncpg.Pool,
    where: ChargeFilter,
    *,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[asyncpg.Record]:
    after_time, after_id = before if before else (None, None)
    return await pool.fetch(
        _CHARGES,
        where.account_id,
        where.model,
        where.provider,
        where.outcome,
        where.since,
        where.until,
        after_time,
        after_id,
        limit,
    )


_USAGE = """
SELECT {key} AS key, count(*) AS requests,
       sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,
       sum(cached_tokens)::bigint AS cached_tokens,
       sum(reasoning_tokens)::bigint AS reasoning_tokens,
       sum(images)::bigint AS images, sum(credits)::bigint AS credits,
       sum(provider_cost)::bigint AS provider_cost
FROM charges WHERE ($1::bigint IS NULL OR account_id = $1)
GROUP BY 1 ORDER BY 1
"""
_USAGE_KEYS = {
    "model": "model",
    "day": "to_char(date_trunc('day', ended_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD')",
}


async def usage_summary(
    pool: asyncpg.Pool, by: Literal["model", "day"], account_id: int | None
) -> list[asyncpg.Record]:
    """Requests, tokens, credits charged and provider cost, summed by model or UTC day."""
    return await pool.fetch(_USAGE.format(key=_USAGE_KEYS[by]), account_id)
