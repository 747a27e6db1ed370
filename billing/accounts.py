"""Accounts and their API keys: creation, look-up, the operator's view and listings."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from billing.ledger import GRANT_COLUMNS, GRANT_SQL, Grant

KEY_PREFIX = "cg-"


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class AccountExists(Exception):
    pass


@dataclass(frozen=True, slots=True)
class KeyOwner:
    """Who a request is from: what authentication resolves to."""

    account_id: int
    account_name: str
    group: str
    disabled: bool


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    group: str
    disabled: bool
    balance: int
    pending: int  # the sum of open holds
    total_granted: int
    total_purchased: int
    total_spent: int
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    account_id: int
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


_ACCOUNT_COLUMNS = (
    "id, name, group_name, disabled, balance, held, total_granted, total_purchased,"
    " total_spent, created_at, last_used_at"
)
_KEY_COLUMNS = "id, account_id, prefix, created_at, revoked_at"


def _account(row: asyncpg.Record) -> Account:
    return Account(*row.values())


class Accounts:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(
        self, name: str, *, group: str = "default", starter: int = 0, credits: int = 0
    ) -> tuple[Account, str]:
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
            await self._grant_starter(conn, account_id, starter)
            if credits:
                await conn.execute(GRANT_SQL, account_id, credits, "admin", None, "initial credits")
            key = await self._insert_key(conn, account_id)
            row = await conn.fetchrow(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = $1", account_id
            )
        return _account(row), key

    async def ensure(self, name: str, *, group: str, starter: int) -> KeyOwner:
        """The account of this name, made on first sight with its starter grant.

        Safe under racing first requests: one account, one starter grant.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO accounts (name, group_name) VALUES ($1, $2)"
                " ON CONFLICT (name) DO NOTHING RETURNING id, name, group_name, disabled",
                name,
                group,
            )
            if row is not None:
                await self._grant_starter(conn, row["id"], starter)
            else:
                row = await conn.fetchrow(
                    "SELECT id, name, group_name, disabled FROM accounts WHERE name = $1", name
                )
        return KeyOwner(*row.values())

    @staticmethod
    async def _grant_starter(conn: asyncpg.Connection, account_id: int, starter: int) -> None:
        if starter:
            # The reference makes it once per account, whatever races or retries.
            await conn.execute(
                GRANT_SQL, account_id, starter, "starter", f"starter:{account_id}", None
            )

    async def get(self, account_id: int) -> Account | None:
        row = await self.pool.fetchrow(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = $1", account_id
        )
        return _account(row) if row else None

    async def get_by_name(self, name: str) -> Account | None:
        row = await self.pool.fetchrow(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = $1", name
        )
        return _account(row) if row else None

    async def list(
        self, *, search: str | None, group: str | None, after_id: int, limit: int
    ) -> list[Account]:
        rows = await self.pool.fetch(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts"
            " WHERE id > $1 AND ($2::text IS NULL OR strpos(lower(name), lower($2)) > 0)"
            " AND ($3::text IS NULL OR group_name = $3)"
            " ORDER BY id LIMIT $4",
            after_id,
            search,
            group,
            limit,
        )
        return [_account(row) for row in rows]

    async def update(
        self, account_id: int, *, group: str | None = None, disabled: bool | None = None
    ) -> Account | None:
        row = await self.pool.fetchrow(
            "UPDATE accounts SET group_name = COALESCE($2, group_name),"
            " disabled = COALESCE($3, disabled)"
            f" WHERE id = $1 RETURNING {_ACCOUNT_COLUMNS}",
            account_id,
            group,
            disabled,
        )
        return _account(row) if row else None

    # --- keys -----------------------------------------------------------------------

    async def create_key(self, account_id: int) -> tuple[ApiKey, str] | None:
        async with self.pool.acquire() as conn:
            try:
                key = await self._insert_key(conn, account_id)
            except asyncpg.ForeignKeyViolationError:
                return None
            row = await conn.fetchrow(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", hash_key(key)
            )
        return ApiKey(*row.values()), key

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

    async def list_keys(self, account_id: int) -> list[ApiKey]:
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE account_id = $1 ORDER BY id", account_id
        )
        return [ApiKey(*row.values()) for row in rows]

    async def revoke_key(self, key_id: int) -> tuple[ApiKey, bytes] | None:
        """Revoke a key (again is fine); the key and its hash, or None if there is none."""
        row = await self.pool.fetchrow(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1"
            f" RETURNING {_KEY_COLUMNS}, key_hash",
            key_id,
        )
        if row is None:
            return None
        *fields, key_hash = row.values()
        return ApiKey(*fields), key_hash

    async def find_key(self, key: str) -> KeyOwner | None:
        row = await self.pool.fetchrow(
            "SELECT a.id, a.name, a.group_name, a.disabled FROM api_keys k"
            " JOIN accounts a ON a.id = k.account_id"
            " WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            hash_key(key),
        )
        return KeyOwner(*row.values()) if row else None

    # --- grants ---------------------------------------------------------------------

    async def list_grants(
        self, *, account_id: int | None, before_id: int | None, limit: int
    ) -> list[Grant]:
        rows = await self.pool.fetch(
            f"SELECT {GRANT_COLUMNS} FROM credit_grants"
            " WHERE ($1::bigint IS NULL OR account_id = $1)"
            " AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
            account_id,
            before_id,
            limit,
        )
        return [Grant(*row.values()) for row in rows]
