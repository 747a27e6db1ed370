"""Real parts for every test: a PostgreSQL database, a fake provider on loopback, the gateway.

The database is the server named by DATABASE_URL, else an embedded one started for the
session; either way the tests get a database of their own, dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestServer

from billing.database import start_embedded
from billing.ledger import Ledger
from billing.money import credits_to_micro
from proxy.app import create_app
from proxy.config import load_config
from proxy.gateway import GATEWAY, Gateway
from tests.fake_upstream import FakeUpstream


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return os.environ.get("DATABASE_URL") or start_embedded(
        tmp_path_factory.mktemp("pgdata", numbered=True)
    )


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    name = f"creditgate_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    yield _with_database(server_url, name)
    asyncio.run(_admin(server_url, f'DROP DATABASE "{name}" WITH (FORCE)'))


ADMIN_TOKEN = "test-admin-token"
STRIPE_SECRET = "whsec_test_secret"
CONFIG_DEFAULTS = {
    "admin_token": ADMIN_TOKEN,
    "stripe_secret": STRIPE_SECRET,
    "trusted": "127.0.0.1/32",
    "signups": 3,
    "price_in": "0.30",
    "price_out": "1.20",
}

CONFIG_TEMPLATE = """
server: {{host: 127.0.0.1, port: 0, max_body_mb: 1, hold_ttl_seconds: 60,
          auth_cache_seconds: 1}}
database: {{url: "{database_url}"}}
credits: {{starter: "0", purchase_link: "https://buy.stripe.com/test_abc"}}
admin: {{tokens: ["{admin_token}", "second-admin-token"]}}
groups: [default, pro]
registration:
  modes: [admin, trusted_header, signup]
  trusted_header: {{header: X-Forwarded-User, trusted_sources: ["{trusted}"]}}
  signup: {{per_address_per_hour: {signups}}}
stripe:
  webhook_secret: ["{stripe_secret}", "whsec_previous"]
  credits_per_unit: {{usd: "1", eur: "1.1", jpy: "0.01"}}
routing: {{retries: 1, retry_backoff_ms: 1, failures_before_cooldown: 2, cooldown_seconds: 60}}
providers:
  fake: {{type: openai, base_url: "{upstream_url}/v1", api_key: sk-fake, read_timeout: 2}}
  backup: {{type: openai, base_url: "{backup_url}/v1", api_key: sk-backup, read_timeout: 2}}
  anthropic-fake: {{type: anthropic, base_url: "{upstream_url}", api_key: sk-ant-fake,
                   read_timeout: 2}}
  anthropic-backup: {{type: anthropic, base_url: "{backup_url}", api_key: sk-ant-backup}}
  azure-fake: {{type: azure, base_url: "{upstream_url}", api_version: "2024-10-21",
               api_key: az-key}}
  two-keys: {{type: openai, base_url: "{upstream_url}/v1",
             credentials: {{one: sk-one, two: sk-two}}}}
  keyless: {{type: openai, base_url: "{upstream_url}/v1", api_key: ""}}
  local: {{type: demo, chunk_delay_ms: 0}}
models:
  gpt-4o-mini:
    provider: fake
    upstream: gpt-4o-mini-2024-07-18
    cost:  {{input: "0.15", output: "0.60"}}
    price: {{input: "{price_in}", output: "{price_out}"}}
    groups: {{pro: {{input: "0.25", output: "1.00"}}}}
  pricey:
    provider: fake
    upstream: gpt-4o
    cost:  {{input: "2.5", output: "10"}}
    price: {{input: "3000", output: "12000"}}
    max_output_tokens: 100
  legacy:
    provider: fake
    upstream: gpt-3.5-turbo
    cost:  {{input: "0.5", output: "1.5"}}
    price: {{input: "1.1", output: "3.3"}}
  offline:
    provider: keyless
    cost:  {{input: "1", output: "1"}}
    price: {{input: "1", output: "1"}}
  demo:
    provider: local
    cost:  {{input: "0", output: "0"}}
    price: {{input: "1", output: "2"}}
  claude:
    provider: anthropic-fake
    upstream: claude-sonnet-4-5
    cost:  {{input: "3", output: "15", cache_read: "0.3", cache_write: "3.75"}}
    price: {{input: "4", output: "20", cache_read: "0.4", cache_write: "5"}}
    groups: {{pro: {{input: "3.5", output: "18"}}}}
  claude-routed:
    deployments:
      - {{provider: anthropic-fake, upstream: claude-primary, weight: 1000}}
      - {{provider: anthropic-backup, upstream: claude-secondary, weight: 0.001}}
    cost:  {{input: "3", output: "15"}}
    price: {{input: "4", output: "20"}}
  gpt-4o:
    deployments:   # the first is all but always drawn first; the second is its backup
      - {{provider: fake, upstream: gpt-4o-primary, weight: 1000}}
      - {{provider: backup, upstream: gpt-4o-secondary, weight: 0.001,
         cost: {{input: "2", output: "9"}}}}
    cost:  {{input: "2.5", output: "10", cached_input: "1.25"}}
    price: {{input: "3", output: "12", cached_input: "1.5", reasoning: "14"}}
  impatient:
    deployments:
      - {{provider: fake, upstream: slow, weight: 1000, read_timeout: 0.3}}
      - {{provider: backup, upstream: patient, weight: 0.001}}
    cost:  {{input: "1", output: "1"}}
    price: {{input: "1", output: "1"}}
  embed:
    provider: fake
    upstream: text-embedding-3-small
    type: embedding
    cost:  {{input: "0.02"}}
    price: {{input: "0.03"}}
  image:
    provider: fake
    upstream: gpt-image-1
    type: image
    cost:  {{image: "0.04"}}
    price:
      image: "0.05"
      sizes: {{"1024x1536": "0.08"}}
      quality: {{high: {{"1024x1536": "0.25"}}}}
  on-azure:
    provider: azure-fake
    upstream: my-gpt4o-deployment
    cost:  {{input: "2.5", output: "10"}}
    price: {{input: "3", output: "12"}}
  spread:
    provider: two-keys
    cost:  {{input: "1", output: "1"}}
    price: {{input: "1", output: "1"}}
"""


@dataclass
class Harness:
    """A running gateway in front of a fake provider."""

    server: TestServer
    upstream: FakeUpstream
    backup: FakeUpstream  # a second provider, for failover
    config_path: Path
    config_values: dict[str, Any]

    def write_config(self, **changes: Any) -> None:
        """Rewrite config.yaml with some values changed (for reload tests)."""
        self.config_values.update(changes)
        self.config_path.write_text(CONFIG_TEMPLATE.format(**self.config_values))

    async def admin(
        self, method: str, path: str, *, token: str | None = ADMIN_TOKEN, **kwargs: Any
    ) -> tuple[int, Any]:
        """Call the admin API; the status and the decoded JSON (or text) body."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method, str(self.server.make_url(f"/admin/v1{path}")), headers=headers, **kwargs
            ) as response:
                text = await response.text()
                if response.content_type == "application/json":
                    return response.status, orjson.loads(text)
                return response.status, text

    @property
    def gateway(self) -> Gateway:
        return self.server.app[GATEWAY]

    @property
    def ledger(self) -> Ledger:
        return self.gateway.ledger

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("/v1"))

    async def account(self, credits: str = "10", group: str = "default") -> tuple[int, str]:
        """A new account with `credits`; returns its id and API key."""
        account, key = await self.gateway.accounts.create(
            f"acct-{uuid.uuid4().hex[:10]}", credits=credits_to_micro(credits), group=group
        )
        return account.id, key

    async def balance(self, account_id: int) -> tuple[int, int]:
        row = await self.ledger.pool.fetchrow(
            "SELECT balance, held FROM accounts WHERE id = $1", account_id
        )
        return row["balance"], row["held"]

    async def charges(self, account_id: int) -> list[asyncpg.Record]:
        return await self.ledger.pool.fetch(
            "SELECT * FROM charges WHERE account_id = $1 ORDER BY ended_at", account_id
        )

    async def forget_settings(self) -> None:
        """Drop settings stored at runtime: config.yaml's values apply again (the database
        is shared by the whole session, so a test that changes settings calls this)."""
        await self.ledger.pool.execute("DELETE FROM settings")
        await self.gateway.refresh_settings()

    async def settled(self) -> None:
        """Wait until every settlement in flight has been written."""
        await self.gateway.inflight.drain()

    async def assert_invariant(self, account_id: int) -> None:
        """DESIGN.md: balance = grants - charges and held = open holds, for this account."""
        row = await self.ledger.pool.fetchrow(
            """SELECT a.balance, a.held,
                 COALESCE((SELECT sum(amount) FROM credit_grants g WHERE g.account_id = a.id), 0)
                   - COALESCE((SELECT sum(credits) FROM charges c WHERE c.account_id = a.id), 0)
                   AS ledger_balance,
                 COALESCE((SELECT sum(amount) FROM holds h WHERE h.account_id = a.id), 0)
                   AS open_holds
               FROM accounts a WHERE a.id = $1""",
            account_id,
        )
        assert row["balance"] == row["ledger_balance"]
        assert row["held"] == row["open_holds"]


@pytest.fixture
async def upstream(aiohttp_server) -> FakeUpstream:
    fake = FakeUpstream()
    fake.server = await aiohttp_server(fake.app())
    return fake


@pytest.fixture
async def harness(aiohttp_server, upstream: FakeUpstream, database_url: str, tmp_path: Path):
    backup = FakeUpstream()
    backup.server = await aiohttp_server(backup.app())
    values = {
        **CONFIG_DEFAULTS,
        "database_url": database_url,
        "upstream_url": str(upstream.server.make_url("")).rstrip("/"),
        "backup_url": str(backup.server.make_url("")).rstrip("/"),
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(CONFIG_TEMPLATE.format(**values))
    server = await aiohttp_server(create_app(load_config(config_path)))
    return Harness(server, upstream, backup, config_path, values)
