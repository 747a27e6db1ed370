"""config.yaml: interpolation, exact decimals, and errors naming the file, key and reason."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent

MINIMAL = """
providers:
  p: {type: openai, base_url: "${UPSTREAM:-http://127.0.0.1:9}/v1/", api_key: "${KEY}"}
models:
  m:
    provider: p
    cost:  {input: 0.1, output: "0.2"}
    price: {input: 0.3, output: 1.2}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_shipped_config_loads():
    config = load_config(REPO / "config.yaml")
    assert config.models["demo"].provider == "local"
    assert config.models["gpt-4o-mini"].encoding == "o200k_base"
    assert config.credits.starter == 5_000_000


def test_interpolation_defaults_and_exact_decimals(tmp_path, monkeypatch):
    monkeypatch.setenv("KEY", "sk-123")
    monkeypatch.delenv("UPSTREAM", raising=False)
    config = load_config(write(tmp_path, MINIMAL))
    provider = config.providers["p"]
    assert provider.credentials == {"default": "sk-123"}
    assert provider.base_url == "http://127.0.0.1:9/v1"
    model = config.models["m"]
    assert model.deployments[0].upstream == "m"
    assert model.rate.cost.input == Decimal("0.1")  # unquoted, yet not a float
    assert model.rate.price.output == Decimal("1.2")
    assert config.database.embedded_dir == tmp_path / "var" / "pgdata"
    assert config.server.max_body_bytes == 32 * 1024 * 1024


@pytest.mark.parametrize(
    "text,where,reason",
    [
        (MINIMAL.replace('"${KEY}"', '"${NOPE}"'), "providers.p.api_key", "NOPE is not set"),
        (MINIMAL.replace("type: openai", "type: nope"), "providers.p.type", "not one of"),
        (MINIMAL.replace("provider: p", "provider: q"), "models.m.provider", "no provider"),
        (MINIMAL.replace('output: "0.2"', 'output: "abc"'), "models.m.cost", "not a decimal"),
        (MINIMAL.replace(', output: "0.2"', ""), "models.m.cost.output", "required"),
        (MINIMAL + "server: {port: eighty}\n", "server.port", "whole number"),
        (MINIMAL + "server: {colour: red}\n", "server.colour", "unknown key"),
        (MINIMAL + "credits: {starter: '0.0000001'}\n", "credits.starter", "micro-credit"),
        (
            MINIMAL.replace("    provider: p", "    provider: p\n    encoding: r50k"),
            "models.m.encoding",
            "not one of",
        ),
        ("models: [1, 2]\n", "models", "expected a mapping"),
        (MINIMAL + "routing: {retries: -1}\n", "routing.retries", "at least 0"),
        (MINIMAL.replace("    provider: p", "    provider: p\n    type: audio"),
         "models.m.type", "not one of"),
        (MINIMAL.replace("    provider: p", "    provider: p\n    credential: x"),
         "models.m.credential", "no credential named 'x'"),
        (MINIMAL.replace("    provider: p", "    provider: p\n    deployments: [{provider: p}]"),
         "models.m.provider", "in each of the deployments"),
        (MINIMAL.replace("    provider: p", "    deployments: []"),
         "models.m.deployments", "non-empty list"),
        (MINIMAL.replace("    provider: p", "    deployments: [{provider: p, weight: 0}]"),
         "models.m.deployments[0].weight", "at least"),
        (MINIMAL.replace("    provider: p", "    deployments: [{provider: q}]"),
         "models.m.deployments[0].provider", "no provider named 'q'"),
        (MINIMAL.replace("    provider: p", "    deployments: [{provider: p, colour: red}]"),
         "models.m.deployments[0].colour", "unknown key"),
        (MINIMAL.replace("type: openai", "type: azure"), "providers.p.api_version", "required"),
        (MINIMAL.replace('output: "0.2"', 'output: "0.2", cached_input: 1, cache_read: 1'),
         "models.m.cost", "the same rate"),
        (MINIMAL.replace("    provider: p", "    provider: p\n    type: image"),
         "models.m.cost", "unknown rate keys"),
        (MINIMAL.replace("    provider: p", "    provider: p\n    type: image")
         .replace('{input: 0.1, output: "0.2"}', "{image: 0.04, sizes: 3}"),
         "models.m.cost", "expected a mapping of sizes"),
        ("a: [unclosed\n", "(top level)", "not valid YAML"),
    ],
)  # fmt: skip
def test_errors_name_file_key_and_reason(tmp_path, monkeypatch, text, where, reason):
    monkeypatch.setenv("KEY", "k")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {where}: ")
    assert reason in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


ROUTED = """
providers:
  p: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key: k}
  az:
    type: azure
    base_url: "https://x.openai.azure.com"
    api_version: "2024-10-21"
    credentials: {first: k1, second: k2, unset: "${UNSET_KEY:-}"}
models:
  routed:
    deployments:
      - {provider: p, upstream: a, weight: 3, read_timeout: 5}
      - {provider: az, upstream: b, credential: second, cost: {input: 1, output: 2}}
    cost: {input: 2, output: 8, cached_input: 1}
    price: {input: 3, output: 12, reasoning: 20}
  emb: {provider: p, type: embedding, cost: {input: "0.02"}, price: {input: "0.03"}}
  img: {provider: p, type: image, cost: {image: "0.04"}, price: {image: "0.05"}}
"""


def test_deployments_credentials_and_rate_types(tmp_path, monkeypatch):
    monkeypatch.delenv("UNSET_KEY", raising=False)
    config = load_config(write(tmp_path, ROUTED))
    assert config.providers["az"].credentials == {"first": "k1", "second": "k2"}
    first, second = config.models["routed"].deployments
    assert (first.provider, first.upstream, first.weight, first.read_timeout) == ("p", "a", 3, 5)
    assert first.cost.cached_input == Decimal("1")  # the model's cost
    assert (second.credential, second.cost.input, second.name) == ("second", 1, "az/b#second")
    price = config.models["routed"].rate.price
    assert (price.cached_input, price.cache_write, price.reasoning) == (3, 3, 20)
    assert config.models["emb"].rate.price.output == 0
    assert config.models["img"].rate.price.image == Decimal("0.05")
