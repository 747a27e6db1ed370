"""PostgreSQL: the embedded server, the connection pool and the schema migrations."""

from __future__ import annotations

import asyncio
import logging
import re
import warnings
from importlib import resources
from pathlib import Path

import asyncpg

log = logging.getLogger("creditgate.database")

# Any constant will do: it only has to be the same for every creditgate process.
_MIGRATION_LOCK = 0x6372656469746761
_MIGRATION_NAME = re.compile(r"^(\d+)_[\w-]+\.sql$")


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL kept in `data_dir`; returns its URL.

    The server is shared by every creditgate process on this data folder (a running
    `creditgate serve` and the CLI see one ledger) and stops when the last one exits.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (as under sudo or in CI); it
        # falls back to /tmp, which is fine for pgserver's lock file.
        warnings.simplefilter("ignore")
        import pgserver  # imported here: only the embedded mode needs it

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    return server.get_uri()


async def resolve_url(url: str, embedded_dir: Path) -> str:
    """`url`, or the embedded server's when it is empty (started in a thread: it blocks)."""
    if url:
        return url
    return await asyncio.to_thread(start_embedded, embedded_dir)


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("billing").joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations this database lacks, each in its own transaction."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("applied migration %s", name)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a pooled connection as it is.

    asyncpg's default reset costs a round trip per release (RESET ALL, UNLISTEN, ...).
    Our pooled connections never change session state (no SET, LISTEN, advisory lock or
    cursor outside a transaction), and asyncpg still rolls back any open transaction.
    """


async def open_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool on a migrated database."""
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, reset=_keep_session)
