"""Errors in OpenAI's wire format, with a stable type and code for each kind."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("creditgate")


class APIError(Exception):
    """An error the caller gets as `{"error": {...}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {
            "message": message,
            "type": type,
            "param": param,
            "code": code,
            **extra,
        }

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps({"error": self.body}),
            content_type="application/json",
            headers=headers,
        )

    def sse_event(self) -> bytes:
        """The error as a stream event, which the openai SDK raises as an APIError."""
        return b"data: " + orjson.dumps({"error": self.body}) + b"\n\n"


def bad_request(message: str, *, param: str | None = None) -> APIError:
    return APIError(400, "invalid_request", message, param=param)


def unauthorized(message: str) -> APIError:
    return APIError(401, "invalid_api_key", message, type="authentication_error")


def ledger_unavailable() -> APIError:
    return APIError(
        503,
        "ledger_unavailable",
        "Credits cannot be checked right now; try again shortly.",
        type="service_unavailable",
    )


def upstream_error(message: str, code: str = "upstream_error", status: int = 502) -> APIError:
    return APIError(status, code, message, type="upstream_error")


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error a caller can get, in OpenAI's shape, including aiohttp's own 404/405/413."""
    try:
        return await handler(request)
    except APIError as err:
        return err.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason
        if exc.status == 413:
            code, message = "request_too_large", "The request body is larger than allowed."
        elif exc.status == 404:
            code, message = "not_found", f"No route for {request.method} {request.path}."
        elif exc.status == 405:
            code, message = "method_not_allowed", f"{request.method} is not allowed here."
        else:
            code, message = reason.lower().replace(" ", "_"), reason
        return APIError(exc.status, code, message).response(
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        )
    except Exception:
        # Handlers end their own streams; what reaches here came before any response.
        log.exception("unexpected error on %s %s", request.method, request.path)
        return APIError(
            500, "internal_error", "The gateway failed on this request.", type="server_error"
        ).response()
