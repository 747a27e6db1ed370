"""Upstream providers: OpenAI-compatible servers over HTTP, and the built-in demo model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
import orjson

from metering.tokens import TokenCounter, encoding_for_model
from proxy.config import ProviderConfig
from proxy.errors import upstream_error

# Errors of the upstream side of a relay (the caller's side raises ConnectionResetError).
UPSTREAM_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError)


class UpstreamReply(Protocol):
    status: int
    content_type: str

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    config: ProviderConfig

    @property
    def available(self) -> bool: ...

    async def chat(self, body: bytes, payload: dict[str, Any]) -> UpstreamReply: ...

    async def close(self) -> None: ...


class HTTPReply:
    __slots__ = ("_response", "content_type", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "application/json")

    async def chunks(self) -> AsyncIterator[bytes]:
        async for data in self._response.content.iter_any():
            yield data

    async def read(self) -> bytes:
        return await self._response.read()

    def close(self) -> None:
        # Drops the connection unless the body was read to its end: an abandoned stream
        # must stop at the provider, not run on to its last token.
        self._response.close()


class OpenAIUpstream:
    """Any server speaking OpenAI's API under `base_url` (OpenAI, vLLM, Ollama, ...)."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._headers = {
            "Authorization": f"Bearer {config.api_key}",
            "Content-Type": "application/json",
        }
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.read_timeout
        )

    @property
    def available(self) -> bool:
        return bool(self.config.api_key)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # One pooled, keep-alive session per provider, made inside the running loop.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def chat(self, body: bytes, payload: dict[str, Any]) -> UpstreamReply:
        url = f"{self.config.base_url}/chat/completions"
        try:
            response = await self._client().post(url, data=body, headers=self._headers)
        except TimeoutError:
            raise upstream_error(
                f"Provider {self.config.name!r} did not answer in time.", "upstream_timeout", 504
            ) from None
        except aiohttp.ClientError as err:
            raise upstream_error(
                f"Provider {self.config.name!r} is unreachable: {type(err).__name__}.",
                "upstream_unreachable",
            ) from None
        return HTTPReply(response)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


DEMO_ANSWER = (
    "Hello! This is the creditgate demo model. It streams this fixed answer so that you "
    "can try the gateway, its credits and its metering without any provider key."
)


class DemoReply:
    """A deterministic chat completion, streamed token by token like a real provider."""

    __slots__ = ("_chunks", "_delay", "content_type", "status")

    def __init__(self, chunks: list[bytes], content_type: str, delay: float) -> None:
        self._chunks = chunks
        self._delay = delay
        self.status = 200
        self.content_type = content_type

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            if self._delay:
                await asyncio.sleep(self._delay)
            yield chunk

    async def read(self) -> bytes:
        return b"".join(self._chunks)

    def close(self) -> None:
        pass


class DemoUpstream:
    """The `demo` provider type: a local model that needs no network and no key.

    It answers like an OpenAI server (stream or not, usage when asked), so the whole
    gateway, billing included, works with `make run` alone.
    """

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    @property
    def available(self) -> bool:
        return True

    async def chat(self, body: bytes, payload: dict[str, Any]) -> UpstreamReply:
        model = str(payload.get("model", "demo"))
        counter = TokenCounter(encoding_for_model(model))
        encoding_tokens = counter.tokens(DEMO_ANSWER)
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(encoding_tokens):
            encoding_tokens, finish = encoding_tokens[:limit], "length"
        pieces = [counter.decode([token]) for token in encoding_tokens]
        usage = {
            "prompt_tokens": counter.count_messages(payload.get("messages") or []),
            "completion_tokens": len(pieces),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        head = {
            "id": f"chatcmpl-demo{time.time_ns()}",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "creditgate-demo",
        }
        if not payload.get("stream"):
            message = {"role": "assistant", "content": "".join(pieces)}
            whole = {
                **head,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            }
            return DemoReply([orjson.dumps(whole)], "application/json", 0)

        def event(choices: list[Any], **extra: Any) -> bytes:
            chunk = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        chunks = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}}])]
        chunks += [event([{"index": 0, "delta": {"content": piece}}]) for piece in pieces]
        chunks.append(event([{"index": 0, "delta": {}, "finish_reason": finish}]))
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            chunks.append(event([], usage=usage))
        chunks.append(b"data: [DONE]\n\n")
        return DemoReply(chunks, "text/event-stream; charset=utf-8", self.config.chunk_delay)

    async def close(self) -> None:
        pass


def make_upstream(config: ProviderConfig) -> Upstream:
    return DemoUpstream(config) if config.type == "demo" else OpenAIUpstream(config)
