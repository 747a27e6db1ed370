"""The admin API against a running gateway and PostgreSQL, failure paths included."""

from __future__ import annotations

import asyncio
import csv
import io
import math
import time
import uuid
from decimal import Decimal

import aiohttp
import openai
import pytest

from billing.money import credits_to_micro
from proxy.app import create_app
from proxy.config import load_config
from tests.conftest import Harness

MESSAGES = [{"role": "user", "content": "hi"}]


def unique(prefix: str = "acct") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def caller(harness: Harness, key: str, path: str = "/v1/credits") -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            str(harness.server.make_url(path)), headers={"Authorization": f"Bearer {key}"}
        ) as response:
            return response.status, await response.json()


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/accounts"),
        ("POST", "/accounts"),
        ("GET", "/accounts/1"),
        ("PATCH", "/accounts/1"),
        ("POST", "/accounts/1/keys"),
        ("GET", "/accounts/1/keys"),
        ("DELETE", "/keys/1"),
        ("POST", "/accounts/1/grants"),
        ("GET", "/accounts/1/grants"),
        ("GET", "/grants"),
        ("GET", "/charges"),
        ("GET", "/charges.csv"),
        ("GET", "/usage"),
        ("GET", "/settings"),
        ("PATCH", "/settings"),
        ("POST", "/reload"),
        ("GET", "/payments"),
    ],
)
@pytest.mark.parametrize("token", [None, "wrong-token", "test-admin-token-but-longer"])
async def test_every_route_refuses_a_missing_or_wrong_token(harness, method, path, token):
    status, body = await harness.admin(method, path, token=token, json={})
    assert status == 401
    assert body["error"]["code"] == "invalid_admin_token"


async def test_any_configured_token_works_and_openapi_lists_every_route(harness):
    assert (await harness.admin("GET", "/settings", token="second-admin-token"))[0] == 200
    status, document = await harness.admin("GET", "/openapi.json", token=None)
    assert status == 200
    assert document["openapi"].startswith("3.")
    routes = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    registered = {
        (r.method, r.resource.canonical)
        for r in harness.server.app.router.routes()
        if r.resource.canonical.startswith("/admin/v1") and r.method != "HEAD"
    }
    registered = {(m, p.replace("{key_id}", "{key_id}")) for m, p in registered}
    assert registered - {("GET", "/admin/v1/openapi.json")} == routes


async def test_account_lifecycle(harness):
    name = unique()
    status, created = await harness.admin(
        "POST", "/accounts", json={"name": name, "group": "pro", "credits": "12.5"}
    )
    assert status == 201
    assert (created["name"], created["group"], created["balance"]) == (name, "pro", "12.5")
    assert created["purchase_link"].endswith(f"client_reference_id={created['id']}")
    assert created["created_at"].endswith("Z")
    assert (await caller(harness, created["api_key"]))[0] == 200

    status, again = await harness.admin("POST", "/accounts", json={"name": name})
    assert (status, again["error"]["code"]) == (409, "account_exists")

    status, fetched = await harness.admin("GET", f"/accounts/{created['id']}")
    assert status == 200 and fetched["total_granted"] == "12.5"
    assert "api_key" not in fetched

    status, updated = await harness.admin(
        "PATCH", f"/accounts/{created['id']}", json={"group": "default"}
    )
    assert (status, updated["group"]) == (200, "default")
    status, disabled = await harness.admin(
        "PATCH", f"/accounts/{created['id']}", json={"disabled": True}
    )
    assert (status, disabled["disabled"]) == (200, True)
    status, body = await caller(harness, created["api_key"])
    assert (status, body["error"]["code"]) == (403, "account_disabled")


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "x", "credits": "abc"}, "credits"),
        ({"name": "x", "credits": 1.5}, "credits"),
        ({"name": "x", "credits": "-1"}, "credits"),
        ({"name": "x", "credits": "0.0000001"}, "credits"),
        ({"name": "x", "group": "gold"}, "group"),
    ],
)
async def test_account_creation_names_the_invalid_field(harness, body, field):
    status, error = await harness.admin("POST", "/accounts", json=body)
    assert status == 422
    assert error["error"]["param"] == field


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "/accounts/999999999", None),
        ("GET", "/accounts/abc", None),
        ("PATCH", "/accounts/999999999", {"group": "pro"}),
        ("POST", "/accounts/999999999/keys", None),
        ("GET", "/accounts/999999999/keys", None),
        ("DELETE", "/keys/999999999", None),
        ("POST", "/accounts/999999999/grants", {"amount": "1", "reason": "x"}),
        ("GET", "/accounts/999999999/grants", None),
    ],
)
async def test_unknown_ids_are_404(harness, method, path, body):
    status, error = await harness.admin(method, path, json=body)
    assert status == 404
    assert error["error"]["code"] == "not_found"


async def test_patch_refuses_unknown_fields_and_bad_values(harness):
    account_id, _ = await harness.account()
    for body, field in (
        ({"balance": "5"}, "balance"),
        ({"disabled": "yes"}, "disabled"),
        ({"group": "gold"}, "group"),
    ):
        status, error = await harness.admin("PATCH", f"/accounts/{account_id}", json=body)
        assert (status, error["error"]["param"]) == (422, field)


async def test_listing_searches_filters_and_pages(harness):
    tag = uuid.uuid4().hex[:8]
    for n in range(5):
        await harness.admin(
            "POST",
            "/accounts",
            json={"name": f"list-{tag}-{n}", "group": "pro" if n % 2 else "default"},
        )
    seen, cursor = [], None
    while True:
        query = f"?q=LIST-{tag}&limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = await harness.admin("GET", f"/accounts{query}")
        assert status == 200 and len(page["data"]) <= 2
        seen += [a["name"] for a in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"list-{tag}-{n}" for n in range(5)]
    status, pros = await harness.admin("GET", f"/accounts?q={tag}&group=pro")
    assert [a["name"] for a in pros["data"]] == [f"list-{tag}-1", f"list-{tag}-3"]
    for query, field in (("?limit=0", "limit"), ("?limit=x", "limit"), ("?cursor=%%%", "cursor")):
        status, error = await harness.admin("GET", f"/accounts{query}")
        assert (status, error["error"]["param"]) == (422, field)


async def test_keys_are_shown_once_listed_by_prefix_and_revoked_at_once(harness):
    account_id, first_key = await harness.account()
    status, created = await harness.admin("POST", f"/accounts/{account_id}/keys")
    assert status == 201 and created["key"].startswith(created["prefix"])
    assert (await caller(harness, created["key"]))[0] == 200  # now cached as valid

    status, listing = await harness.admin("GET", f"/accounts/{account_id}/keys")
    assert [k["prefix"] for k in listing["data"]] == [first_key[:10], created["prefix"]]
    assert all("key" not in k for k in listing["data"])

    status, revoked = await harness.admin("DELETE", f"/keys/{created['id']}")
    assert status == 200 and revoked["revoked_at"]
    status, error = await caller(harness, created["key"])
    assert (status, error["error"]["code"]) == (401, "invalid_api_key")
    assert (await caller(harness, first_key))[0] == 200
    assert (await harness.admin("DELETE", f"/keys/{created['id']}"))[0] == 200  # idempotent


async def test_grants_add_remove_and_list_with_sources(harness):
    account_id, _ = await harness.account("2")
    status, grant = await harness.admin(
        "POST", f"/accounts/{account_id}/grants", json={"amount": "3.25", "reason": "promo"}
    )
    assert status == 201
    assert (grant["amount"], grant["source"], grant["reason"]) == ("3.25", "admin", "promo")
    status, grant = await harness.admin(
        "POST", f"/accounts/{account_id}/grants", json={"amount": "-1.25", "reason": "refund"}
    )
    assert status == 201 and grant["amount"] == "-1.25"
    status, error = await harness.admin(
        "POST", f"/accounts/{account_id}/grants", json={"amount": "-100", "reason": "too much"}
    )
    assert (status, error["error"]["code"]) == (409, "insufficient_balance")
    for body, field in (
        ({"amount": "0", "reason": "x"}, "amount"),
        ({"amount": "x", "reason": "x"}, "amount"),
        ({"amount": 5, "reason": ""}, "reason"),
        ({"reason": "x"}, "amount"),
    ):
        status, error = await harness.admin("POST", f"/accounts/{account_id}/grants", json=body)
        assert (status, error["error"]["param"]) == (422, field)

    status, account = await harness.admin("GET", f"/accounts/{account_id}")
    assert (account["balance"], account["total_granted"]) == ("4", "4")
    status, grants = await harness.admin("GET", f"/accounts/{account_id}/grants")
    assert [(g["amount"], g["source"]) for g in grants["data"]] == [
        ("-1.25", "admin"),
        ("3.25", "admin"),
        ("2", "admin"),
    ]
    status, everything = await harness.admin("GET", "/grants?limit=2")
    assert len(everything["data"]) == 2 and everything["next_cursor"]
    await harness.assert_invariant(account_id)


async def test_slow_stream_shows_pending_then_the_charge_in_list_and_csv(harness):
    harness.upstream.pieces = [" hello"] * 20
    harness.upstream.delay = 0.05
    account_id, key = await harness.account()
    sdk = openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
    stream = await sdk.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=50
    )
    first = await anext(aiter(stream))
    assert first.choices
    status, during = await harness.admin("GET", f"/accounts/{account_id}")
    assert status == 200 and credits_to_micro(during["pending"]) > 0
    _ = [chunk async for chunk in stream]
    await harness.settled()

    status, after = await harness.admin("GET", f"/accounts/{account_id}")
    assert after["pending"] == "0"
    status, charges = await harness.admin("GET", f"/charges?account={account_id}")
    [charge] = charges["data"]
    assert (charge["model"], charge["provider"], charge["outcome"]) == ("gpt-4o-mini", "fake", "ok")
    assert charge["credits"] == after["total_spent"]
    assert charge["output_tokens"] == 20 and charge["started_at"] <= charge["ended_at"]
    status, text = await harness.admin("GET", f"/charges.csv?account={account_id}")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["request_id"] for r in rows] == [charge["request_id"]]
    assert rows[0]["credits"] == charge["credits"]

    # balance = total_granted - total_spent, for every account.
    cursor = ""
    while True:
        status, page = await harness.admin("GET", f"/accounts?limit=1000{cursor}")
        for account in page["data"]:
            assert Decimal(account["balance"]) == (
                Decimal(account["total_granted"]) - Decimal(account["total_spent"])
            )
        if not page["next_cursor"]:
            break
        cursor = f"&cursor={page['next_cursor']}"


async def test_charge_filters_pages_and_usage(harness):
    account_id, key = await harness.account()
    sdk = openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
    for model in ("gpt-4o-mini", "legacy", "gpt-4o-mini"):
        await sdk.chat.completions.create(model=model, messages=MESSAGES)
    await harness.settled()
    status, mini = await harness.admin("GET", f"/charges?account={account_id}&model=gpt-4o-mini")
    assert len(mini["data"]) == 2
    status, page = await harness.admin("GET", f"/charges?account={account_id}&limit=2")
    status, rest = await harness.admin(
        "GET", f"/charges?account={account_id}&limit=2&cursor={page['next_cursor']}"
    )
    ids = [c["request_id"] for c in page["data"] + rest["data"]]
    assert len(ids) == 3 == len(set(ids))
    since = page["data"][0]["ended_at"]
    status, newest = await harness.admin(
        "GET", f"/charges?account={account_id}&since={since.replace('+', '%2B')}"
    )
    assert [c["request_id"] for c in newest["data"]] == [ids[0]]
    status, none = await harness.admin("GET", f"/charges?account={account_id}&outcome=expired")
    assert none["data"] == []
    for query, field in (
        ("since=yesterday", "since"),
        ("until=2026-01-01T00:00:00", "until"),
        ("account=me", "account"),
    ):
        status, error = await harness.admin("GET", f"/charges?{query}")
        assert (status, error["error"]["param"]) == (422, field)

    status, by_model = await harness.admin("GET", f"/usage?by=model&account={account_id}")
    rows = {row["model"]: row for row in by_model["data"]}
    assert rows["gpt-4o-mini"]["requests"] == 2 and rows["legacy"]["requests"] == 1
    mini_credits = sum(Decimal(c["credits"]) for c in mini["data"])
    assert Decimal(rows["gpt-4o-mini"]["credits"]) == mini_credits
    assert Decimal(rows["gpt-4o-mini"]["margin"]) == (
        mini_credits - sum(Decimal(c["provider_cost"]) for c in mini["data"])
    )
    status, by_day = await harness.admin("GET", f"/usage?by=day&account={account_id}")
    [day] = by_day["data"]
    assert day["requests"] == 3 and len(day["day"]) == 10
    status, error = await harness.admin("GET", "/usage?by=week")
    assert (status, error["error"]["param"]) == (422, "by")


async def test_settings_change_the_link_and_the_starter_at_runtime(harness):
    status, settings = await harness.admin("GET", "/settings")
    assert settings == {"purchase_link": "https://buy.stripe.com/test_abc", "starter": "0"}
    status, settings = await harness.admin(
        "PATCH",
        "/settings",
        json={"purchase_link": "https://buy.stripe.com/new?x=1", "starter": "2.5"},
    )
    assert status == 200 and settings["starter"] == "2.5"
    try:
        status, created = await harness.admin("POST", "/accounts", json={"name": unique()})
        assert created["balance"] == "2.5"
        assert created["purchase_link"] == (
            f"https://buy.stripe.com/new?x=1&client_reference_id={created['id']}"
        )
        status, grants = await harness.admin("GET", f"/accounts/{created['id']}/grants")
        assert [g["source"] for g in grants["data"]] == ["starter"]
        for body, field in (
            ({"purchase_link": "ftp://x"}, "purchase_link"),
            ({"starter": "-1"}, "starter"),
            ({"colour": 1}, "colour"),
        ):
            status, error = await harness.admin("PATCH", "/settings", json=body)
            assert (status, error["error"]["param"]) == (422, field)
    finally:
        await harness.forget_settings()


async def test_pro_group_pays_the_pro_rate(harness):
    account_id, key = await harness.account(group="pro")
    sdk = openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
    await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await harness.settled()
    [charge] = await harness.charges(account_id)
    tokens_out = harness.upstream.usage()["completion_tokens"]
    assert charge["credits"] == math.ceil(17 * Decimal("0.25") + tokens_out * Decimal("1.00"))
    assert (charge["group_name"], charge["price_input"], charge["price_output"]) == (
        "pro",
        "0.25",
        "1.00",
    )


async def test_reload_changes_the_next_charge_not_the_running_one(harness):
    harness.upstream.pieces = [" hello"] * 10
    harness.upstream.delay = 0.05
    account_id, key = await harness.account()
    sdk = openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
    stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    await anext(aiter(stream))  # in flight at the old price

    harness.write_config(price_in="3", price_out="12")
    status, body = await harness.admin("POST", "/reload")
    assert status == 200 and "gpt-4o-mini" in body["models"]
    _ = [chunk async for chunk in stream]
    harness.upstream.delay = 0
    await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await harness.settled()
    old, new = await harness.charges(account_id)
    assert old["credits"] == math.ceil(17 * Decimal("0.30") + 10 * Decimal("1.20"))
    assert new["credits"] == math.ceil(17 * Decimal("3") + 10 * Decimal("12"))
    assert (old["price_input"], new["price_input"]) == ("0.30", "3")

    harness.write_config(price_in="cheap")
    status, error = await harness.admin("POST", "/reload")
    assert status == 422 and "models.gpt-4o-mini.price" in error["error"]["message"]
    await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await harness.settled()
    assert (await harness.charges(account_id))[-1]["credits"] == new["credits"]


async def test_sighup_style_reload_survives_concurrent_requests(harness):
    account_id, key = await harness.account()
    sdk = openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
    harness.write_config(price_in="0.5")
    results = await asyncio.gather(
        harness.gateway.reload(),
        *(sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES) for _ in range(10)),
    )
    assert all(r is not None for r in results)
    await harness.settled()
    assert len(await harness.charges(account_id)) == 10
    await harness.assert_invariant(account_id)


async def test_revocation_reaches_another_gateway_process_within_the_cache_time(
    harness, aiohttp_server
):
    # A second gateway on the same database stands for another creditgate process.
    other = await aiohttp_server(create_app(load_config(harness.config_path)))
    account_id, _ = await harness.account()
    _, created = await harness.admin("POST", f"/accounts/{account_id}/keys")

    async def credits_on_other() -> int:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                str(other.make_url("/v1/credits")),
                headers={"Authorization": f"Bearer {created['key']}"},
            ) as response:
                return response.status

    assert await credits_on_other() == 200  # cached there as valid
    await harness.admin("DELETE", f"/keys/{created['id']}")
    started = time.monotonic()
    while await credits_on_other() == 200:
        assert time.monotonic() - started < 3, "still accepted after the cache time"
        await asyncio.sleep(0.1)
    assert time.monotonic() - started <= 1.5  # auth_cache_seconds: 1 in the test config


async def test_per_account_metrics_only_when_the_operator_opts_in(harness):
    from metering.metrics import exposition

    account_id, key = await harness.account()
    sdk = openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
    await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await harness.settled()
    series = f'creditgate_account_credits_charged_total{{account="{account_id}"}}'
    assert series not in exposition()[0].decode()

    harness.config_path.write_text(
        harness.config_path.read_text() + "metrics: {account_labels: true}\n"
    )
    assert (await harness.admin("POST", "/reload"))[0] == 200
    await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await harness.settled()
    [charge] = (await harness.charges(account_id))[-1:]
    assert f"{series} {charge['credits'] / 1_000_000}" in exposition()[0].decode()
