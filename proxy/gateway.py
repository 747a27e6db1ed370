"""Process-wide state: ledger, upstreams, tokenizers, caller cache, requests in flight."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Coroutine, Hashable
from dataclasses import replace
from typing import Any

import asyncpg
from aiohttp import web

from billing.accounts import Accounts, KeyOwner, hash_key
from billing.batches import HoldQueue, SettlementQueue
from billing.ledger import LEDGER_UNAVAILABLE, Ledger
from billing.settings import Settings, load_settings
from metering import metrics
from metering.tokens import TokenCounter
from proxy.bodies import bearer_token
from proxy.config import Config, ModelConfig, load_config
from proxy.errors import APIError, ledger_unavailable, unauthorized
from proxy.routing import Router
from proxy.upstream import Upstream, make_upstream

log = logging.getLogger("creditgate")

SETTINGS_REFRESH_SECONDS = 5.0  # how soon another process's settings change is seen here
_CALLER_CACHE_LIMIT = 100_000
_MAX_USER_NAME = 200


def key_credential(key_hash: bytes) -> tuple[str, bytes]:
    """The caller cache's entry for an API key, by the key's SHA-256."""
    return ("key", key_hash)


class CallerCache:
    """Credential -> owner, cached briefly so that most requests skip a database round trip.

    Keys are ("key", sha256) for API keys and ("user", name) for trusted-header users.
    """

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._entries: dict[Hashable, tuple[float, KeyOwner | None]] = {}

    def get(self, credential: Hashable) -> tuple[bool, KeyOwner | None]:
        entry = self._entries.get(credential)
        if entry is not None and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def put(self, credential: Hashable, owner: KeyOwner | None) -> None:
        if len(self._entries) >= _CALLER_CACHE_LIMIT:
            self._entries.clear()  # a flood of random keys must not grow memory
        self._entries[credential] = (time.monotonic() + self._ttl, owner)

    def forget(self, credential: Hashable) -> None:
        self._entries.pop(credential, None)

    def forget_account(self, account_id: int) -> None:
        for credential, (_, owner) in list(self._entries.items()):
            if owner is not None and owner.account_id == account_id:
                del self._entries[credential]


class InFlight:
    """Requests being served, and the settlements that must finish whatever happens.

    Settlement runs in tasks of its own, so a handler cancelled because its caller went
    away cannot interrupt it; shutdown waits for them. The request ids are the holds this
    process renews: a hold that nobody renews expires and is swept.
    """

    def __init__(self) -> None:
        self.request_ids: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Gateway:
    """Everything a request handler needs, made once per process at start-up."""

    def __init__(self, config: Config, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.ledger = Ledger(pool)
        self.holds = HoldQueue(self.ledger)
        self.settlements = SettlementQueue(self.ledger)
        self.accounts = Accounts(pool)
        self.callers = CallerCache(config.server.auth_cache_seconds)
        self.inflight = InFlight()
        self.router = Router(config.routing)
        self.config = config
        self.settings = self._default_settings(config)
        self.upstreams: dict[str, Upstream] = {}
        self._retired: list[Upstream] = []  # replaced by a reload; closed at shutdown
        self._counters: dict[str, TokenCounter] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._apply(config)

    @staticmethod
    def _default_settings(config: Config) -> Settings:
        return Settings(config.credits.purchase_link, config.credits.starter)

    def _apply(self, config: Config) -> None:
        """Make `config` the one new requests use; requests in flight keep theirs."""
        upstreams = {}
        for name, provider in config.providers.items():
            current = self.upstreams.get(name)
            upstreams[name] = (
                current if current and current.config == provider else make_upstream(provider)
            )
        self._retired += [u for u in self.upstreams.values() if u not in upstreams.values()]
        self.upstreams = upstreams
        self.config = config
        self.router.config = config.routing

    def _report_unavailable(self) -> None:
        for name, upstream in self.upstreams.items():
            if not upstream.available:
                served = [
                    m.name
                    for m in self.config.models.values()
                    if any(d.provider == name for d in m.deployments)
                ]
                log.warning(
                    "provider %r has no API key: its models %s are not served", name, served
                )

    async def reload(self) -> Config:
        """Read config.yaml again; raises ConfigError and keeps the running config if bad."""
        config = load_config(self.config.path)
        for section in ("server", "database"):
            if getattr(config, section) != getattr(self.config, section):
                log.warning("config %s: changes take effect at the next restart", section)
        config = replace(config, server=self.config.server, database=self.config.database)
        self._apply(config)
        self._load_tokenizers()
        self._report_unavailable()
        await self.refresh_settings()
        log.info("config reloaded from %s: %d models", config.path, len(config.models))
        return config

    async def refresh_settings(self) -> Settings:
        self.settings = await load_settings(self.pool, self._default_settings(self.config))
        return self.settings

    def _load_tokenizers(self) -> None:
        for model in self.config.models.values():
            self.counter(model)  # load each vocabulary now, not on a caller's time

    def counter(self, model: ModelConfig) -> TokenCounter:
        counter = self._counters.get(model.encoding)
        if counter is None:
            counter = self._counters[model.encoding] = TokenCounter(model.encoding)
        return counter

    def purchase_link(self, account_id: int) -> str:
        link = self.settings.purchase_link
        if not link:
            return ""
        return f"{link}{'&' if '?' in link else '?'}client_reference_id={account_id}"

    # --- who is calling -------------------------------------------------------------

    async def authenticate(self, request: web.Request, *, x_api_key: bool = False) -> KeyOwner:
        """The caller's account, by its API key (`x-api-key` too on Anthropic's surface)
        or by a trusted sign-in proxy's header."""
        try:
            owner = await self._trusted_user(request) or await self._key_owner(request, x_api_key)
        except LEDGER_UNAVAILABLE as err:
            log.error("cannot identify a caller: %r", err)
            raise ledger_unavailable() from None
        if owner.disabled:
            raise APIError(
                403, "account_disabled", "This account is disabled.", type="permission_error"
            )
        return owner

    async def _key_owner(self, request: web.Request, x_api_key: bool) -> KeyOwner:
        key = bearer_token(request)
        if not key and x_api_key:
            key = request.headers.get("x-api-key", "").strip()
        if not key:
            header = "'x-api-key: <key>' or " if x_api_key else ""
            raise unauthorized(f"No API key: send it as {header}'Authorization: Bearer <key>'.")
        credential = key_credential(hash_key(key))
        known, owner = self.callers.get(credential)
        if not known:
            owner = await self.accounts.find_key(key)
            self.callers.put(credential, owner)
        if owner is None:
            raise unauthorized("The API key is not valid (unknown or revoked).")
        return owner

    async def _trusted_user(self, request: web.Request) -> KeyOwner | None:
        """The user a trusted sign-in proxy names, made an account on first sight."""
        registration = self.config.registration
        if "trusted_header" not in registration.modes:
            return None
        name = request.headers.get(registration.header, "").strip()
        if not name or not self._from_trusted_source(request):
            return None
        if len(name) > _MAX_USER_NAME:
            raise unauthorized(f"The {registration.header} header is too long.")
        credential = ("user", name)
        known, owner = self.callers.get(credential)
        if not known:
            owner = await self.accounts.ensure(
                name, group=registration.group, starter=self.settings.starter
            )
            self.callers.put(credential, owner)
        return owner

    def _from_trusted_source(self, request: web.Request) -> bool:
        try:
            address = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return False
        return any(address in network for network in self.config.registration.trusted_sources)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving: settings read, tokenizers loaded, background upkeep running."""
        await self.refresh_settings()
        self._report_unavailable()
        self._load_tokenizers()
        loop = asyncio.get_running_loop()
        metrics.initialize(list(self.config.models), list(self.upstreams))
        self._tasks = [
            loop.create_task(self._maintain_holds()),
            loop.create_task(self._follow_settings()),
            loop.create_task(self._read_ledger_gauges()),
        ]

    async def stop(self) -> None:
        await self.inflight.drain()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for upstream in [*self.upstreams.values(), *self._retired]:
            await upstream.close()

    async def _maintain_holds(self) -> None:
        """Keep this process's holds alive and sweep the holds of processes that died."""
        ttl = self.config.server.hold_ttl_seconds
        while True:
            await asyncio.sleep(ttl / 4)
            try:
                await self.ledger.renew_holds(list(self.inflight.request_ids), ttl)
                expired = await self.ledger.expire_holds()
                if expired:
                    log.warning("released %d expired holds", expired)
            except Exception:
                log.exception("hold maintenance failed; retrying in %.0fs", ttl / 4)

    async def read_ledger_gauges(self) -> None:
        row = await self.pool.fetchrow(
            "SELECT COALESCE(sum(balance), 0)::bigint AS outstanding,"
            " count(*) FILTER (WHERE balance > 0) AS funded FROM accounts"
        )
        metrics.credits_outstanding.set(row["outstanding"] / metrics.MICRO)
        metrics.funded_accounts.set(row["funded"])

    async def _read_ledger_gauges(self) -> None:
        """The ledger-wide gauges, read at a modest interval: they scan every account."""
        while True:
            try:
                await self.read_ledger_gauges()
            except Exception:
                log.exception("reading the ledger gauges failed")
            await asyncio.sleep(self.config.metrics.ledger_interval_seconds)

    async def _follow_settings(self) -> None:
        """Pick up settings that an operator changed through another process."""
        while True:
            await asyncio.sleep(SETTINGS_REFRESH_SECONDS)
            try:
                await self.refresh_settings()
            except Exception:
                log.exception("reading the settings failed")


GATEWAY = web.AppKey("gateway", Gateway)
