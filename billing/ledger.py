"""The credit ledger in PostgreSQL: accounts, keys, grants, holds and charges.

Every change of a balance is one atomic statement (or one transaction where a statement
cannot express it), so concurrent requests on one account can neither overdraw it
through their holds nor lose a charge.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from metering.usage import Usage

KEY_PREFIX = "cg-"

# What a ledger call raises when the database cannot be reached or the connection broke.
LEDGER_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class KeyOwner:
    account_id: int
    account_name: str
    group: str
    disabled: bool


@dataclass(frozen=True, slots=True)
class AccountSummary:
    id: int
    name: str
    group: str
    balance: int
    pending: int
    total_granted: int
    total_purchased: int
    total_spent: int
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class Charge:
    """What one request cost, ready to be written when its hold is released."""

    request_id: str
    model: str
    provider: str
    upstream_model: str
    usage: Usage
    credits: int
    provider_cost: int
    price_input: str
    price_output: str
    outcome: str
    http_status: int
    started_at: datetime


class AccountExists(Exception):
    pass


_HOLD = """
WITH reserved AS (
    UPDATE accounts SET held = held + $2
    WHERE id = $1 AND NOT disabled AND balance - held >= $2
    RETURNING id
)
INSERT INTO holds (request_id, account_id, amount, model, provider, expires_at)
SELECT $3, id, $2, $4, $5, now() + make_interval(secs => $6) FROM reserved
RETURNING request_id
"""

# Releases the hold, appends the charge and debits it, all in one statement. Without a
# hold row (already settled, or expired and swept) it changes nothing.
_SETTLE = """
WITH released AS (
    DELETE FROM holds WHERE request_id = $1 RETURNING account_id, amount
), charged AS (
    INSERT INTO charges (request_id, account_id, model, provider, upstream_model,
                         input_tokens, output_tokens, cached_tokens, reasoning_tokens,
                         credits, provider_cost, price_input, price_output,
                         usage_source, outcome, http_status, started_at)
    SELECT $1, account_id, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16
    FROM released
    ON CONFLICT (request_id) DO NOTHING
    RETURNING credits
)
UPDATE accounts SET held = accounts.held - released.amount,
                    balance = accounts.balance - COALESCE((SELECT credits FROM charged), 0),
                    last_used_at = now()
FROM released WHERE accounts.id = released.account_id
RETURNING accounts.balance
"""

# Holds whose process stopped renewing them: released, and recorded as charges of
# nothing with outcome 'expired' (the request's usage died with its process).
_EXPIRE = """
WITH expired AS (
    DELETE FROM holds
    WHERE request_id IN (SELECT request_id FROM holds WHERE expires_at < now() LIMIT $1)
    RETURNING request_id, account_id, amount, model, provider, created_at
), recorded AS (
    INSERT INTO charges (request_id, account_id, model, provider, credits, provider_cost,
                         usage_source, outcome, started_at)
    SELECT request_id, account_id, model, provider, 0, 0, 'none', 'expired', created_at
    FROM expired
    ON CONFLICT (request_id) DO NOTHING
), per_account AS (
    SELECT account_id, sum(amount)::bigint AS amount, count(*) AS holds
    FROM expired GROUP BY account_id
)
UPDATE accounts SET held = accounts.held - per_account.amount
FROM per_account WHERE accounts.id = per_account.account_id
RETURNING per_account.holds
"""

_GRANT = """
WITH granted AS (
    INSERT INTO credit_grants (account_id, amount, source, reference, reason)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (reference) DO NOTHING
    RETURNING account_id, amount
)
UPDATE accounts SET balance = balance + granted.amount
FROM granted WHERE accounts.id = granted.account_id
RETURNING accounts.balance
"""

_SUMMARY = """
SELECT a.id, a.name, a.group_name, a.balance, a.held, a.created_at, a.last_used_at,
       COALESCE((SELECT sum(amount) FROM credit_grants WHERE account_id = a.id), 0)::bigint
           AS total_granted,
       COALESCE((SELECT sum(amount) FROM credit_grants
                 WHERE account_id = a.id AND source = 'purchase'), 0)::bigint AS total_purchased,
       COALESCE((SELECT sum(credits) FROM charges WHERE account_id = a.id), 0)::bigint
           AS total_spent
FROM accounts a WHERE a.name = $1
"""


class Ledger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # --- accounts, keys and grants -------------------------------------------------

    async def create_account(
        self, name: str, *, group: str = "default", starter: int = 0, credits: int = 0
    ) -> tuple[int, str]:
        """A new account with its first key (returned: shown once, stored hashed).

        The starter credits and any initial credits are grants of their own.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                account_id = await conn.fetchval(
                    "INSERT INTO accounts (name, group_name) VALUES ($1, $2) RETURNING id",
                    name,
                    group,
                )
            except asyncpg.UniqueViolationError:
                raise AccountExists(name) from None
            if starter:
                await conn.execute(
                    _GRANT, account_id, starter, "starter", f"starter:{account_id}", None
                )
            if credits:
                await conn.execute(_GRANT, account_id, credits, "admin", None, "initial credits")
            key = await self._insert_key(conn, account_id)
        return account_id, key

    async def create_key(self, account_id: int) -> str:
        async with self.pool.acquire() as conn:
            return await self._insert_key(conn, account_id)

    @staticmethod
    async def _insert_key(conn: asyncpg.Connection, account_id: int) -> str:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        await conn.execute(
            "INSERT INTO api_keys (account_id, key_hash, prefix) VALUES ($1, $2, $3)",
            account_id,
            hash_key(key),
            key[:10],
        )
        return key

    async def find_key(self, key: str) -> KeyOwner | None:
        row = await self.pool.fetchrow(
            "SELECT a.id, a.name, a.group_name, a.disabled FROM api_keys k"
            " JOIN accounts a ON a.id = k.account_id"
            " WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            hash_key(key),
        )
        return KeyOwner(*row) if row else None

    async def grant(
        self,
        account_id: int,
        amount: int,
        source: str,
        *,
        reason: str | None = None,
        reference: str | None = None,
    ) -> int | None:
        """Add a grant and its credits; None when `reference` was already granted."""
        return await self.pool.fetchval(_GRANT, account_id, amount, source, reference, reason)

    async def summary(self, name: str) -> AccountSummary | None:
        row = await self.pool.fetchrow(_SUMMARY, name)
        if row is None:
            return None
        return AccountSummary(
            id=row["id"],
            name=row["name"],
            group=row["group_name"],
            balance=row["balance"],
            pending=row["held"],
            total_granted=row["total_granted"],
            total_purchased=row["total_purchased"],
            total_spent=row["total_spent"],
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
        )

    # --- holds and settlement -------------------------------------------------------

    async def hold(
        self,
        request_id: str,
        account_id: int,
        amount: int,
        *,
        model: str,
        provider: str,
        ttl_seconds: float,
    ) -> bool:
        """Reserve `amount` if the account's free balance covers it."""
        held = await self.pool.fetchval(
            _HOLD, account_id, amount, request_id, model, provider, float(ttl_seconds)
        )
        return held is not None

    async def extend_hold(self, request_id: str, account_id: int, amount: int) -> bool:
        """Reserve `amount` more for a request in flight, if the free balance covers it."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # The hold row is locked first, so a concurrent settlement waits for us.
                found = await conn.fetchval(
                    "UPDATE holds SET amount = amount + $2 WHERE request_id = $1 RETURNING 1",
                    request_id,
                    amount,
                )
                if found is None:
                    return False
                reserved = await conn.fetchval(
                    "UPDATE accounts SET held = held + $2"
                    " WHERE id = $1 AND balance - held >= $2 RETURNING 1",
                    account_id,
                    amount,
                )
                if reserved is None:
                    raise _Rollback  # undoes the hold's increase
        except _Rollback:
            return False
        return True

    async def settle(self, charge: Charge) -> int | None:
        """Release the hold and debit the charge; the new balance, or None if already settled."""
        usage = charge.usage
        return await self.pool.fetchval(
            _SETTLE,
            charge.request_id,
            charge.model,
            charge.provider,
            charge.upstream_model,
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_tokens,
            usage.reasoning_tokens,
            charge.credits,
            charge.provider_cost,
            charge.price_input,
            charge.price_output,
            usage.source.value,
            charge.outcome,
            charge.http_status,
            charge.started_at,
        )

    async def renew_holds(self, request_ids: list[str], ttl_seconds: float) -> None:
        if request_ids:
            await self.pool.execute(
                "UPDATE holds SET expires_at = now() + make_interval(secs => $2)"
                " WHERE request_id = ANY($1::text[])",
                request_ids,
                float(ttl_seconds),
            )

    async def expire_holds(self, batch: int = 500) -> int:
        """Release holds nobody renews any more (a crashed process's); how many."""
        rows = await self.pool.fetch(_EXPIRE, batch)
        return sum(row["holds"] for row in rows)


class _Rollback(Exception):
    pass
