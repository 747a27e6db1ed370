"""The credit ledger in PostgreSQL: grants, holds and charges, the moves of money.

Every change of a balance is one atomic statement (or one transaction where a statement
cannot express it), so concurrent requests on one account can neither overdraw it
through their holds nor lose a charge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from metering.usage import Usage

# What a ledger call raises when the database cannot be reached or the connection broke.
LEDGER_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)


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
    ended_at: datetime
    group: str = "default"
    endpoint: str = "chat.completions"
    deployment: str = ""  # the deployment that served it ("" when none was reached)
    prices: str = "{}"  # JSON: every price that applied, in credits

    def columns(self) -> tuple[object, ...]:
        """The values of _SETTLE's batch columns, in their order."""
        usage = self.usage
        return (
            self.request_id, self.model, self.provider, self.upstream_model,
            usage.input_tokens, usage.output_tokens, usage.cached_tokens,
            usage.reasoning_tokens, usage.cache_write_tokens, usage.images, self.credits,
            self.provider_cost, self.price_input, self.price_output, usage.source.value,
            self.outcome, self.http_status, self.started_at, self.ended_at, self.group,
            self.endpoint, self.deployment, self.prices,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation asked for before a request goes upstream."""

    request_id: str
    account_id: int
    amount: int
    model: str
    provider: str
    ttl_seconds: float


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    account_id: int
    amount: int
    source: str
    reference: str | None
    reason: str | None
    created_at: datetime


GRANT_COLUMNS = "id, account_id, amount, source, reference, reason, created_at"

# Reserves one hold: the lone request of a quiet process. A third faster than _HOLDS,
# which a batch needs for its running sums and its locks.
_HOLD = """
WITH reserved AS (
    UPDATE accounts SET held = held + $3
    WHERE id = $2 AND NOT disabled AND balance - held >= $3
    RETURNING id
)
INSERT INTO holds (request_id, account_id, amount, model, provider, expires_at)
SELECT $1, id, $3, $4, $5, now() + make_interval(secs => $6) FROM reserved
RETURNING request_id
"""

# Reserves a batch of holds in one statement. Per account, holds are granted in the order
# they came while the running sum fits the free balance (balance - held): a prefix.
# Accounts are locked in id order, so two batches never wait on each other in a cycle.
_HOLDS = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                         $6::float8[])
        WITH ORDINALITY AS t(request_id, account_id, amount, model, provider, ttl, position)
), locked AS (
    SELECT id, balance - held AS free FROM accounts
    WHERE id IN (SELECT account_id FROM batch) AND NOT disabled
    ORDER BY id FOR UPDATE
), granted AS (
    SELECT r.* FROM (
        SELECT b.*, sum(b.amount) OVER (PARTITION BY b.account_id ORDER BY b.position)
                    AS running
        FROM batch b
    ) r JOIN locked l ON l.id = r.account_id
    WHERE r.running <= l.free
), reserved AS (
    UPDATE accounts SET held = accounts.held + g.total
    FROM (SELECT account_id, sum(amount)::bigint AS total FROM granted GROUP BY account_id) g
    WHERE accounts.id = g.account_id
), inserted AS (
    INSERT INTO holds (request_id, account_id, amount, model, provider, expires_at)
    SELECT request_id, account_id, amount, model, provider, now() + make_interval(secs => ttl)
    FROM granted
    RETURNING request_id
)
SELECT b.request_id, i.request_id IS NOT NULL AS granted, l.id IS NOT NULL AS open
FROM batch b LEFT JOIN inserted i USING (request_id) LEFT JOIN locked l ON l.id = b.account_id
"""

# Settles a batch in one statement: releases the holds, appends the charges and debits
# them. Amounts are summed per account first, because one UPDATE changes a row once.
# A request without a hold row (already settled, or expired and swept) changes nothing.
_SETTLE = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
                         $11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::text[],
                         $16::text[], $17::int[], $18::timestamptz[], $19::timestamptz[],
                         $20::text[], $21::text[], $22::text[], $23::jsonb[])
        AS t(request_id, model, provider, upstream_model, input_tokens, output_tokens,
             cached_tokens, reasoning_tokens, cache_write_tokens, images, credits,
             provider_cost, price_input, price_output, usage_source, outcome, http_status,
             started_at, ended_at, group_name, endpoint, deployment, prices)
), released AS (
    DELETE FROM holds USING batch WHERE holds.request_id = batch.request_id
    RETURNING holds.request_id, holds.account_id, holds.amount
), charged AS (
    INSERT INTO charges (request_id, account_id, model, provider, upstream_model,
                         input_tokens, output_tokens, cached_tokens, reasoning_tokens,
                         cache_write_tokens, images, credits, provider_cost, price_input,
                         price_output, usage_source, outcome, http_status, started_at,
                         ended_at, group_name, endpoint, deployment, prices)
    SELECT b.request_id, r.account_id, b.model, b.provider, b.upstream_model,
           b.input_tokens, b.output_tokens, b.cached_tokens, b.reasoning_tokens,
           b.cache_write_tokens, b.images, b.credits, b.provider_cost, b.price_input,
           b.price_output, b.usage_source, b.outcome, b.http_status, b.started_at,
           b.ended_at, b.group_name, b.endpoint, b.deployment, b.prices
    FROM batch b JOIN released r ON r.request_id = b.request_id
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id, credits
), per_account AS (
    SELECT r.account_id, sum(r.amount)::bigint AS released,
           COALESCE(sum(c.credits), 0)::bigint AS spent
    FROM released r LEFT JOIN charged c ON c.request_id = r.request_id
    GROUP BY r.account_id
), debited AS (
    UPDATE accounts SET held = accounts.held - p.released,
                        balance = accounts.balance - p.spent,
                        total_spent = accounts.total_spent + p.spent,
                        last_used_at = now()
    FROM per_account p WHERE accounts.id = p.account_id
    RETURNING accounts.id, accounts.balance
)
SELECT r.request_id, d.balance FROM released r JOIN debited d ON d.id = r.account_id
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

GRANT_SQL = """
WITH granted AS (
    INSERT INTO credit_grants (account_id, amount, source, reference, reason)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (reference) DO NOTHING
    RETURNING account_id, amount
)
UPDATE accounts SET balance = balance + granted.amount,
                    total_granted = total_granted + granted.amount,
                    total_purchased = total_purchased
                        + CASE WHEN $3 = 'purchase' THEN granted.amount ELSE 0 END
FROM granted WHERE accounts.id = granted.account_id
RETURNING accounts.balance
"""

# A manual grant may be negative, but never takes the free balance below zero.
_ADJUST = """
UPDATE accounts SET balance = balance + $2, total_granted = total_granted + $2
WHERE id = $1 AND ($2 >= 0 OR balance - held + $2 >= 0)
RETURNING balance
"""


class Ledger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # --- grants ---------------------------------------------------------------------

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
        return await self.pool.fetchval(GRANT_SQL, account_id, amount, source, reference, reason)

    async def adjust(self, account_id: int, amount: int, reason: str) -> Grant | None:
        """A manual (admin) grant, positive or negative.

        None when there is no such account or it would take the account's free balance
        (balance less open holds) below zero.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(_ADJUST, account_id, amount) is None:
                return None
            row = await conn.fetchrow(
                "INSERT INTO credit_grants (account_id, amount, source, reason)"
                f" VALUES ($1, $2, 'admin', $3) RETURNING {GRANT_COLUMNS}",
                account_id,
                amount,
                reason,
            )
        return Grant(*row.values())

    # --- holds and settlement -------------------------------------------------------

    async def hold_many(self, holds: list[Hold]) -> set[str]:
        """Reserve a batch; the request ids granted. The outcome is the same as holding
        them one after another in this order."""
        if len(holds) == 1:
            hold = holds[0]
            won = await self.pool.fetchval(
                _HOLD, hold.request_id, hold.account_id, hold.amount, hold.model,
                hold.provider, hold.ttl_seconds,
            )  # fmt: skip
            return {won} if won else set()
        granted: set[str] = set()
        pending = holds
        while pending:
            columns = [
                [h.request_id for h in pending],
                [h.account_id for h in pending],
                [h.amount for h in pending],
                [h.model for h in pending],
                [h.provider for h in pending],
                [h.ttl_seconds for h in pending],
            ]
            rows = await _fetch_past_deadlocks(self.pool, _HOLDS, *columns)
            outcome = {row["request_id"]: (row["granted"], row["open"]) for row in rows}
            # Each account's first refusal is final: everything before it was granted. The
            # holds after it were judged against it too, so they are asked again alone.
            retry, refused_accounts = [], set()
            for hold in pending:
                won, open_account = outcome[hold.request_id]
                if won:
                    granted.add(hold.request_id)
                elif open_account and hold.account_id in refused_accounts:
                    retry.append(hold)
                else:
                    refused_accounts.add(hold.account_id)
            pending = retry
        return granted

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
        return (await self.settle_many([charge])).get(charge.request_id)

    async def settle_many(self, charges: list[Charge]) -> dict[str, int]:
        """Settle a batch atomically: all of it or none of it, so a retry is always safe.

        Returns the account's balance after the batch for each request that had a hold.
        """
        columns = [list(column) for column in zip(*(c.columns() for c in charges), strict=True)]
        rows = await _fetch_past_deadlocks(self.pool, _SETTLE, *columns)
        return {row["request_id"]: row["balance"] for row in rows}

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


_DEADLOCK_ATTEMPTS = 3


async def _fetch_past_deadlocks(
    pool: asyncpg.Pool | asyncpg.Connection, statement: str, *args: object
) -> list[asyncpg.Record]:
    """Run a batch statement, again if PostgreSQL broke a deadlock by aborting it.

    A settlement batch updates its accounts in no fixed order, so it can meet a hold batch
    (or another settlement batch, from another process) in a lock cycle. The aborted
    statement changed nothing, so running it again is safe.
    """
    for _ in range(_DEADLOCK_ATTEMPTS - 1):
        try:
            return await pool.fetch(statement, *args)
        except asyncpg.DeadlockDetectedError:
            continue
    return await pool.fetch(statement, *args)
