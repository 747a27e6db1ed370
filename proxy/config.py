"""config.yaml: loaded, interpolated and validated once, at start-up.

A bad file stops the program with the file, the key path and the reason. Strings may use
`${VAR}` and `${VAR:-default}`. Decimals load as `Decimal`, never as floats, so rates are
exactly what the file says.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from billing.money import credits_to_micro, parse_decimal
from billing.rates import ImageRate, ModelRate, Rate, TextRate
from metering.tokens import ENCODING_NAMES, encoding_for_model

PROVIDER_TYPES = ("openai", "anthropic", "azure", "demo")
REGISTRATION_MODES = ("admin", "trusted_header", "signup")
MODEL_TYPES = ("text", "embedding", "image")
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MISSING: Any = object()


class ConfigError(Exception):
    def __init__(self, file: Path | str, path: str, reason: str) -> None:
        super().__init__(f"{file}: {path or '(top level)'}: {reason}")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str
    port: int
    max_body_bytes: int
    hold_ttl_seconds: float
    auth_cache_seconds: float  # how long a revoked key may still work on another process
    workers: int  # processes sharing the port


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str  # empty: the embedded server in embedded_dir
    embedded_dir: Path
    pool_size: int


@dataclass(frozen=True, slots=True)
class CreditsConfig:
    starter: int  # micro-credits granted to each new account
    purchase_link: str


@dataclass(frozen=True, slots=True)
class AdminConfig:
    tokens: tuple[str, ...]  # empty: the admin API is off


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    modes: frozenset[str]
    header: str  # trusted_header: the header that names the user
    trusted_sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    signups_per_hour: int  # per client address
    group: str  # the group of accounts made by trusted_header and signup


@dataclass(frozen=True, slots=True)
class StripeConfig:
    webhook_secrets: tuple[str, ...]  # several while a secret is being rolled
    credits_per_unit: dict[str, Decimal]  # currency -> credits per major unit paid
    tolerance_seconds: int


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    account_labels: bool  # export per-account series (one per account: mind cardinality)
    ledger_interval_seconds: float  # how often the ledger-wide gauges are read


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str
    credentials: dict[str, str]  # name -> API key; `api_key` alone is named "default"
    connect_timeout: float
    read_timeout: float
    chunk_delay: float  # demo: seconds between streamed chunks
    api_version: str  # azure: the api-version query parameter
    anthropic_version: str  # anthropic: sent when the caller sends none

    @property
    def available(self) -> bool:
        return self.type == "demo" or bool(self.credentials)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One upstream that can serve a model: a provider, its name for the model there, and
    optionally the one credential to use (else the provider's credentials take turns)."""

    provider: str
    upstream: str
    credential: str | None
    weight: float
    cost: Rate  # what the operator pays here: the model's cost unless overridden
    connect_timeout: float
    read_timeout: float

    @property
    def name(self) -> str:
        name = f"{self.provider}/{self.upstream}"
        return f"{name}#{self.credential}" if self.credential else name


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    retries: int  # further attempts on the same deployment before failing over
    retry_backoff: float  # seconds before the first retry; doubled for each next one
    failures_before_cooldown: int  # consecutive failures that cool a deployment down
    cooldown_seconds: float


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    type: str
    deployments: tuple[Deployment, ...]
    rate: ModelRate  # its cost is the default cost of the deployments
    encoding: str
    max_output_tokens: int  # the hold's output estimate when a request sets none

    @property
    def provider(self) -> str:
        """The first deployment's provider: the model's label before one is chosen."""
        return self.deployments[0].provider


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    server: ServerConfig
    database: DatabaseConfig
    credits: CreditsConfig
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    routing: RoutingConfig
    groups: tuple[str, ...]
    admin: AdminConfig
    registration: RegistrationConfig
    stripe: StripeConfig
    metrics: MetricsConfig


class _DecimalLoader(yaml.SafeLoader):
    """SafeLoader that reads decimals as Decimal: 0.1 stays exactly one tenth."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    try:
        return Decimal(str(text).replace("_", ""))
    except InvalidOperation:
        return loader.construct_yaml_float(node)


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


class _Section:
    """A mapping in the file, which knows its key path for error messages."""

    def __init__(self, file: Path, path: str, data: Any) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(file, path, f"expected a mapping, got {type(data).__name__}")
        self.file, self.path, self.data = file, path, data
        self._read: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.file, self.key_path(key), reason)

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self._read.add(key)
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, "required")
        return default

    def section(self, key: str) -> _Section:
        return _Section(self.file, self.key_path(key), self.raw(key, {}))

    def string(self, key: str, default: Any = _MISSING) -> str:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
            raise self.error(key, f"expected a string, got {type(value).__name__}")
        return str(value)

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def number(self, key: str, default: Any, *, minimum: float, integer: bool = False) -> Any:
        value = self.raw(key, default)
        try:
            if isinstance(value, bool):
                raise ValueError
            number = Decimal(str(value).strip())
            if integer and number != number.to_integral_value():
                raise ValueError
        except (InvalidOperation, ValueError):
            kind = "a whole number" if integer else "a number"
            raise self.error(key, f"expected {kind}, got {value!r}") from None
        if number < Decimal(str(minimum)):  # exactly as written, not as a float
            raise self.error(key, f"must be at least {minimum}, got {value!r}")
        return int(number) if integer else float(number)

    def strings(self, key: str, default: Any = _MISSING) -> tuple[str, ...]:
        """A list of strings (one string is a list of one); empty strings are dropped."""
        value = self.raw(key, default)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise self.error(key, "expected a list of strings")
        return tuple(item for item in items if item)

    def credits(self, key: str, default: Any) -> int:
        try:
            return credits_to_micro(self.raw(key, default))
        except ValueError as err:
            raise self.error(key, str(err)) from None

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _interpolate(value: Any, file: Path, path: str) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is None:
                raise ConfigError(file, path, f"environment variable {name} is not set")
            return default

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {
            k: _interpolate(v, file, f"{path}.{k}" if path else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, file, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def default_config_path() -> Path:
    return Path(os.environ.get("CREDITGATE_CONFIG") or "config.yaml")


def load_config(path: Path | str) -> Config:
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as err:
        raise ConfigError(file, "", f"cannot read: {err.strerror}") from None
    try:
        data = yaml.load(text, Loader=_DecimalLoader)
    except yaml.YAMLError as err:
        raise ConfigError(file, "", f"not valid YAML: {err}") from None
    top = _Section(file, "", _interpolate(data, file, ""))
    base_dir = file.resolve().parent

    server = top.section("server")
    server_config = ServerConfig(
        host=server.string("host", "127.0.0.1"),
        port=server.number("port", 8080, minimum=0, integer=True),
        max_body_bytes=int(server.number("max_body_mb", 32, minimum=0.001) * 1024 * 1024),
        hold_ttl_seconds=server.number("hold_ttl_seconds", 120, minimum=10),
        auth_cache_seconds=server.number("auth_cache_seconds", 5, minimum=0),
        workers=server.number("workers", 1, minimum=1, integer=True),
    )
    server.finish()

    database = top.section("database")
    database_config = DatabaseConfig(
        url=database.string("url", ""),
        embedded_dir=base_dir / database.string("embedded_dir", "var/pgdata"),
        pool_size=database.number("pool_size", 10, minimum=1, integer=True),
    )
    database.finish()

    credits = top.section("credits")
    credits_config = CreditsConfig(
        starter=credits.credits("starter", 0),
        purchase_link=credits.string("purchase_link", ""),
    )
    credits.finish()

    groups = top.strings("groups", ["default"])
    if "default" not in groups:
        groups = ("default", *groups)
    providers = {name: _provider(top, name) for name in top.section("providers").data}
    top.raw("providers", {})
    models = {name: _model(top, name, providers, groups) for name in top.section("models").data}
    top.raw("models", {})

    admin = top.section("admin")
    admin_config = AdminConfig(tokens=admin.strings("tokens", []))
    admin.finish()

    metrics = top.section("metrics")
    labels = metrics.raw("account_labels", False)
    if not isinstance(labels, bool):
        raise metrics.error("account_labels", "true or false")
    metrics_config = MetricsConfig(
        account_labels=labels,
        ledger_interval_seconds=metrics.number("ledger_interval_seconds", 15, minimum=1),
    )
    metrics.finish()

    routing = top.section("routing")
    routing_config = RoutingConfig(
        retries=routing.number("retries", 1, minimum=0, integer=True),
        retry_backoff=routing.number("retry_backoff_ms", 100, minimum=0) / 1000,
        failures_before_cooldown=routing.number(
            "failures_before_cooldown", 3, minimum=1, integer=True
        ),
        cooldown_seconds=routing.number("cooldown_seconds", 30, minimum=0),
    )
    routing.finish()

    registration_config = _registration(top.section("registration"), groups)
    stripe_config = _stripe(top.section("stripe"))
    top.finish()
    return Config(
        path=file,
        server=server_config,
        database=database_config,
        credits=credits_config,
        providers=providers,
        models=models,
        routing=routing_config,
        groups=groups,
        admin=admin_config,
        registration=registration_config,
        stripe=stripe_config,
        metrics=metrics_config,
    )


def _registration(section: _Section, groups: tuple[str, ...]) -> RegistrationConfig:
    modes = section.strings("modes", ["admin"])
    for mode in modes:
        if mode not in REGISTRATION_MODES:
            raise section.error("modes", f"{mode!r} is not one of {', '.join(REGISTRATION_MODES)}")
    trusted = section.section("trusted_header")
    sources = []
    for source in trusted.strings("trusted_sources", ["127.0.0.1/32", "::1/128"]):
        try:
            sources.append(ipaddress.ip_network(source, strict=False))
        except ValueError as err:
            raise trusted.error("trusted_sources", str(err)) from None
    header = trusted.string("header", "X-Forwarded-User")
    trusted.finish()
    signup = section.section("signup")
    per_hour = signup.number("per_address_per_hour", 5, minimum=1, integer=True)
    signup.finish()
    group = section.string("group", "default")
    if group not in groups:
        raise section.error("group", f"{group!r} is not listed under groups")
    section.finish()
    return RegistrationConfig(frozenset(modes), header, tuple(sources), per_hour, group)


def _stripe(section: _Section) -> StripeConfig:
    rates = section.section("credits_per_unit")
    per_unit = {}
    for currency in rates.data:
        try:
            per_unit[str(currency).lower()] = parse_decimal(rates.raw(currency))
        except ValueError as err:
            raise rates.error(currency, str(err)) from None
    rates.finish()
    config = StripeConfig(
        webhook_secrets=section.strings("webhook_secret", []),
        credits_per_unit=per_unit,
        tolerance_seconds=section.number("tolerance_seconds", 300, minimum=1, integer=True),
    )
    section.finish()
    return config


def _provider(top: _Section, name: str) -> ProviderConfig:
    section = top.section("providers").section(name)
    kind = section.choice("type", PROVIDER_TYPES)
    credentials = {}
    api_key = section.string("api_key", "")
    if api_key:
        credentials["default"] = api_key
    named = section.section("credentials")
    for credential in named.data:
        if credential in credentials:
            raise named.error(credential, "the name 'default' is api_key's")
        key = named.string(credential)
        if key:  # an unset ${VAR:-} leaves a credential out
            credentials[str(credential)] = key
    named.finish()
    config = ProviderConfig(
        name=name,
        type=kind,
        base_url=section.string("base_url", "" if kind == "demo" else _MISSING).rstrip("/"),
        credentials=credentials,
        connect_timeout=section.number("connect_timeout", 10, minimum=0.001),
        read_timeout=section.number("read_timeout", 300, minimum=0.001),
        chunk_delay=section.number("chunk_delay_ms", 20 if kind == "demo" else 0, minimum=0) / 1000,
        api_version=section.string("api_version", _MISSING if kind == "azure" else ""),
        anthropic_version=section.string("anthropic_version", DEFAULT_ANTHROPIC_VERSION),
    )
    section.finish()
    return config


def _rate(section: _Section, key: str, model_type: str) -> Rate:
    try:
        table = section.raw(key)
        if model_type == "image":
            return ImageRate.parse(table)
        return TextRate.parse(table, output_required=model_type == "text")
    except KeyError as err:
        raise section.error(f"{key}.{err.args[0]}", "required") from None
    except ValueError as err:
        raise section.error(key, str(err)) from None


def _deployment(
    section: _Section,
    providers: dict[str, ProviderConfig],
    default_upstream: str,
    cost: Rate,
    model_type: str,
) -> Deployment:
    provider_name = section.string("provider")
    provider = providers.get(provider_name)
    if provider is None:
        raise section.error("provider", f"no provider named {provider_name!r} under providers")
    credential = section.string("credential", "") or None
    if credential is not None and credential not in provider.credentials:
        raise section.error(
            "credential", f"provider {provider_name!r} has no credential named {credential!r}"
        )
    return Deployment(
        provider=provider_name,
        upstream=section.string("upstream", default_upstream),
        credential=credential,
        weight=section.number("weight", 1, minimum=0.001),
        cost=_rate(section, "cost", model_type) if "cost" in section.data else cost,
        connect_timeout=section.number("connect_timeout", provider.connect_timeout, minimum=0.001),
        read_timeout=section.number("read_timeout", provider.read_timeout, minimum=0.001),
    )


def _model(
    top: _Section, name: str, providers: dict[str, ProviderConfig], groups: tuple[str, ...]
) -> ModelConfig:
    section = top.section("models").section(name)
    model_type = section.choice("type", MODEL_TYPES, "text")
    cost, price = _rate(section, "cost", model_type), _rate(section, "price", model_type)
    if "deployments" in section.data:
        for key in ("provider", "upstream", "credential"):
            if key in section.data:
                raise section.error(key, "give it in each of the deployments instead")
        listed = section.raw("deployments")
        if not isinstance(listed, list) or not listed:
            raise section.error("deployments", "expected a non-empty list")
        entries = []
        for index, item in enumerate(listed):
            entry = _Section(section.file, f"{section.key_path('deployments')}[{index}]", item)
            entries.append(_deployment(entry, providers, name, cost, model_type))
            entry.finish()
        deployments = tuple(entries)
    else:  # the model's own provider, upstream and timeouts are its one deployment
        deployments = (_deployment(section, providers, name, cost, model_type),)
    group_prices = section.section("groups")
    for group in group_prices.data:
        if group not in groups:
            raise group_prices.error(group, f"{group!r} is not listed under groups")
    tiers = {group: _rate(group_prices, group, model_type) for group in group_prices.data}
    section.raw("groups", {})
    encoding = section.string("encoding", encoding_for_model(deployments[0].upstream))
    if encoding not in ENCODING_NAMES:
        raise section.error("encoding", f"{encoding!r} is not one of {sorted(ENCODING_NAMES)}")
    config = ModelConfig(
        name=name,
        type=model_type,
        deployments=deployments,
        rate=ModelRate(cost=cost, price=price, groups=tiers),
        encoding=encoding,
        max_output_tokens=section.number("max_output_tokens", 4096, minimum=1, integer=True),
    )
    section.finish()
    return config
