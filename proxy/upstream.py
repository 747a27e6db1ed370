"""Upstream providers: OpenAI-compatible servers, Azure OpenAI, Anthropic, and the demo.

Each provider type knows its URLs and how it authenticates; what goes in the body is the
surface's business (proxy/surfaces). One pooled keep-alive session per provider.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from enum import StrEnum
from typing import Any, Protocol

import aiohttp
import orjson

from metering.tokens import TokenCounter, encoding_for_model
from proxy.config import Deployment, ProviderConfig

# Errors of the upstream side of a relay (the caller's side raises ConnectionResetError).
UPSTREAM_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError)


class Operation(StrEnum):
    """An upstream API call, named by the API that serves it."""

    CHAT = "chat/completions"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    IMAGES = "images/generations"
    MESSAGES = "messages"  # Anthropic's


class UpstreamReply(Protocol):
    status: int
    content_type: str

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    config: ProviderConfig
    operations: frozenset[Operation]

    @property
    def available(self) -> bool: ...

    def credentials_for(self, deployment: Deployment) -> list[str]: ...

    async def send(
        self,
        operation: Operation,
        deployment: Deployment,
        credential: str,
        body: bytes,
        payload: dict[str, Any],
        headers: Mapping[str, str],
    ) -> UpstreamReply: ...

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


class HTTPUpstream:
    """What every HTTP provider shares: the session, timeouts, credentials in turn."""

    operations: frozenset[Operation] = frozenset()

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}
        self._turn = itertools.count()

    @property
    def available(self) -> bool:
        return self.config.available

    def credentials_for(self, deployment: Deployment) -> list[str]:
        """The credentials to try for a deployment: its own, or all of them, each request
        starting at the next one so that the load spreads over every key."""
        if deployment.credential is not None:
            return [deployment.credential]
        names = list(self.config.credentials)
        if not names:
            return []
        start = next(self._turn) % len(names)
        return names[start:] + names[:start]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # One pooled, keep-alive session per provider, made inside the running loop.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def _timeout(self, deployment: Deployment) -> aiohttp.ClientTimeout:
        key = (deployment.connect_timeout, deployment.read_timeout)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, sock_connect=key[0], sock_read=key[1]
            )
        return timeout

    def url(self, operation: Operation, deployment: Deployment) -> str:
        raise NotImplementedError

    def auth_headers(self, key: str, headers: Mapping[str, str]) -> dict[str, str]:
        raise NotImplementedError

    async def send(
        self,
        operation: Operation,
        deployment: Deployment,
        credential: str,
        body: bytes,
        payload: dict[str, Any],
        headers: Mapping[str, str],
    ) -> UpstreamReply:
        """POST the body; raises what aiohttp raises when the provider cannot be reached."""
        response = await self._client().post(
            self.url(operation, deployment),
            data=body,
            headers=self.auth_headers(self.config.credentials[credential], headers),
            timeout=self._timeout(deployment),
        )
        return HTTPReply(response)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


_OPENAI_OPERATIONS = frozenset(
    {Operation.CHAT, Operation.RESPONSES, Operation.EMBEDDINGS, Operation.IMAGES}
)


class OpenAIUpstream(HTTPUpstream):
    """Any server speaking OpenAI's API under `base_url` (OpenAI, vLLM, Ollama, Groq, ...)."""

    operations = _OPENAI_OPERATIONS

    def url(self, operation: Operation, deployment: Deployment) -> str:
        return f"{self.config.base_url}/{operation.value}"

    def auth_headers(self, key: str, headers: Mapping[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


class AzureUpstream(HTTPUpstream):
    """Azure OpenAI: a URL per deployment, `api-version`, and the `api-key` header."""

    operations = _OPENAI_OPERATIONS

    def url(self, operation: Operation, deployment: Deployment) -> str:
        query = f"api-version={self.config.api_version}"
        if operation is Operation.RESPONSES:  # one endpoint; the deployment is the model
            return f"{self.config.base_url}/openai/responses?{query}"
        path = f"openai/deployments/{deployment.upstream}/{operation.value}"
        return f"{self.config.base_url}/{path}?{query}"

    def auth_headers(self, key: str, headers: Mapping[str, str]) -> dict[str, str]:
        return {"api-key": key, "Content-Type": "application/json"}


class AnthropicUpstream(HTTPUpstream):
    """Anthropic's Messages API; the caller's anthropic-version and -beta pass through."""

    operations = frozenset({Operation.MESSAGES})

    def url(self, operation: Operation, deployment: Deployment) -> str:
        return f"{self.config.base_url}/v1/messages"

    def auth_headers(self, key: str, headers: Mapping[str, str]) -> dict[str, str]:
        sent = {
            "x-api-key": key,
            "anthropic-version": headers.get("anthropic-version") or self.config.anthropic_version,
            "Content-Type": "application/json",
        }
        if beta := headers.get("anthropic-beta"):
            sent["anthropic-beta"] = beta
        return sent


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
    """The `demo` provider type: a local chat model that needs no network and no key.

    It answers like an OpenAI server (stream or not, usage when asked), so the whole
    gateway, billing included, works with `make run` alone.
    """

    operations = frozenset({Operation.CHAT})

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    @property
    def available(self) -> bool:
        return True

    def credentials_for(self, deployment: Deployment) -> list[str]:
        return [""]

    async def send(
        self,
        operation: Operation,
        deployment: Deployment,
        credential: str,
        body: bytes,
        payload: dict[str, Any],
        headers: Mapping[str, str],
    ) -> UpstreamReply:
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


_TYPES: dict[str, type[HTTPUpstream] | type[DemoUpstream]] = {
    "openai": OpenAIUpstream,
    "azure": AzureUpstream,
    "anthropic": AnthropicUpstream,
    "demo": DemoUpstream,
}


def make_upstream(config: ProviderConfig) -> Upstream:
    return _TYPES[config.type](config)
