"""A real Prometheus scrapes a running creditgate: every dashboard query returns data, and
the counters agree with the ledger; with two workers, /metrics is the sum over both."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from tests.conftest import _admin, _with_database
from tests.fake_upstream import FakeUpstream
from tests.test_cli import REPO, free_port
from tests.test_dashboards import DASHBOARDS

PROMETHEUS = shutil.which("prometheus")
ADMIN = "metrics-admin-token"

CONFIG = """
server: {{host: 127.0.0.1, port: {port}, workers: {workers}}}
database: {{url: "{database_url}"}}
credits: {{starter: "1", purchase_link: "https://buy.stripe.com/test_m"}}
admin: {{tokens: ["{admin}"]}}
groups: [default, pro]
registration: {{modes: [admin, signup], signup: {{per_address_per_hour: 2}}}}
metrics: {{ledger_interval_seconds: 1}}
providers:
  fake: {{type: openai, base_url: "{upstream}/v1", api_key: sk-fake}}
models:
  gpt-4o-mini:
    provider: fake
    cost:  {{input: "0.15", output: "0.60"}}
    price: {{input: "0.30", output: "1.20"}}
    groups: {{pro: {{input: "0.25", output: "1.00"}}}}
  pricey:
    provider: fake
    cost:  {{input: "1", output: "1"}}
    price: {{input: "5000", output: "5000"}}
  img:
    provider: fake
    type: image
    cost:  {{image: "0.04"}}
    price: {{image: "0.05"}}
"""


@pytest.fixture
def fresh_database(server_url: str):
    """A database of this test's own: the ledger holds exactly its traffic."""
    name = f"creditgate_metrics_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    yield _with_database(server_url, name)
    asyncio.run(_admin(server_url, f'DROP DATABASE "{name}" WITH (FORCE)'))


class Gateway:
    """`creditgate serve` in a process of its own, in front of a fake provider."""

    def __init__(self, tmp_path: Path, database_url: str, upstream: str, workers: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp_path / "config.yaml"
        config.write_text(
            CONFIG.format(
                port=self.port,
                workers=workers,
                database_url=database_url,
                admin=ADMIN,
                upstream=upstream,
            )
        )
        self.log = tmp_path / "creditgate.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
            cwd=REPO,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        )

    async def ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(300):
            try:
                async with session.get(f"{self.url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        pytest.fail(f"creditgate did not start: {self.log.read_text()}")

    async def listening(self, workers: int) -> None:
        """Until every worker has bound the port (before that the kernel has fewer)."""
        for _ in range(300):
            if self.log.read_text().count("creditgate listening") >= workers:
                return
            await asyncio.sleep(0.1)
        pytest.fail(f"not all {workers} workers started: {self.log.read_text()}")

    async def account(self, session, group: str = "default", credits: str = "10") -> str:
        async with session.post(
            f"{self.url}/admin/v1/accounts",
            headers={"Authorization": f"Bearer {ADMIN}"},
            json={"name": f"m-{uuid.uuid4().hex[:8]}", "group": group, "credits": credits},
        ) as response:
            assert response.status == 201
            return (await response.json())["api_key"]

    async def chat(self, session, key: str, model: str = "gpt-4o-mini", **extra) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        async with session.post(
            f"{self.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}", "Connection": "close"},
        ) as response:
            await response.read()
            return response.status

    async def metric_sum(self, session, name: str) -> float:
        async with session.get(f"{self.url}/metrics") as response:
            text = await response.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((name + "{", name + " "))
        )

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.log.read_text()


async def drive_mixed_traffic(
    gateway: Gateway, fake: FakeUpstream, session: aiohttp.ClientSession
) -> int:
    """Every outcome the dashboards show; returns how many API requests were made."""
    key = await gateway.account(session)
    pro = await gateway.account(session, group="pro")
    broke = await gateway.account(session, credits="0")
    statuses = []
    for _ in range(3):
        statuses.append(await gateway.chat(session, key, stream=True))
    statuses.append(await gateway.chat(session, pro))
    statuses.append(
        await gateway.chat(session, pro, stream=True, stream_options={"include_usage": True})
    )
    fake.report_usage = False  # counted by tiktoken
    statuses.append(await gateway.chat(session, key, stream=True))
    fake.report_usage = True
    statuses.append(await gateway.chat(session, broke, model="pricey"))  # 402
    statuses.append(await gateway.chat(session, key, model="no-such-model"))  # rejected
    fake.status, fake.error_body = 500, b'{"error": {"message": "boom"}}'
    statuses.append(await gateway.chat(session, key))  # upstream error
    fake.status = 200
    fake.pieces, fake.delay = [" hello"] * 50, 0.02
    async with session.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        await response.content.readany()  # then the caller goes away
    statuses.append(499)
    fake.delay = 0
    async with session.post(
        f"{gateway.url}/v1/images/generations",
        json={"model": "img", "prompt": "a cat", "n": 2},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        statuses.append(response.status)
    for _ in range(3):  # the third is rate-limited
        async with session.post(f"{gateway.url}/v1/signup", json={}) as response:
            await response.read()
    assert statuses.count(200) == 7 and 402 in statuses and 404 in statuses
    return len(statuses)


class Prometheus:
    def __init__(self, tmp_path: Path, target_port: int) -> None:
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: creditgate\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "prometheus.log").open("wb"),
        )
        self.url = f"http://127.0.0.1:{self.port}"

    async def query(self, session: aiohttp.ClientSession, expr: str) -> list:
        async with session.get(f"{self.url}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return body["data"]["result"]

    async def value(self, session, expr: str) -> float | None:
        result = await self.query(session, expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def panel_queries() -> list[tuple[str, str]]:
    queries = []
    for path in DASHBOARDS:
        board = orjson.loads(path.read_bytes())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = re.sub(r'"\$(model|provider|group)"', '".*"', target["expr"])
                queries.append(
                    (f"{path.stem}: {panel['title']}", expr.replace("$__rate_interval", "20s"))
                )
    return queries


@pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus (.ci/run installs it)")
async def test_every_panel_query_returns_data_and_counters_match_the_ledger(
    aiohttp_server, fresh_database, tmp_path
):
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    gateway = Gateway(tmp_path, fresh_database, str(server.make_url("")).rstrip("/"))
    prometheus = None
    try:
        async with aiohttp.ClientSession() as session:
            await gateway.ready(session)
            prometheus = Prometheus(tmp_path, gateway.port)
            requests = await drive_mixed_traffic(gateway, fake, session)
            total = "sum(creditgate_requests_total)"
            for _ in range(200):  # until Prometheus has scraped it all, a few times
                if await prometheus.value(session, total) == requests:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(4)
            assert await prometheus.value(session, total) == requests

            empty = []
            for title, expr in panel_queries():
                if not await prometheus.query(session, expr):
                    empty.append(f"{title}: {expr}")
            assert not empty, "queries without data:\n" + "\n".join(empty)

            ledger = await asyncpg.connect(fresh_database)
            try:
                sums = await ledger.fetchrow(
                    "SELECT sum(credits) AS credits, sum(input_tokens) AS input,"
                    " sum(output_tokens) AS output, sum(cached_tokens) AS cached,"
                    " sum(reasoning_tokens) AS reasoning FROM charges"
                )
            finally:
                await ledger.close()
            charged = await prometheus.value(session, "sum(creditgate_credits_charged_total)")
            # Float sums of micro-credit amounts: equal to far better than a micro-credit.
            assert abs(Decimal(str(charged)) - Decimal(sums["credits"]) / 1_000_000) < Decimal(
                "1e-9"
            )
            for kind in ("input", "output", "cached", "reasoning"):
                counted = await prometheus.value(
                    session, f'sum(creditgate_tokens_total{{kind="{kind}"}})'
                )
                assert counted == sums[kind], kind
    finally:
        if prometheus is not None:
            prometheus.stop()
        gateway.stop()


async def test_two_workers_report_the_sum_and_survive_a_worker_restart(
    aiohttp_server, fresh_database, tmp_path
):
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    gateway = Gateway(tmp_path, fresh_database, str(server.make_url("")).rstrip("/"), workers=2)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            await gateway.ready(s)
            await gateway.listening(2)
            key = await gateway.account(s)
            statuses = await asyncio.gather(*(gateway.chat(s, key) for _ in range(40)))
            assert statuses == [200] * 40
            await asyncio.sleep(0.5)  # the last settlements
            sums = {await gateway.metric_sum(s, "creditgate_requests_total") for _ in range(10)}
            assert sums == {40.0}, "every worker's /metrics must report the sum over both"
            pids = set(re.findall(r'"pid":(\d+)', gateway.log.read_text()))
            assert len(pids) == 2, "both workers should have served requests"

            os.kill(int(sorted(pids)[0]), signal.SIGKILL)  # a worker dies; it is restarted
            await gateway.listening(3)  # the replacement has bound the port too
            assert await gateway.chat(s, key) == 200
            await asyncio.sleep(0.5)
            sums = {await gateway.metric_sum(s, "creditgate_requests_total") for _ in range(10)}
            assert sums == {41.0}, "counters must not go backwards when a worker restarts"
    finally:
        log = gateway.stop()
    assert "restarting it" in log
