"""Stripe webhooks: signed events grant once; forged, stale or malformed ones grant nothing."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid

import aiohttp
import orjson
import pytest

from tests.conftest import STRIPE_SECRET, Harness


def sign(payload: bytes, secret: str = STRIPE_SECRET, at: int | None = None) -> str:
    """A Stripe-Signature header, computed here as Stripe documents it."""
    timestamp = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def event(
    kind: str,
    account_ref: object,
    *,
    session: str | None = None,
    amount: int = 1250,
    currency: str = "usd",
    paid: bool = True,
) -> dict:
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": kind,
        "data": {
            "object": {
                "id": session or f"cs_test_{uuid.uuid4().hex}",
                "object": "checkout.session",
                "client_reference_id": None if account_ref is None else str(account_ref),
                "amount_total": amount,
                "currency": currency,
                "payment_status": "paid" if paid else "unpaid",
            }
        },
    }


async def deliver(harness: Harness, body: bytes, signature: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    async with aiohttp.ClientSession() as session:
        async with session.post(
            str(harness.server.make_url("/webhooks/stripe")), data=body, headers=headers
        ) as response:
            return response.status, await response.json()


async def send(harness: Harness, payload: dict) -> tuple[int, dict]:
    body = orjson.dumps(payload)
    return await deliver(harness, body, sign(body))


async def purchases(harness: Harness, account_id: int) -> list:
    return await harness.ledger.pool.fetch(
        "SELECT amount, reference FROM credit_grants WHERE account_id = $1 AND source = 'purchase'",
        account_id,
    )


@pytest.mark.parametrize(
    "amount,currency,credits",
    [(1250, "usd", 12_500_000), (1000, "EUR", 11_000_000), (5000, "jpy", 50_000_000)],
)
async def test_paid_checkout_grants_converted_credits_once(harness, amount, currency, credits):
    account_id, _ = await harness.account("0")
    paid = event("checkout.session.completed", account_id, amount=amount, currency=currency)
    assert await send(harness, paid) == (200, {"received": True, "status": "granted"})
    assert await send(harness, paid) == (200, {"received": True, "status": "duplicate_event"})
    [grant] = await purchases(harness, account_id)
    assert grant["amount"] == credits
    _, view = await harness.admin("GET", f"/accounts/{account_id}")
    assert view["total_purchased"] == view["balance"] == view["total_granted"]
    await harness.assert_invariant(account_id)


async def test_one_session_in_two_events_and_out_of_order_grants_once(harness):
    account_id, _ = await harness.account("0")
    session = f"cs_test_{uuid.uuid4().hex}"
    # The async success arrives before the (unpaid) completion it follows.
    succeeded = event("checkout.session.async_payment_succeeded", account_id, session=session)
    completed = event("checkout.session.completed", account_id, session=session, paid=False)
    assert (await send(harness, succeeded))[1]["status"] == "granted"
    assert (await send(harness, completed))[1]["status"] == "pending"
    paid_again = event("checkout.session.completed", account_id, session=session)
    assert (await send(harness, paid_again))[1]["status"] == "duplicate_session"
    assert [g["reference"] for g in await purchases(harness, account_id)] == [f"stripe:{session}"]


async def test_unpaid_then_async_success_grants_when_paid(harness):
    account_id, _ = await harness.account("0")
    session = f"cs_test_{uuid.uuid4().hex}"
    unpaid = event("checkout.session.completed", account_id, session=session, paid=False)
    assert (await send(harness, unpaid))[1]["status"] == "pending"
    assert await purchases(harness, account_id) == []
    succeeded = event("checkout.session.async_payment_succeeded", account_id, session=session)
    assert (await send(harness, succeeded))[1]["status"] == "granted"
    assert len(await purchases(harness, account_id)) == 1


@pytest.mark.parametrize(
    "tamper",
    ["wrong-secret", "changed-body", "stale", "no-header", "garbled-header"],
)
async def test_forged_or_stale_events_grant_nothing(harness, tamper):
    account_id, _ = await harness.account("0")
    body = orjson.dumps(event("checkout.session.completed", account_id))
    signature = {
        "wrong-secret": sign(body, "whsec_attacker"),
        "changed-body": sign(body.replace(b"1250", b"9999")),
        "stale": sign(body, at=int(time.time()) - 3600),
        "no-header": None,
        "garbled-header": "not a signature",
    }[tamper]
    status, error = await deliver(harness, body, signature)
    assert (status, error["error"]["code"]) == (400, "invalid_signature")
    assert await purchases(harness, account_id) == []


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"id": 1}', b'{"type": "x"}'])
async def test_malformed_signed_bodies_are_400(harness, body):
    status, error = await deliver(harness, body, sign(body))
    assert (status, error["error"]["code"]) == (400, "invalid_event")


async def test_rotated_secrets_and_several_signatures(harness):
    account_id, _ = await harness.account("0")
    body = orjson.dumps(event("checkout.session.completed", account_id))
    # Stripe signs with the old and the new secret while one is rolled.
    old = sign(body, "whsec_unknown_new")
    both = f"{old},v1={sign(body).split('v1=')[1]}"
    assert (await deliver(harness, body, both))[1]["status"] == "granted"
    other = orjson.dumps(event("checkout.session.completed", account_id))
    assert (await deliver(harness, other, sign(other, "whsec_previous")))[1]["status"] == (
        "granted"
    )
    assert len(await purchases(harness, account_id)) == 2


@pytest.mark.parametrize("reference", [None, "999999999", "not-an-id"])
async def test_unknown_account_is_recorded_answered_and_shown_to_the_operator(harness, reference):
    stray = event("checkout.session.completed", reference)
    assert (await send(harness, stray))[1]["status"] == "unknown_account"
    _, payments = await harness.admin("GET", "/payments?status=unknown_account&limit=1000")
    assert stray["id"] in [p["event_id"] for p in payments["data"]]


async def test_unconfigured_currency_and_other_events(harness):
    account_id, _ = await harness.account("0")
    odd = event("checkout.session.completed", account_id, currency="chf")
    assert (await send(harness, odd))[1]["status"] == "unconvertible"
    other = event("payment_intent.created", account_id)
    assert (await send(harness, other))[1]["status"] == "ignored"
    assert await purchases(harness, account_id) == []
    _, payments = await harness.admin("GET", "/payments?status=unconvertible&limit=1000")
    [row] = [p for p in payments["data"] if p["event_id"] == odd["id"]]
    assert "chf" in row["detail"]
