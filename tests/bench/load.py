"""A purpose-built HTTP/1.1 load client: keep-alive connections, each request timed to its
first byte and to its last. Speaks just enough HTTP for these servers (Content-Length
and chunked bodies)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)  # seconds, per request
    first_bytes: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[float, float, int]] | None = None
        self.buffer = bytearray()
        self.first_byte = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.buffer:
            self.first_byte = self.first_byte or time.perf_counter()
        self.buffer += data
        done = _complete(self.buffer)
        if done and self.waiter and not self.waiter.done():
            status = int(self.buffer[9:12])
            del self.buffer[:done]
            self.waiter.set_result((self.first_byte, time.perf_counter(), status))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def request(self, raw: bytes) -> tuple[float, float, int]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.first_byte = 0.0
        self.transport.write(raw)
        return await self.waiter


def _complete(buffer: bytearray) -> int:
    """The length of the first complete response in buffer, or 0."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = bytes(buffer[:end]).lower()
    start = end + 4
    at = head.find(b"content-length:")
    if at >= 0:
        length = int(
            head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else len(head)]
        )
        return start + length if len(buffer) >= start + length else 0
    if b"transfer-encoding: chunked" in head:
        position = start
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return 0
            size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
            position = line_end + 2 + size + 2
            if len(buffer) < position:
                return 0
            if size == 0:
                return position
    return 0


def build_request(host: str, port: int, path: str, body: bytes, key: str | None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def run(
    host: str,
    port: int,
    raw: bytes,
    *,
    connections: int,
    seconds: float,
    max_requests: int | None = None,
) -> Results:
    """Send `raw` on `connections` keep-alive connections for `seconds` (or max_requests)."""
    loop = asyncio.get_running_loop()
    results = Results()
    deadline = time.perf_counter() + seconds
    budget = [max_requests if max_requests is not None else 1 << 62]

    async def worker() -> None:
        _, conn = await loop.create_connection(_Connection, host, port)
        try:
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                sent = time.perf_counter()
                try:
                    first, done, status = await conn.request(raw)
                except ConnectionError:
                    results.errors += 1
                    return
                if status != 200:
                    results.errors += 1
                    continue
                results.latencies.append(done - sent)
                results.first_bytes.append(first - sent)
        finally:
            conn.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    results.elapsed = time.perf_counter() - started
    return results
