"""JSON views of ledger objects, shared by the admin API and the CLI.

Amounts are exact decimal strings of credits; times are RFC 3339 in UTC.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from billing.accounts import Account, ApiKey, Grant
from billing.money import micro_to_credits
from billing.reports import CHARGE_FIELDS


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def account_view(account: Account, purchase_link: str) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "group": account.group,
        "disabled": account.disabled,
        "balance": micro_to_credits(account.balance),
        "pending": micro_to_credits(account.pending),
        "total_granted": micro_to_credits(account.total_granted),
        "total_purchased": micro_to_credits(account.total_purchased),
        "total_spent": micro_to_credits(account.total_spent),
        "purchase_link": purchase_link or None,
        "created_at": rfc3339(account.created_at),
        "last_used_at": rfc3339(account.last_used_at),
    }


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "account_id": key.account_id,
        "prefix": key.prefix,
        "created_at": rfc3339(key.created_at),
        "revoked_at": rfc3339(key.revoked_at),
    }


def grant_view(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "account_id": grant.account_id,
        "amount": micro_to_credits(grant.amount),
        "source": grant.source,
        "reason": grant.reason,
        "reference": grant.reference,
        "created_at": rfc3339(grant.created_at),
    }


_MONEY_FIELDS = frozenset({"credits", "provider_cost"})
CHARGE_COLUMNS = ["group" if name == "group_name" else name for name in CHARGE_FIELDS]


def charge_view(row: asyncpg.Record) -> dict[str, Any]:
    view: dict[str, Any] = {}
    for name, value in row.items():
        if name in _MONEY_FIELDS:
            value = micro_to_credits(value)
        elif isinstance(value, datetime):
            value = rfc3339(value)
        elif name == "prices":
            value = orjson.loads(value)  # JSONB arrives as its text
        view["group" if name == "group_name" else name] = value
    return view


def usage_view(row: asyncpg.Record, by: str) -> dict[str, Any]:
    return {
        by: row["key"],
        "requests": row["requests"],
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "cached_tokens": row["cached_tokens"],
        "reasoning_tokens": row["reasoning_tokens"],
        "images": row["images"],
        "credits": micro_to_credits(row["credits"]),
        "provider_cost": micro_to_credits(row["provider_cost"]),
        "margin": micro_to_credits(row["credits"] - row["provider_cost"]),
    }


def charges_csv(rows: list[dict[str, Any]], header: bool = True) -> str:
    """Charge views as CSV, with a header line unless this continues a file."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CHARGE_COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(
        {k: orjson.dumps(v).decode() if isinstance(v, dict) else v for k, v in row.items()}
        for row in rows
    )
    return out.getvalue()
