"""The ledger's guarantees, straight against PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from billing.batches import HoldQueue, SettlementQueue
from billing.ledger import Charge, Hold, Ledger
from metering.usage import Usage, UsageSource


def charge(request_id: str, credits: int) -> Charge:
    return Charge(
        request_id=request_id,
        model="m",
        provider="p",
        upstream_model="u",
        usage=Usage(10, 20, source=UsageSource.UPSTREAM),
        credits=credits,
        provider_cost=1,
        price_input="1",
        price_output="2",
        outcome="ok",
        http_status=200,
        started_at=datetime.now(UTC),
        ended_at=datetime.now(UTC),
    )


async def hold(ledger, request_id: str, account_id: int, amount: int, ttl: float = 60) -> bool:
    return request_id in await ledger.hold_many(
        [Hold(request_id, account_id, amount, "m", "p", ttl)]
    )


async def test_settling_twice_charges_once(harness):
    ledger = harness.ledger
    account_id, _ = await harness.account("1")
    assert await hold(ledger, "r-twice", account_id, 500)
    assert await harness.balance(account_id) == (1_000_000, 500)
    assert await ledger.settle(charge("r-twice", 300)) == 999_700
    assert await ledger.settle(charge("r-twice", 300)) is None
    assert await harness.balance(account_id) == (999_700, 0)
    assert len(await harness.charges(account_id)) == 1
    await harness.assert_invariant(account_id)


async def test_hold_refused_beyond_free_balance(harness):
    ledger = harness.ledger
    account_id, _ = await harness.account("0.001")  # 1000 micro-credits
    assert await hold(ledger, "r-a", account_id, 600)
    assert not await hold(ledger, "r-b", account_id, 600)
    assert await hold(ledger, "r-c", account_id, 400)
    assert await harness.balance(account_id) == (1000, 1000)
    assert not await ledger.extend_hold("r-a", account_id, 1)
    assert await harness.balance(account_id) == (1000, 1000)  # the failed extension undone
    await ledger.settle(charge("r-c", 100))
    assert await ledger.extend_hold("r-a", account_id, 300)
    assert await harness.balance(account_id) == (900, 900)
    await harness.assert_invariant(account_id)


async def test_concurrent_settlements_on_one_account_lose_nothing(harness):
    ledger = harness.ledger
    account_id, _ = await harness.account("1")
    ids = [f"r-many-{account_id}-{n}" for n in range(100)]
    held = await asyncio.gather(*(hold(ledger, rid, account_id, 1000) for rid in ids))
    assert all(held)
    await asyncio.gather(*(ledger.settle(charge(rid, n)) for n, rid in enumerate(ids)))
    assert await harness.balance(account_id) == (1_000_000 - sum(range(100)), 0)
    await harness.assert_invariant(account_id)


async def test_unrenewed_holds_expire_and_renewed_ones_stay(harness):
    ledger = harness.ledger
    account_id, _ = await harness.account("1")
    dead, live = f"r-dead-{account_id}", f"r-live-{account_id}"
    assert await hold(ledger, dead, account_id, 700, ttl=0.05)
    assert await hold(ledger, live, account_id, 200, ttl=0.05)
    await ledger.renew_holds([live], 60)
    await asyncio.sleep(0.1)
    assert await ledger.expire_holds() >= 1
    assert await harness.balance(account_id) == (1_000_000, 200)
    [expired] = await harness.charges(account_id)
    assert (expired["request_id"], expired["outcome"], expired["credits"]) == (dead, "expired", 0)
    # The process that held it comes back too late: nothing more is charged.
    assert await ledger.settle(charge(dead, 500)) is None
    assert await ledger.settle(charge(live, 150)) == 1_000_000 - 150
    await harness.assert_invariant(account_id)


async def test_one_batch_settles_many_requests_on_one_account_exactly(harness):
    ledger = harness.ledger
    account_id, _ = await harness.account("1")
    ids = [f"r-batch-{account_id}-{n}" for n in range(50)]
    for rid in ids:
        assert await hold(ledger, rid, account_id, 1000)
    other_id, _ = await harness.account("1")
    assert await hold(ledger, f"r-batch-other-{other_id}", other_id, 1000)
    batch = [charge(rid, n) for n, rid in enumerate(ids)]
    batch.append(charge(f"r-batch-other-{other_id}", 7))
    balances = await ledger.settle_many(batch)
    assert set(balances) == {c.request_id for c in batch}
    assert balances[ids[0]] == 1_000_000 - sum(range(50))  # the balance after the batch
    assert await harness.balance(account_id) == (1_000_000 - sum(range(50)), 0)
    assert await harness.balance(other_id) == (1_000_000 - 7, 0)
    assert await ledger.settle_many(batch) == {}  # again: nothing more is charged
    await harness.assert_invariant(account_id)
    await harness.assert_invariant(other_id)


async def test_a_batch_that_dies_before_commit_leaves_nothing_and_its_retry_settles_once(
    harness,
):
    ledger = harness.ledger
    account_id, _ = await harness.account("1")
    ids = [f"r-crash-{account_id}-{n}" for n in range(10)]
    for rid in ids:
        assert await hold(ledger, rid, account_id, 1000)
    batch = [charge(rid, 100) for rid in ids]
    # The statement runs, then the process dies before the commit: a rollback.
    async with ledger.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        assert len(await Ledger(conn).settle_many(batch)) == 10
        await transaction.rollback()
    assert await harness.balance(account_id) == (1_000_000, 10_000)
    assert await harness.charges(account_id) == []
    assert len(await ledger.settle_many(batch)) == 10
    assert await ledger.settle_many(batch) == {}
    assert await harness.balance(account_id) == (1_000_000 - 1000, 0)
    assert len(await harness.charges(account_id)) == 10
    await harness.assert_invariant(account_id)


class CountingLedger:
    """The real ledger, counting its batches; it can fail the first one."""

    def __init__(self, ledger, fail_first: bool = False) -> None:
        self.ledger, self.batches, self.fail_first = ledger, [], fail_first

    def _count(self, size: int) -> None:
        self.batches.append(size)
        if self.fail_first and len(self.batches) == 1:
            raise ConnectionResetError("the database went away")

    async def settle_many(self, charges):
        self._count(len(charges))
        return await self.ledger.settle_many(charges)

    async def hold_many(self, holds):
        self._count(len(holds))
        return await self.ledger.hold_many(holds)


def new_hold(request_id: str, account_id: int, amount: int) -> Hold:
    return Hold(request_id, account_id, amount, "m", "p", 60.0)


async def test_a_batch_of_holds_grants_what_one_after_another_would(harness):
    account_id, _ = await harness.account("0.000012")  # 12 micro-credits
    other_id, _ = await harness.account("0.000005")
    disabled_id, _ = await harness.account("1")
    await harness.ledger.pool.execute(
        "UPDATE accounts SET disabled = true WHERE id = $1", disabled_id
    )
    batch = [
        new_hold(f"hb-a-{account_id}", account_id, 5),  # fits: 7 left
        new_hold(f"hb-b-{account_id}", account_id, 10),  # does not fit
        new_hold(f"hb-x-{other_id}", other_id, 5),  # another account: fits exactly
        new_hold(f"hb-c-{account_id}", account_id, 3),  # fits after all: 4 left
        new_hold(f"hb-d-{account_id}", account_id, 4),  # fits: 0 left
        new_hold(f"hb-e-{account_id}", account_id, 1),  # nothing left
        *(new_hold(f"hb-off-{disabled_id}-{n}", disabled_id, 1) for n in range(3)),
    ]
    granted = await harness.ledger.hold_many(batch)
    assert granted == {f"hb-{k}-{account_id}" for k in "acd"} | {f"hb-x-{other_id}"}
    assert await harness.balance(account_id) == (12, 12)
    assert await harness.balance(other_id) == (5, 5)
    assert await harness.balance(disabled_id) == (1_000_000, 0)
    for account in (account_id, other_id, disabled_id):
        await harness.assert_invariant(account)


async def test_a_hold_batch_that_dies_before_commit_reserves_nothing(harness):
    account_id, _ = await harness.account("1")
    batch = [new_hold(f"hc-{account_id}-{n}", account_id, 1000) for n in range(10)]
    async with harness.ledger.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        assert len(await Ledger(conn).hold_many(batch)) == 10
        await transaction.rollback()
    assert await harness.balance(account_id) == (1_000_000, 0)
    assert len(await harness.ledger.hold_many(batch)) == 10
    assert await harness.balance(account_id) == (1_000_000, 10_000)
    await harness.assert_invariant(account_id)


async def test_concurrent_holds_share_batches_and_never_overdraw(harness):
    account_id, _ = await harness.account("0.005")  # covers 50 holds of 100
    counting = CountingLedger(harness.ledger)
    queue = HoldQueue(counting)
    results = await asyncio.gather(
        *(queue.hold(new_hold(f"hq-{account_id}-{n}", account_id, 100)) for n in range(200))
    )
    assert results.count(True) == 50
    assert results[:50] == [True] * 50  # in the order they came
    assert sum(counting.batches) >= 200
    assert len(counting.batches) < 200 / 4, counting.batches  # batched, not one by one
    assert await harness.balance(account_id) == (5000, 5000)
    await harness.assert_invariant(account_id)


async def test_a_failed_hold_batch_fails_its_requests_and_reserves_nothing(harness):
    account_id, _ = await harness.account("1")
    queue = HoldQueue(CountingLedger(harness.ledger, fail_first=True))
    holds = [new_hold(f"hf-{account_id}-{n}", account_id, 100) for n in range(20)]
    outcomes = await asyncio.gather(*(queue.hold(h) for h in holds), return_exceptions=True)
    failed = [h for h, o in zip(holds, outcomes, strict=True) if isinstance(o, Exception)]
    assert failed and all(o is True for o in outcomes if not isinstance(o, Exception))
    _, held = await harness.balance(account_id)
    assert held == 100 * (20 - len(failed))  # the failed batch reserved nothing
    assert all(await asyncio.gather(*(queue.hold(h) for h in failed)))  # and may be retried
    assert await harness.balance(account_id) == (1_000_000, 2000)
    await harness.assert_invariant(account_id)


async def test_concurrent_settlements_share_batches_and_lose_nothing(harness):
    account_id, _ = await harness.account("1")
    ids = [f"r-queue-{account_id}-{n}" for n in range(200)]
    for rid in ids:
        assert await hold(harness.ledger, rid, account_id, 100)
    counting = CountingLedger(harness.ledger)
    queue = SettlementQueue(counting)
    results = await asyncio.gather(*(queue.settle(charge(rid, 3)) for rid in ids))
    assert sum(counting.batches) == 200
    assert len(counting.batches) < 200 / 4, counting.batches  # batched, not one by one
    assert min(results) == 1_000_000 - 600
    assert await harness.balance(account_id) == (1_000_000 - 600, 0)
    await harness.assert_invariant(account_id)


async def test_a_failed_batch_fails_its_requests_and_a_resubmission_settles_them(harness):
    account_id, _ = await harness.account("1")
    ids = [f"r-retry-{account_id}-{n}" for n in range(20)]
    for rid in ids:
        assert await hold(harness.ledger, rid, account_id, 100)
    queue = SettlementQueue(CountingLedger(harness.ledger, fail_first=True))

    async def settle_with_retry(rid: str) -> int | None:
        for _ in range(3):
            try:
                return await queue.settle(charge(rid, 5))
            except ConnectionResetError:
                continue
        raise AssertionError("never settled")

    await asyncio.gather(*(settle_with_retry(rid) for rid in ids))
    assert await harness.balance(account_id) == (1_000_000 - 100, 0)
    assert len(await harness.charges(account_id)) == 20
    await harness.assert_invariant(account_id)


async def test_a_hold_batch_caught_in_a_deadlock_is_run_again(harness):
    """Another transaction locks the batch's second account, then asks for its first:
    PostgreSQL aborts one of the two, and the batch, run again, grants both holds."""
    first, _ = await harness.account("1")
    second, _ = await harness.account("1")
    assert first < second  # the batch locks accounts in id order
    batch = [new_hold(f"hd-{first}", first, 10), new_hold(f"hd-{second}", second, 10)]
    touch = "UPDATE accounts SET held = held WHERE id = $1"
    pool = harness.ledger.pool
    async with pool.acquire() as other, pool.acquire() as batch_conn:
        transaction = other.transaction()
        await transaction.start()
        await other.execute(touch, second)
        holding = asyncio.create_task(Ledger(batch_conn).hold_many(batch))
        await asyncio.sleep(0.3)  # the batch has locked the first account, waits for the second
        try:
            await other.execute(touch, first)  # the cycle
        except asyncpg.DeadlockDetectedError:
            pass  # PostgreSQL chose this side to abort
        await transaction.rollback()
        assert await asyncio.wait_for(holding, 10) == {h.request_id for h in batch}
    assert await harness.balance(first) == (1_000_000, 10)
    assert await harness.balance(second) == (1_000_000, 10)
