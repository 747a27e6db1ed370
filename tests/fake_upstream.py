"""A fake provider: a real aiohttp server that tests steer. It speaks OpenAI's Chat
Completions, Responses, embeddings and images (also under Azure's deployment URLs) and
Anthropic's Messages, streamed the way each of them streams."""

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
    reset: bool = False  # close the connection without an answer
    answer_delay: float = 0.0  # seconds before the response headers
    error_after: int | None = None  # Anthropic: end with an error event after this many
    # Anthropic: the content blocks of a message (text or tool_use), its cache usage,
    # and the cumulative output_tokens of each message_delta event it sends.
    blocks: list[dict[str, Any]] = field(
        default_factory=lambda: [{"type": "text", "text": "".join(DEFAULT_PIECES)}]
    )
    cache_read: int = 0
    cache_write: int = 0
    output_counts: list[int] = field(default_factory=lambda: [9])
    # OpenAI usage details: cached prompt tokens and reasoning tokens.
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    paths: list[str] = field(default_factory=list)  # path and query of every request
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)  # when a caller went away
    chunks_sent: int = 0
    sent: bytearray = field(default_factory=bytearray)  # every stream byte it wrote
    server: Any = None  # the TestServer it runs in

    def usage(self) -> dict[str, Any]:
        completion = len(self.pieces) if self.completion_tokens is None else self.completion_tokens
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage

    def app(self) -> web.Application:
        app = web.Application()
        for path, handler in (
            ("/v1/chat/completions", self._chat),
            ("/v1/messages", self._messages),
            ("/v1/responses", self._responses),
            ("/v1/embeddings", self._embeddings),
            ("/v1/images/generations", self._images),
            ("/openai/deployments/{deployment}/chat/completions", self._chat),
            ("/openai/deployments/{deployment}/embeddings", self._embeddings),
            ("/openai/responses", self._responses),
        ):
            app.router.add_post(path, handler)
        return app

    async def _receive(self, request: web.Request) -> dict[str, Any] | web.StreamResponse:
        """Record a request; the refusal to send instead of an answer, if one is set."""
        payload = await request.json()
        self.requests.append(payload)
        self.headers.append(dict(request.headers))
        self.paths.append(request.path_qs)
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        if self.reset:
            request.transport.close()
            return web.Response()  # never reaches the caller: the connection is gone
        if self.status != 200:
            return web.Response(
                status=self.status, body=self.error_body, content_type="application/json"
            )
        return payload

    async def _send_events(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
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

    # --- Anthropic Messages -------------------------------------------------------------

    def anthropic_usage(self, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": self.prompt_tokens,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": self.cache_write,
            "output_tokens": output_tokens,
        }

    def _stop_reason(self) -> str:
        return "tool_use" if any(b["type"] == "tool_use" for b in self.blocks) else "end_turn"

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        payload = await self._receive(request)
        if isinstance(payload, web.StreamResponse):
            return payload
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": payload["model"],
            "stop_sequence": None,
        }
        if not payload.get("stream"):
            return web.json_response(
                {
                    **message,
                    "content": self.blocks,
                    "stop_reason": self._stop_reason(),
                    "usage": self.anthropic_usage(self.output_counts[-1]),
                }
            )

        def event(kind: str, **data: Any) -> bytes:
            end = self.line_end
            body = orjson.dumps({"type": kind, **data})
            return b"event: " + kind.encode() + end + b"data: " + body + end + end

        start = {**message, "content": [], "stop_reason": None, "usage": self.anthropic_usage(1)}
        events = [event("message_start", message=start), event("ping")]
        for index, block in enumerate(self.blocks):
            if block["type"] == "text":
                events.append(event("content_block_start", index=index,
                                    content_block={"type": "text", "text": ""}))  # fmt: skip
                events += [
                    event("content_block_delta", index=index,
                          delta={"type": "text_delta", "text": piece})
                    for piece in self.pieces
                ]  # fmt: skip
            else:
                events.append(event("content_block_start", index=index,
                                    content_block={**block, "input": {}}))  # fmt: skip
                arguments = orjson.dumps(block["input"]).decode()
                events += [
                    event("content_block_delta", index=index,
                          delta={"type": "input_json_delta", "partial_json": arguments[i : i + 7]})
                    for i in range(0, len(arguments), 7)
                ]  # fmt: skip
            events.append(event("content_block_stop", index=index))
        if self.error_after is not None:
            failure = {"type": "overloaded_error", "message": "Overloaded"}
            events = [*events[: self.error_after], event("error", error=failure)]
            return await self._send_events(request, events)
        for count in self.output_counts:
            events.append(
                event("message_delta", delta={"stop_reason": self._stop_reason(),
                      "stop_sequence": None}, usage={"output_tokens": count})
            )  # fmt: skip
        events.append(event("message_stop"))
        return await self._send_events(request, events)

    # --- OpenAI Responses, embeddings, images ------------------------------------------

    def responses_usage(self) -> dict[str, Any]:
        completion = len(self.pieces) if self.completion_tokens is None else self.completion_tokens
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.prompt_tokens + completion,
        }

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        payload = await self._receive(request)
        if isinstance(payload, web.StreamResponse):
            return payload
        text = "".join(self.pieces)
        response: dict[str, Any] = {
            "id": "resp_fake",
            "object": "response",
            "created_at": 1,
            "model": payload["model"],
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": "msg_fake",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        if self.report_usage:
            response["usage"] = self.responses_usage()
        if not payload.get("stream"):
            return web.json_response(response)
        events = []
        for number, (kind, data) in enumerate(
            [("response.created", {"response": {**response, "status": "in_progress",
                                                 "output": [], "usage": None}})]
            + [("response.output_text.delta", {"item_id": "msg_fake", "output_index": 0,
                "content_index": 0, "delta": piece, "logprobs": []}) for piece in self.pieces]
            + [("response.completed", {"response": response})]
        ):  # fmt: skip
            body = orjson.dumps({"type": kind, "sequence_number": number, **data})
            events.append(b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n")
        return await self._send_events(request, events)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        payload = await self._receive(request)
        if isinstance(payload, web.StreamResponse):
            return payload
        given = payload["input"]
        items = [given] if isinstance(given, str) else given
        body: dict[str, Any] = {
            "object": "list",
            "model": payload.get("model"),
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.25, -0.5, 0.125]}
                for i in range(len(items))
            ],
        }
        if self.report_usage:
            body["usage"] = {
                "prompt_tokens": self.prompt_tokens,
                "total_tokens": self.prompt_tokens,
            }
        return web.json_response(body)

    async def _images(self, request: web.Request) -> web.StreamResponse:
        payload = await self._receive(request)
        if isinstance(payload, web.StreamResponse):
            return payload
        count = payload.get("n") or 1
        if not payload.get("stream"):
            return web.json_response(
                {"created": 1, "data": [{"b64_json": "aGVsbG8="} for _ in range(count)]}
            )
        events = []
        for image in range(count):
            for kind in ("image_generation.partial_image", "image_generation.completed"):
                body = orjson.dumps({"type": kind, "b64_json": "aGVsbG8=", "created_at": image})
                events.append(b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n")
        return await self._send_events(request, events)

    def _event(self, chunk: dict[str, Any]) -> bytes:
        end = self.line_end
        return b"data: " + orjson.dumps(chunk) + end + end

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        payload = await self._receive(request)
        if isinstance(payload, web.StreamResponse):
            return payload
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

        return await self._send_events(request, events)
