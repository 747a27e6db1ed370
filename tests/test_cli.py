"""The command line and `creditgate serve`, run as a user would, README examples included."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.request import Request, urlopen

import orjson
import pytest

from billing.money import credits_to_micro
from metering.tokens import TokenCounter
from proxy.upstream import DEMO_ANSWER

REPO = Path(__file__).resolve().parent.parent
CREDITGATE = [sys.executable, "-m", "proxy.cli"]

CONFIG = """
server: {{host: 127.0.0.1, port: {port}}}
database: {{url: "{url}", embedded_dir: "{embedded}"}}
credits: {{starter: "5", purchase_link: "https://buy.stripe.com/test_x"}}
providers:
  local: {{type: demo, chunk_delay_ms: {delay}}}
models:
  demo:
    provider: local
    cost:  {{input: "0", output: "0"}}
    price: {{input: "1", output: "2"}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CREDITGATE, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=check,
        timeout=120,
    )


@pytest.fixture(params=["configured", "embedded"])
def config_path(request, tmp_path: Path, database_url: str) -> Path:
    """A config on the test database, or on an embedded server of its own."""
    url = database_url if request.param == "configured" else ""
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(port=free_port(), url=url, embedded=tmp_path / "pg", delay=0))
    return path


def test_accounts_create_prints_only_the_key_and_show_prints_exact_credits(config_path):
    name = f"cli-{time.time_ns()}"
    created = cli(config_path, "accounts", "create", name, "--credits", "12.5")
    assert re.fullmatch(r"cg-[A-Za-z0-9_-]{43}\n", created.stdout)
    shown = orjson.loads(cli(config_path, "accounts", "show", name, "--json").stdout)
    assert shown["balance"] == "17.5"
    assert shown["pending"] == "0"
    assert shown["total_granted"] == "17.5"

    again = cli(config_path, "accounts", "create", name, check=False)
    assert again.returncode == 1 and "exists" in again.stderr and again.stdout == ""
    missing = cli(config_path, "accounts", "show", "nobody-" + name, "--json", check=False)
    assert missing.returncode == 1 and "no account" in missing.stderr


def test_bad_config_stops_with_file_key_and_reason(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        CONFIG.format(port=0, url="", embedded="x", delay=0).replace('input: "1"', "input: x")
    )
    result = cli(path, "accounts", "show", "a", check=False)
    assert result.returncode == 2
    assert f"{path}: models.demo.price: not a decimal number" in result.stderr


def start_server(env: dict[str, str], port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [*CREDITGATE, "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    for _ in range(300):
        try:
            with urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    pytest.fail(f"creditgate serve did not start: {server.communicate()[0]!r}")


def _readme_block(language: str, index: int = 0) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return blocks[index]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's example uses curl")
def test_serve_runs_the_readme_examples_and_shares_the_cli_ledger(config_path, tmp_path):
    port = int(re.search(r"port: (\d+)", config_path.read_text()).group(1))
    env = {**os.environ, "CREDITGATE_CONFIG": str(config_path)}
    server = start_server(env, port)
    try:
        # The README's shell example, as written but for the port and the account name.
        bin_dir = tmp_path / "bin"
        (bin_dir / ".venv" / "bin").mkdir(parents=True)
        shim = bin_dir / ".venv" / "bin" / "creditgate"
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m proxy.cli "$@"\n')
        shim.chmod(0o755)
        name = f"readme-{time.time_ns()}"
        script = _readme_block("bash", 1).replace("8080", str(port)).replace("alice", name)
        script = script.replace(".venv/bin/creditgate", str(shim))
        shell = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script + '\necho "KEY=$CREDITGATE_KEY"'],
            capture_output=True,
            text=True,
            env={**env, "PYTHONPATH": str(REPO)},
            cwd=REPO,
            timeout=60,
            check=True,
        )
        assert "data: [DONE]" in shell.stdout
        assert "creditgate demo model" in "".join(
            orjson.loads(line[6:])["choices"][0]["delta"].get("content", "")
            for line in shell.stdout.splitlines()
            if line.startswith("data: {")
        )
        key = shell.stdout.rsplit("KEY=", 1)[1].strip()

        # The README's SDK example.
        example = _readme_block("python").replace("8080", str(port))
        sdk = subprocess.run(
            [sys.executable, "-c", example],
            capture_output=True,
            text=True,
            env={**env, "CREDITGATE_KEY": key},
            timeout=60,
            check=True,
        )
        assert sdk.stdout.startswith("Hello! This is the creditgate demo model.")

        # The CLI sees what the server charged: two paid requests, no open hold.
        shown = orjson.loads(cli(config_path, "accounts", "show", name, "--json").stdout)
        assert shown["pending"] == "0"
        assert shown["total_granted"] == "15"
        counter = TokenCounter("cl100k_base")
        prompt = counter.count_messages([{"role": "user", "content": "Hi"}])
        output = counter.count(DEMO_ANSWER)
        per_request = prompt * 1 + output * 2  # micro-credits at the demo's price
        assert credits_to_micro(shown["balance"]) == 15_000_000 - 2 * per_request
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert b"creditgate listening" in output


@dataclass
class DemoServer:
    """`creditgate serve` on the demo model, and one account's name and key."""

    config_path: Path
    port: int
    name: str
    key: str
    process: subprocess.Popen

    def chat(self, *, stream: bool = False) -> Request:
        return Request(
            f"http://127.0.0.1:{self.port}/v1/chat/completions",
            data=orjson.dumps(
                {"model": "demo", "stream": stream, "messages": [{"role": "user", "content": "x"}]}
            ),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )

    def spent(self) -> int:
        shown = orjson.loads(cli(self.config_path, "accounts", "show", self.name, "--json").stdout)
        return credits_to_micro(shown["total_spent"])


def demo_server(tmp_path: Path, database_url: str, *, delay: int) -> DemoServer:
    port = free_port()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        CONFIG.format(port=port, url=database_url, embedded=tmp_path / "pg", delay=delay)
    )
    name = f"served-{time.time_ns()}"
    key = cli(config_path, "accounts", "create", name).stdout.strip()
    process = start_server({**os.environ, "CREDITGATE_CONFIG": str(config_path)}, port)
    return DemoServer(config_path, port, name, key, process)


def test_sigterm_mid_stream_settles_before_exit(tmp_path, database_url):
    # The demo streams 34 tokens 100 ms apart: the stream is still running at SIGTERM.
    served = demo_server(tmp_path, database_url, delay=100)
    server, config_path, name = served.process, served.config_path, served.name
    try:
        with urlopen(served.chat(stream=True), timeout=30) as response:
            assert response.readline().startswith(b"data: ")
            server.send_signal(signal.SIGTERM)
            rest = response.read()  # the stream may finish or be cut; either way it is paid
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
    shown = orjson.loads(cli(config_path, "accounts", "show", name, "--json").stdout)
    assert shown["pending"] == "0"
    assert credits_to_micro(shown["total_spent"]) > 0
    assert credits_to_micro(shown["balance"]) == 5_000_000 - credits_to_micro(shown["total_spent"])
    assert rest.endswith(b"data: [DONE]\n\n")  # graceful: the open stream was let finish


def test_operator_commands_cover_keys_grants_and_charges(config_path):
    name = f"ops-{time.time_ns()}"
    created = orjson.loads(cli(config_path, "accounts", "create", name, "--json").stdout)
    assert created["api_key"].startswith("cg-") and created["purchase_link"].endswith(
        f"client_reference_id={created['id']}"
    )
    shown = orjson.loads(cli(config_path, "accounts", "show", name, "--json").stdout)
    assert shown["id"] == created["id"] and shown["purchase_link"] == created["purchase_link"]

    grant = orjson.loads(
        cli(config_path, "grants", "create", name, "2.5", "--reason", "welcome", "--json").stdout
    )
    assert (grant["amount"], grant["source"]) == ("2.5", "admin")
    refused = cli(config_path, "grants", "create", name, "-100", "--reason", "no", check=False)
    assert refused.returncode == 1 and "below zero" in refused.stderr
    grants = orjson.loads(cli(config_path, "grants", "list", name, "--json").stdout)
    assert [g["source"] for g in grants] == ["admin", "starter"]

    key = cli(config_path, "keys", "create", name).stdout.strip()
    keys = orjson.loads(cli(config_path, "keys", "list", name, "--json").stdout)
    assert [k["prefix"] for k in keys][-1] == key[:10]
    revoked = orjson.loads(cli(config_path, "keys", "revoke", str(keys[-1]["id"]), "--json").stdout)
    assert revoked["revoked_at"]

    updated = orjson.loads(
        cli(config_path, "accounts", "update", name, "--disable", "--json").stdout
    )
    assert updated["disabled"] is True
    listed = orjson.loads(cli(config_path, "accounts", "list", "--search", name, "--json").stdout)
    assert [a["name"] for a in listed] == [name]
    bad_group = cli(config_path, "accounts", "update", name, "--group", "gold", check=False)
    assert bad_group.returncode == 2 and "no group" in bad_group.stderr

    charges = cli(config_path, "charges", "list", "--account", name, "--csv").stdout
    assert charges.splitlines()[0].startswith("request_id,account_id,group,model")


def test_sighup_reloads_rates_and_keeps_serving(tmp_path, database_url):
    served = demo_server(tmp_path, database_url, delay=0)
    server, config_path, spent = served.process, served.config_path, served.spent

    def chat() -> None:
        with urlopen(served.chat(), timeout=30) as response:
            assert response.status == 200

    try:
        chat()
        first = spent()
        config_path.write_text(config_path.read_text().replace('input: "1"', 'input: "1001"'))
        server.send_signal(signal.SIGHUP)
        time.sleep(1)
        chat()
        prompt = TokenCounter("cl100k_base").count_messages([{"role": "user", "content": "x"}])
        assert spent() - first == first + prompt * 1000  # the input price rose by 1000
        config_path.write_text(config_path.read_text().replace('"1001"', '"lots"'))
        server.send_signal(signal.SIGHUP)
        time.sleep(1)
        chat()  # still served, at the last good rate
        assert server.poll() is None
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert b"config not reloaded" in output and b"models.demo.price" in output
