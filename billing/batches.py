"""Ledger statements written in batches: one statement for all the requests that arrive
together, for holds as for settlements.

There is no timer: the first item is written at once, and those that arrive while a
batch is being written form the next one. A quiet process writes each request alone; a
busy one pays one round trip, and one commit, for many. A batch is one statement, so it
is written whole or not at all: a caller whose batch failed may simply submit again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from billing.ledger import Charge, Hold, Ledger

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 256


class Batcher(Generic[T, R]):
    """Submits items to `write`, which takes a batch and returns a result per item."""

    def __init__(self, write: Callable[[list[T]], Awaitable[list[R]]], max_batch: int) -> None:
        self._write_batch = write
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """This item's result; raises what `write` raised for its batch."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        return await future

    async def _write(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await self._write_batch([item for item, _ in batch])
                except Exception as err:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._writer = None


class HoldQueue:
    """Holds in batches. Within a batch, each account's holds are granted in the order
    they came, exactly as if they had been made one after another."""

    def __init__(self, ledger: Ledger, max_batch: int = MAX_BATCH) -> None:
        async def write(holds: list[Hold]) -> list[bool]:
            granted = await ledger.hold_many(holds)
            return [hold.request_id in granted for hold in holds]

        self._batcher: Batcher[Hold, bool] = Batcher(write, max_batch)

    async def hold(self, hold: Hold) -> bool:
        """Whether the account's free balance covered it (and it is now reserved)."""
        return await self._batcher.submit(hold)


class SettlementQueue:
    """Settlements in batches, each charged once however often it is submitted."""

    def __init__(self, ledger: Ledger, max_batch: int = MAX_BATCH) -> None:
        async def write(charges: list[Charge]) -> list[int | None]:
            balances = await ledger.settle_many(charges)
            return [balances.get(charge.request_id) for charge in charges]

        self._batcher: Batcher[Charge, int | None] = Batcher(write, max_batch)

    async def settle(self, charge: Charge) -> int | None:
        """The balance after this charge, or None if it was settled already."""
        return await self._batcher.submit(charge)
