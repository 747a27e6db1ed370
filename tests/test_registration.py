"""How accounts come to exist: trusted sign-in proxy headers and self-service sign-up."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import openai

from tests.conftest import Harness

MESSAGES = [{"role": "user", "content": "hi"}]


async def get(harness: Harness, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(str(harness.server.make_url(path)), headers=headers) as response:
            return response.status, await response.json()


async def post(harness: Harness, path: str, body: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(str(harness.server.make_url(path)), json=body) as response:
            return response.status, await response.json()


async def with_starter(harness: Harness, starter: str) -> None:
    assert (await harness.admin("PATCH", "/settings", json={"starter": starter}))[0] == 200


async def test_racing_first_requests_of_a_new_trusted_user_get_one_starter_grant(harness):
    await with_starter(harness, "5")
    user = f"alice-{uuid.uuid4().hex[:8]}@example.com"
    try:
        results = await asyncio.gather(
            *(get(harness, "/v1/credits", {"X-Forwarded-User": user}) for _ in range(20))
        )
    finally:
        await harness.forget_settings()
    assert {status for status, _ in results} == {200}
    assert {body["balance"] for _, body in results} == {"5"}
    rows = await harness.ledger.pool.fetch(
        "SELECT g.source, g.amount FROM credit_grants g JOIN accounts a ON a.id = g.account_id"
        " WHERE a.name = $1",
        user,
    )
    assert [(r["source"], r["amount"]) for r in rows] == [("starter", 5_000_000)]


async def test_trusted_user_streams_and_pays_without_a_key(harness):
    user = f"bob-{uuid.uuid4().hex[:8]}"
    await get(harness, "/v1/credits", {"X-Forwarded-User": user})
    account = await harness.gateway.accounts.get_by_name(user)
    await harness.ledger.grant(account.id, 1_000_000, "admin")
    sdk = openai.AsyncOpenAI(
        base_url=harness.base_url,
        api_key="unused",
        max_retries=0,
        default_headers={"X-Forwarded-User": user},
    )
    stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    _ = [chunk async for chunk in stream]
    await harness.settled()
    assert len(await harness.charges(account.id)) == 1


async def test_the_header_counts_only_from_trusted_sources(harness):
    harness.write_config(trusted="10.0.0.0/8")
    assert (await harness.admin("POST", "/reload"))[0] == 200
    user = f"mallory-{uuid.uuid4().hex[:8]}"
    status, error = await get(harness, "/v1/credits", {"X-Forwarded-User": user})
    assert (status, error["error"]["code"]) == (401, "invalid_api_key")
    assert await harness.gateway.accounts.get_by_name(user) is None


async def test_credits_view_of_the_caller(harness):
    account_id, key = await harness.account("7.5")
    status, view = await get(harness, "/v1/credits", {"Authorization": f"Bearer {key}"})
    assert status == 200
    assert view == {
        "balance": "7.5",
        "pending": "0",
        "total_purchased": "0",
        "purchase_link": f"https://buy.stripe.com/test_abc?client_reference_id={account_id}",
    }
    status, _ = await get(harness, "/v1/credits", {})
    assert status == 401


async def test_signup_returns_a_working_key_and_is_rate_limited_per_address(harness):
    await with_starter(harness, "1")
    try:
        name = f"signup-{uuid.uuid4().hex[:8]}"
        status, created = await post(harness, "/v1/signup", {"name": name})
        assert status == 201 and created["name"] == name and created["balance"] == "1"
        status, view = await get(
            harness, "/v1/credits", {"Authorization": f"Bearer {created['api_key']}"}
        )
        assert (status, view["balance"]) == (200, "1")
        status, taken = await post(harness, "/v1/signup", {"name": name})
        assert (status, taken["error"]["code"]) == (409, "account_exists")
        status, anonymous = await post(harness, "/v1/signup")
        assert status == 201 and anonymous["name"].startswith("user-")
        status, limited = await post(harness, "/v1/signup", {})
        # 3 per hour from this address (the failed 409 counted too).
        assert (status, limited["error"]["code"]) == (429, "signup_rate_limited")
    finally:
        await harness.forget_settings()


async def test_signup_is_off_unless_configured(harness):
    config = harness.config_path.read_text().replace(
        "modes: [admin, trusted_header, signup]", "modes: [admin]"
    )
    harness.config_path.write_text(config)
    assert (await harness.admin("POST", "/reload"))[0] == 200
    status, error = await post(harness, "/v1/signup", {"name": "x"})
    assert (status, error["error"]["code"]) == (404, "signup_disabled")
    status, _ = await get(harness, "/v1/credits", {"X-Forwarded-User": "someone"})
    assert status == 401
