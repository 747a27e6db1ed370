"""Credits bought through Stripe Checkout (Payment Links), granted once per payment.

Each Stripe event is recorded once (its id is the key) and each checkout session grants
at most once (its id is the grant's reference), so redeliveries, a session seen in two
events and events out of order never grant twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import asyncpg

from billing.ledger import GRANT_SQL
from billing.money import MICRO_PER_CREDIT

# Events that can carry a completed payment.
COMPLETED = "checkout.session.completed"
ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"

# Stripe amounts are in the currency's minor unit; these are the exceptions to 2 decimals.
_ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
_THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


def credits_for(amount_minor: int, currency: str, per_unit: dict[str, Decimal]) -> int | None:
    """Micro-credits bought by a payment, rounded down; None for an unconfigured currency."""
    rate = per_unit.get(currency.lower())
    if rate is None:
        return None
    code = currency.lower()
    exponent = 0 if code in _ZERO_DECIMAL else 3 if code in _THREE_DECIMAL else 2
    micro = Decimal(amount_minor) * rate * MICRO_PER_CREDIT / (Decimal(10) ** exponent)
    return int(micro.to_integral_value(ROUND_FLOOR))


@dataclass(frozen=True, slots=True)
class PaymentResult:
    status: str  # granted, duplicate_event, duplicate_session, pending, ignored, ...
    account_id: int | None = None
    credits: int = 0


async def apply_event(
    pool: asyncpg.Pool, event: dict[str, Any], per_unit: dict[str, Decimal]
) -> PaymentResult:
    """Record a verified Stripe event and grant what it paid for, in one transaction."""
    event_id, kind = event["id"], event["type"]
    session = event.get("data", {}).get("object") or {}
    session_id = session.get("id") if isinstance(session.get("id"), str) else None
    reference = session.get("client_reference_id")
    amount = session.get("amount_total")
    currency = session.get("currency")
    async with pool.acquire() as conn, conn.transaction():
        fresh = await conn.fetchval(
            "INSERT INTO stripe_events (event_id, type, session_id, account_ref, amount,"
            " currency, status) VALUES ($1, $2, $3, $4, $5, $6, 'received')"
            " ON CONFLICT (event_id) DO NOTHING RETURNING 1",
            event_id,
            kind,
            session_id,
            str(reference) if reference is not None else None,
            amount if isinstance(amount, int) else None,
            currency if isinstance(currency, str) else None,
        )
        if fresh is None:
            return PaymentResult("duplicate_event")
        result, detail = await _grant(conn, kind, session, session_id, per_unit)
        await conn.execute(
            "UPDATE stripe_events SET status = $2, credits = $3, detail = $4 WHERE event_id = $1",
            event_id,
            result.status,
            result.credits or None,
            detail,
        )
    return result


async def _grant(
    conn: asyncpg.Connection,
    kind: str,
    session: dict[str, Any],
    session_id: str | None,
    per_unit: dict[str, Decimal],
) -> tuple[PaymentResult, str | None]:
    if kind not in (COMPLETED, ASYNC_SUCCEEDED):
        return PaymentResult("ignored"), None
    if session.get("payment_status") != "paid":
        # Delayed methods (bank debits) complete unpaid; async_payment_succeeded follows.
        return PaymentResult("pending"), f"payment_status {session.get('payment_status')!r}"
    reference = str(session.get("client_reference_id") or "")
    account_id = int(reference) if reference.isdigit() else None
    if account_id is None or not await conn.fetchval(
        "SELECT 1 FROM accounts WHERE id = $1", account_id
    ):
        return PaymentResult("unknown_account"), f"client_reference_id {reference!r}"
    amount, currency = session.get("amount_total"), session.get("currency")
    credits = (
        credits_for(amount, currency, per_unit)
        if isinstance(amount, int) and isinstance(currency, str) and session_id
        else None
    )
    if credits is None:
        return PaymentResult("unconvertible", account_id), (
            f"no credit rate for {amount!r} {currency!r} (stripe.credits_per_unit)"
        )
    balance = await conn.fetchval(
        GRANT_SQL,
        account_id,
        credits,
        "purchase",
        f"stripe:{session_id}",
        f"Stripe checkout {session_id}",
    )
    if balance is None:
        return PaymentResult("duplicate_session", account_id), None
    return PaymentResult("granted", account_id, credits), None
