"""Errors in the caller's wire format (OpenAI's or Anthropic's), with a stable type and
code for each kind."""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("creditgate")


class WireFormat(Enum):
    OPENAI = "openai"  # Chat Completions, embeddings, images, the rest of /v1
    RESPONSES = "responses"  # OpenAI's Responses API: its own stream events
    ANTHROPIC = "anthropic"  # Anthropic's Messages API


# The surfaces whose callers expect Anthropic's error shape, even for a 404 or a 413.
ANTHROPIC_PATHS = frozenset({"/v1/messages"})

# Anthropic's error type for each status: https://docs.anthropic.com/en/api/errors
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


_OPENAI_FIELDS = frozenset({"message", "type", "param", "code"})


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


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

    def _anthropic(self) -> dict[str, Any]:
        error = {"type": anthropic_error_type(self.status), "message": self.body["message"]}
        # What creditgate adds (a purchase link) rides along; OpenAI's own fields do not.
        error.update((k, v) for k, v in self.body.items() if k not in _OPENAI_FIELDS)
        return {"type": "error", "error": error}

    def response(
        self, headers: dict[str, str] | None = None, wire: WireFormat = WireFormat.OPENAI
    ) -> web.Response:
        body = self._anthropic() if wire is WireFormat.ANTHROPIC else {"error": self.body}
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=headers,
        )

    def sse_event(self, wire: WireFormat = WireFormat.OPENAI) -> bytes:
        """The error as a stream event, which the caller's SDK raises as an error."""
        if wire is WireFormat.ANTHROPIC:
            return b"event: error\ndata: " + orjson.dumps(self._anthropic()) + b"\n\n"
        if wire is WireFormat.RESPONSES:
            # The Responses `error` event; its "error" member is what the openai SDK raises.
            body = self.body
            event = {
                "type": "error",
                "code": body["code"],
                "message": body["message"],
                "param": body["param"],
                "error": body,
            }
            return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
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
    """Every error a caller can get, in its API's shape, including aiohttp's 404/405/413."""
    wire = WireFormat.ANTHROPIC if request.path in ANTHROPIC_PATHS else WireFormat.OPENAI
    try:
        return await handler(request)
    except APIError as err:
        return err.response(wire=wire)
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
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"}, wire=wire
        )
    except Exception:
        # Handlers end their own streams; what reaches here came before any response.
        log.exception("unexpected error on %s %s", request.method, request.path)
        return APIError(
            500, "internal_error", "The gateway failed on this request.", type="server_error"
        ).response(wire=wire)
