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
    assert model.upstream == "m"
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
        ("a: [unclosed\n", "(top level)", "not valid YAML"),
    ],
)
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
