"""Reading requests (JSON bodies, bearer tokens) and writing JSON responses."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.errors import APIError, bad_request

MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)


def bearer_token(request: web.Request) -> str:
    """The token of `Authorization: Bearer <token>`, or "" without one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: 413 past the size limit, 400 when it is not one."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit_mb = request.app[MAX_BODY_BYTES] / (1024 * 1024)
        raise APIError(
            413, "request_too_large", f"The request body is larger than {limit_mb:g} MB."
        ) from None
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise bad_request(f"The body is not valid JSON: {err.args[0]}") from None
    if not isinstance(payload, dict):
        raise bad_request("The body must be a JSON object.")
    return payload


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def invalid(field: str, message: str) -> APIError:
    """422 naming the field that is wrong."""
    return APIError(422, "invalid_field", f"{field}: {message}", param=field)


def text_field(body: dict[str, Any], field: str, *, required: bool, limit: int = 200) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid(field, "a non-empty string is required")
    if len(value) > limit:
        raise invalid(field, f"at most {limit} characters")
    return value.strip()
