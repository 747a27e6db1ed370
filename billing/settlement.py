"""Settlements written in batches: one statement for all the requests that end together.

There is no timer: the first settlement is written at once, and those that arrive while
a batch is being written form the next one. A quiet process settles each request alone;
a busy one pays one round trip for many. A batch is one statement, so it is written
whole or not at all, and a request id is charged once however often it is retried.
"""

from __future__ import annotations

import asyncio

from billing.ledger import Charge, Ledger

MAX_BATCH = 256


class SettlementQueue:
    def __init__(self, ledger: Ledger, max_batch: int = MAX_BATCH) -> None:
        self.ledger = ledger
        self._max_batch = max_batch
        self._pending: list[tuple[Charge, asyncio.Future[int | None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def settle(self, charge: Charge) -> int | None:
        """The balance after this charge, or None if it was settled already.

        Raises what the ledger raised if its batch could not be written; nothing of that
        batch was, so the caller may simply submit it again.
        """
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pending.append((charge, future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        return await future

    async def _write(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    balances = await self.ledger.settle_many([charge for charge, _ in batch])
                except Exception as err:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                for charge, future in batch:
                    if not future.done():
                        future.set_result(balances.get(charge.request_id))
        finally:
            self._writer = None
