"""Settings an operator changes at runtime, persisted; config.yaml gives their first values."""

from __future__ import annotations

from dataclasses import dataclass, replace

import asyncpg


@dataclass(frozen=True, slots=True)
class Settings:
    purchase_link: str
    starter: int  # micro-credits for each new account


async def load_settings(pool: asyncpg.Pool, defaults: Settings) -> Settings:
    rows = await pool.fetch("SELECT name, value FROM settings")
    stored = {row["name"]: row["value"] for row in rows}
    changes: dict[str, object] = {}
    if "purchase_link" in stored:
        changes["purchase_link"] = stored["purchase_link"]
    if "starter" in stored:
        changes["starter"] = int(stored["starter"])
    return replace(defaults, **changes)


async def save_settings(pool: asyncpg.Pool, settings: Settings) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for name, value in (
            ("purchase_link", settings.purchase_link),
            ("starter", str(settings.starter)),
        ):
            await conn.execute(
                "INSERT INTO settings (name, value) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET value = $2, updated_at = now()",
                name,
                value,
            )
