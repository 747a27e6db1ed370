"""Process-wide state: ledger, upstreams, tokenizers, key cache, requests in flight."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from billing.ledger import LEDGER_UNAVAILABLE, KeyOwner, Ledger, hash_key
from metering.tokens import TokenCounter
from proxy.config import Config, ModelConfig
from proxy.errors import APIError, ledger_unavailable, unauthorized
from proxy.upstream import Upstream, make_upstream

log = logging.getLogger("creditgate")

KEY_CACHE_SECONDS = 5.0  # how long a revoked key may still work on this process
_KEY_CACHE_LIMIT = 100_000


class KeyCache:
    """API key -> owner, cached briefly so that most requests skip a database round trip."""

    def __init__(self, ledger: Ledger, ttl: float = KEY_CACHE_SECONDS) -> None:
        self._ledger = ledger
        self._ttl = ttl
        self._entries: dict[bytes, tuple[float, KeyOwner | None]] = {}

    async def lookup(self, key: str) -> KeyOwner | None:
        digest = hash_key(key)
        now = time.monotonic()
        entry = self._entries.get(digest)
        if entry is not None and entry[0] > now:
            return entry[1]
        owner = await self._ledger.find_key(key)
        if len(self._entries) >= _KEY_CACHE_LIMIT:
            self._entries.clear()  # a flood of random keys must not grow memory
        self._entries[digest] = (now + self._ttl, owner)
        return owner


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

    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self.keys = KeyCache(ledger)
        self.inflight = InFlight()
        self.upstreams: dict[str, Upstream] = {
            name: make_upstream(provider) for name, provider in config.providers.items()
        }
        self._counters = {
            name: TokenCounter(name) for name in {m.encoding for m in config.models.values()}
        }
        self._maintenance: asyncio.Task[None] | None = None
        for name, upstream in self.upstreams.items():
            if not upstream.available:
                served = [m.name for m in config.models.values() if m.provider == name]
                log.warning(
                    "provider %r has no API key: its models %s are not served", name, served
                )

    def counter(self, model: ModelConfig) -> TokenCounter:
        return self._counters[model.encoding]

    def purchase_link(self, account_id: int) -> str:
        link = self.config.credits.purchase_link
        if not link:
            return ""
        return f"{link}{'&' if '?' in link else '?'}client_reference_id={account_id}"

    async def authenticate(self, request: web.Request) -> KeyOwner:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise unauthorized("No API key: send it as 'Authorization: Bearer <key>'.")
        try:
            owner = await self.keys.lookup(key.strip())
        except LEDGER_UNAVAILABLE as err:
            log.error("cannot look up an API key: %r", err)
            raise ledger_unavailable() from None
        if owner is None:
            raise unauthorized("The API key is not valid (unknown or revoked).")
        if owner.disabled:
            raise APIError(
                403, "account_disabled", "This account is disabled.", type="permission_error"
            )
        return owner

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def stop(self) -> None:
        await self.inflight.drain()
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        for upstream in self.upstreams.values():
            await upstream.close()

    async def _maintain(self) -> None:
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


GATEWAY = web.AppKey("gateway", Gateway)
