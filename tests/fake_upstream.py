"""A fake OpenAI-compatible provider: a real aiohttp server that tests steer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

DEFAULT_PIECES = ["Hello", " from", " the", " fake", " upstream", ",", " café", " ☕", "!"]


@dataclass
class FakeUpstream:
    """What the next requests get, and what the fake saw of them."""

    pieces: list[str] = field(default_factory=lambda: list(DEFAULT_PIECES))
    report_usage: bool = True  # send usage when asked (stream) / always (body)
    prompt_tokens: int = 17  # the usage it reports: deliberately not tiktoken's count
    completion_tokens: int | None = None  # default: one per piece
    delay: float = 0.0  # seconds before each chunk
    break_after: int | None = None  # drop the connection after this many chunks
    split: int | None = None  # write the stream in pieces of this many bytes
    burst: bool = False  # write the whole stream at once
    line_end: bytes = b"\n"
    status: int = 200
    error_body: bytes = b""
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)  # when a caller went away
    chunks_sent: int = 0
    sent: bytearray = field(default_factory=bytearray)  # every stream byte it wrote
    server: Any = None  # the TestServer it runs in

    def usage(self) -> dict[str, int]:
        completion = len(self.pieces) if self.completion_tokens is None else self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    def _event(self, chunk: dict[str, Any]) -> bytes:
        end = self.line_end
        return b"data: " + orjson.dumps(chunk) + end + end

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        self.requests.append(payload)
        self.headers.append(dict(request.headers))
        if self.status != 200:
            return web.Response(
                status=self.status, body=self.error_body, content_type="application/json"
            )
        head = {"id": "chatcmpl-fake", "created": 1, "model": payload["model"]}
        if not payload.get("stream"):
            body = {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "".join(self.pieces)},
                    }
                ],
            }
            if self.report_usage:
                body["usage"] = self.usage()
            return web.json_response(body)

        want_usage = (payload.get("stream_options") or {}).get("include_usage")
        chunk_head = {**head, "object": "chat.completion.chunk"}
        extra = {"usage": None} if want_usage else {}
        events = [
            self._event(
                {
                    **chunk_head,
                    **extra,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
                }
            )
        ]
        events += [
            self._event(
                {**chunk_head, **extra, "choices": [{"index": 0, "delta": {"content": piece}}]}
            )
            for piece in self.pieces
        ]
        events.append(
            self._event(
                {
                    **chunk_head,
                    **extra,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
            )
        )
        if want_usage and self.report_usage:
            events.append(self._event({**chunk_head, "choices": [], "usage": self.usage()}))
        events.append(b"data: [DONE]" + self.line_end + self.line_end)

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if self.burst:
            events = [b"".join(events)]
        try:
            for number, event in enumerate(events):
                if self.break_after is not None and number >= self.break_after:
                    request.transport.close()  # an abrupt end, mid-stream
                    return response
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.split:
                    for start in range(0, len(event), self.split):
                        await response.write(event[start : start + self.split])
                else:
                    await response.write(event)
                self.chunks_sent += 1
                self.sent += event
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects.append(time.monotonic())
            raise
        return response
