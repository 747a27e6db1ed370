"""The admin HTTP API under /admin/v1: accounts, keys, grants, charges, usage, settings.

Every route but the OpenAPI document needs `Authorization: Bearer <admin token>`.
Amounts are exact decimal strings of credits; times are RFC 3339 UTC; lists are pages
with an opaque `next_cursor`.
"""

from __future__ import annotations

import base64
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from billing.accounts import AccountExists
from billing.money import credits_to_micro, micro_to_credits
from billing.reports import ChargeFilter, list_charges, usage_summary
from billing.settings import save_settings
from proxy.bodies import bearer_token, invalid, json_response, read_json_object, text_field
from proxy.config import ConfigError
from proxy.errors import APIError
from proxy.gateway import GATEWAY, Gateway, key_credential
from proxy.openapi import document
from proxy.views import (
    account_view,
    charge_view,
    charges_csv,
    grant_view,
    key_view,
    rfc3339,
    usage_view,
)

log = logging.getLogger("creditgate.admin")

PREFIX = "/admin/v1"
DEFAULT_PAGE, MAX_PAGE = 100, 1000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def not_found(what: str) -> APIError:
    return APIError(404, "not_found", f"No {what}.")


def admin_only(handler: Handler) -> Handler:
    async def checked(request: web.Request) -> web.StreamResponse:
        tokens = request.app[GATEWAY].config.admin.tokens
        offered = bearer_token(request).encode()
        # Every configured token is compared, in constant time, whatever matches first.
        matches = [hmac.compare_digest(offered, t.encode()) for t in tokens]
        if not tokens:
            raise APIError(
                401,
                "admin_disabled",
                "The admin API is off: set admin.tokens.",
                type="authentication_error",
            )
        if not offered or not any(matches):
            raise APIError(
                401,
                "invalid_admin_token",
                "A valid admin token is required.",
                type="authentication_error",
            )
        return await handler(request)

    return checked


# --- parameters ---------------------------------------------------------------------


def _path_id(request: web.Request, name: str, what: str) -> int:
    value = request.match_info[name]
    if not value.isdigit():
        raise not_found(what)
    return int(value)


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", str(DEFAULT_PAGE))
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise invalid("limit", f"a whole number from 1 to {MAX_PAGE}")
    return int(text)


def encode_cursor(position: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def decode_cursor(request: web.Request) -> list[Any] | None:
    text = request.query.get("cursor")
    if not text:
        return None
    try:
        position = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise invalid("cursor", "not a cursor this API gave out") from None
    if not isinstance(position, list):
        raise invalid("cursor", "not a cursor this API gave out")
    return position


def _time(request: web.Request, name: str) -> datetime | None:
    text = request.query.get(name)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(name, "an RFC 3339 time, e.g. 2026-01-31T00:00:00Z") from None
    if moment.tzinfo is None:
        raise invalid(name, "needs a time zone, e.g. Z")
    return moment


def _amount(body: dict[str, Any], field: str, *, allow_negative: bool) -> int:
    value = body.get(field)
    if isinstance(value, float):
        raise invalid(field, 'give amounts as decimal strings, e.g. "12.5"')
    try:
        return credits_to_micro(value, allow_negative=allow_negative)
    except ValueError as err:
        raise invalid(field, str(err)) from None


def _group(gateway: Gateway, body: dict[str, Any]) -> str | None:
    group = text_field(body, "group", required=False)
    if group is not None and group not in gateway.config.groups:
        raise invalid("group", f"{group!r} is not one of {', '.join(gateway.config.groups)}")
    return group


def _page(
    data: list[dict[str, Any]], limit: int, position: Callable[[Any], list[Any]], rows: list[Any]
) -> web.Response:
    cursor = encode_cursor(position(rows[-1])) if len(rows) == limit else None
    return json_response({"data": data, "next_cursor": cursor})


# --- accounts -----------------------------------------------------------------------


async def _account_or_404(gateway: Gateway, account_id: int) -> Any:
    account = await gateway.accounts.get(account_id)
    if account is None:
        raise not_found(f"account with id {account_id}")
    return account


@admin_only
async def create_account(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    body = await read_json_object(request)
    name = text_field(body, "name", required=True)
    group = _group(gateway, body) or "default"
    credits = _amount(body, "credits", allow_negative=False) if "credits" in body else 0
    try:
        account, key = await gateway.accounts.create(
            name, group=group, starter=gateway.settings.starter, credits=credits
        )
    except AccountExists:
        raise APIError(
            409, "account_exists", f"An account named {name!r} exists already.", param="name"
        ) from None
    view = account_view(account, gateway.purchase_link(account.id))
    return json_response({**view, "api_key": key}, status=201)


@admin_only
async def list_accounts(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    limit = _limit(request)
    cursor = decode_cursor(request)
    after = cursor[0] if cursor and isinstance(cursor[0], int) else 0
    rows = await gateway.accounts.list(
        search=request.query.get("q") or None,
        group=request.query.get("group") or None,
        after_id=after,
        limit=limit,
    )
    data = [account_view(a, gateway.purchase_link(a.id)) for a in rows]
    return _page(data, limit, lambda a: [a.id], rows)


@admin_only
async def get_account(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    account = await _account_or_404(gateway, _path_id(request, "id", "such account"))
    return json_response(account_view(account, gateway.purchase_link(account.id)))


@admin_only
async def update_account(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    account_id = _path_id(request, "id", "such account")
    body = await read_json_object(request)
    unknown = set(body) - {"group", "disabled"}
    if unknown:
        raise invalid(sorted(unknown)[0], "not a field that can be changed (group, disabled)")
    disabled = body.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise invalid("disabled", "true or false")
    account = await gateway.accounts.update(
        account_id, group=_group(gateway, body), disabled=disabled
    )
    if account is None:
        raise not_found(f"account with id {account_id}")
    gateway.callers.forget_account(account_id)  # a new group or a disabling applies now
    return json_response(account_view(account, gateway.purchase_link(account.id)))


# --- keys ---------------------------------------------------------------------------


@admin_only
async def create_key(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    account_id = _path_id(request, "id", "such account")
    created = await gateway.accounts.create_key(account_id)
    if created is None:
        raise not_found(f"account with id {account_id}")
    key, secret = created
    return json_response({**key_view(key), "key": secret}, status=201)


@admin_only
async def list_keys(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    account = await _account_or_404(gateway, _path_id(request, "id", "such account"))
    keys = await gateway.accounts.list_keys(account.id)
    return json_response({"data": [key_view(k) for k in keys], "next_cursor": None})


@admin_only
async def revoke_key(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    key_id = _path_id(request, "key_id", "such key")
    revoked = await gateway.accounts.revoke_key(key_id)
    if revoked is None:
        raise not_found(f"key with id {key_id}")
    key, key_hash = revoked
    gateway.callers.forget(key_credential(key_hash))  # here now; elsewhere within the TTL
    return json_response(key_view(key))


# --- grants -------------------------------------------------------------------------


@admin_only
async def create_grant(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    account_id = _path_id(request, "id", "such account")
    body = await read_json_object(request)
    amount = _amount(body, "amount", allow_negative=True)
    if amount == 0:
        raise invalid("amount", "must not be zero")
    reason = text_field(body, "reason", required=True, limit=1000)
    await _account_or_404(gateway, account_id)
    grant = await gateway.ledger.adjust(account_id, amount, reason)
    if grant is None:
        raise APIError(
            409,
            "insufficient_balance",
            "The grant would take the account's free balance below zero.",
            param="amount",
        )
    return json_response(grant_view(grant), status=201)


async def _grants(request: web.Request, account_id: int | None) -> web.Response:
    gateway = request.app[GATEWAY]
    limit = _limit(request)
    cursor = decode_cursor(request)
    before = cursor[0] if cursor and isinstance(cursor[0], int) else None
    grants = await gateway.accounts.list_grants(
        account_id=account_id, before_id=before, limit=limit
    )
    return _page([grant_view(g) for g in grants], limit, lambda g: [g.id], grants)


@admin_only
async def list_account_grants(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    account = await _account_or_404(gateway, _path_id(request, "id", "such account"))
    return await _grants(request, account.id)


@admin_only
async def list_all_grants(request: web.Request) -> web.Response:
    return await _grants(request, None)


# --- charges and usage --------------------------------------------------------------


def _account_query(request: web.Request) -> int | None:
    """The optional `account` filter of a list or summary."""
    account = request.query.get("account")
    if account is not None and not account.isdigit():
        raise invalid("account", "an account id")
    return int(account) if account else None


def _charge_filter(request: web.Request) -> ChargeFilter:
    query = request.query
    return ChargeFilter(
        account_id=_account_query(request),
        model=query.get("model") or None,
        provider=query.get("provider") or None,
        outcome=query.get("outcome") or None,
        since=_time(request, "since"),
        until=_time(request, "until"),
    )


def _time_cursor(request: web.Request) -> tuple[datetime, str] | None:
    """A (time, id) position, as the charges and payments lists hand out."""
    cursor = decode_cursor(request)
    if cursor is None:
        return None
    try:
        return datetime.fromisoformat(cursor[0]), str(cursor[1])
    except (IndexError, TypeError, ValueError):
        raise invalid("cursor", "not a cursor this API gave out") from None


@admin_only
async def list_charges_json(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    limit = _limit(request)
    rows = await list_charges(
        gateway.pool, _charge_filter(request), before=_time_cursor(request), limit=limit
    )
    return _page(
        [charge_view(row) for row in rows],
        limit,
        lambda row: [row["ended_at"].isoformat(), row["request_id"]],
        rows,
    )


@admin_only
async def list_charges_csv(request: web.Request) -> web.StreamResponse:
    """Every matching charge, streamed page by page so memory stays flat."""
    gateway = request.app[GATEWAY]
    where = _charge_filter(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="charges.csv"',
        }
    )
    await response.prepare(request)
    before, header = None, True
    while rows := await list_charges(gateway.pool, where, before=before, limit=MAX_PAGE):
        await response.write(charges_csv([charge_view(row) for row in rows], header).encode())
        header = False
        before = rows[-1]["ended_at"], rows[-1]["request_id"]
    if header:
        await response.write(charges_csv([]).encode())
    await response.write_eof()
    return response


@admin_only
async def usage(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    by = request.query.get("by", "model")
    if by not in ("model", "day"):
        raise invalid("by", "model or day")
    rows = await usage_summary(gateway.pool, by, _account_query(request))
    return json_response({"by": by, "data": [usage_view(row, by) for row in rows]})


# --- settings, reload, payments -----------------------------------------------------


def _settings_view(gateway: Gateway) -> dict[str, Any]:
    return {
        "purchase_link": gateway.settings.purchase_link,
        "starter": micro_to_credits(gateway.settings.starter),
    }


@admin_only
async def get_settings(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    await gateway.refresh_settings()
    return json_response(_settings_view(gateway))


@admin_only
async def update_settings(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    body = await read_json_object(request)
    unknown = set(body) - {"purchase_link", "starter"}
    if unknown:
        raise invalid(sorted(unknown)[0], "not a setting (purchase_link, starter)")
    settings = await gateway.refresh_settings()
    if "purchase_link" in body:
        link = body["purchase_link"]
        if not isinstance(link, str) or (link and not link.startswith(("https://", "http://"))):
            raise invalid("purchase_link", 'an http(s) URL, or "" for none')
        settings = replace(settings, purchase_link=link)
    if "starter" in body:
        settings = replace(settings, starter=_amount(body, "starter", allow_negative=False))
    await save_settings(gateway.pool, settings)
    await gateway.refresh_settings()
    return json_response(_settings_view(gateway))


@admin_only
async def reload(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    try:
        config = await gateway.reload()
    except ConfigError as err:
        raise APIError(422, "invalid_config", f"The config was not reloaded: {err}") from None
    return json_response({"reloaded": True, "models": sorted(config.models)})


@admin_only
async def list_payments(request: web.Request) -> web.Response:
    """The Stripe events received, newest first; `status=unknown_account` finds strays."""
    gateway = request.app[GATEWAY]
    limit = _limit(request)
    before = _time_cursor(request)
    rows = await gateway.pool.fetch(
        "SELECT event_id, type, session_id, account_ref, amount, currency, credits, status,"
        " detail, received_at FROM stripe_events"
        " WHERE ($1::text IS NULL OR status = $1)"
        " AND ($2::timestamptz IS NULL OR (received_at, event_id) < ($2, $3::text))"
        " ORDER BY received_at DESC, event_id DESC LIMIT $4",
        request.query.get("status") or None,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )
    data = [
        {
            **dict(row),
            "credits": micro_to_credits(row["credits"]) if row["credits"] else None,
            "received_at": rfc3339(row["received_at"]),
        }
        for row in rows
    ]
    return _page(data, limit, lambda r: [r["received_at"].isoformat(), r["event_id"]], rows)


async def openapi(request: web.Request) -> web.Response:
    return json_response(document())


def add_admin_routes(app: web.Application) -> None:
    routes = app.router
    routes.add_post(f"{PREFIX}/accounts", create_account)
    routes.add_get(f"{PREFIX}/accounts", list_accounts)
    routes.add_get(f"{PREFIX}/accounts/{{id}}", get_account)
    routes.add_patch(f"{PREFIX}/accounts/{{id}}", update_account)
    routes.add_post(f"{PREFIX}/accounts/{{id}}/keys", create_key)
    routes.add_get(f"{PREFIX}/accounts/{{id}}/keys", list_keys)
    routes.add_delete(f"{PREFIX}/keys/{{key_id}}", revoke_key)
    routes.add_post(f"{PREFIX}/accounts/{{id}}/grants", create_grant)
    routes.add_get(f"{PREFIX}/accounts/{{id}}/grants", list_account_grants)
    routes.add_get(f"{PREFIX}/grants", list_all_grants)
    routes.add_get(f"{PREFIX}/charges", list_charges_json)
    routes.add_get(f"{PREFIX}/charges.csv", list_charges_csv)
    routes.add_get(f"{PREFIX}/usage", usage)
    routes.add_get(f"{PREFIX}/settings", get_settings)
    routes.add_patch(f"{PREFIX}/settings", update_settings)
    routes.add_post(f"{PREFIX}/reload", reload)
    routes.add_get(f"{PREFIX}/payments", list_payments)
    routes.add_get(f"{PREFIX}/openapi.json", openapi)
