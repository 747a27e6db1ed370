"""The OpenAPI 3.1 document of the admin API, served at /admin/v1/openapi.json."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

_MONEY = {"type": "string", "pattern": r"^-?\d+(\.\d{1,6})?$", "examples": ["12.5"]}
_TIME = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "data": {"type": "array", "items": _ref(item)},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                },
            }
        },
    },
    "Account": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "group": {"type": "string"},
            "disabled": {"type": "boolean"},
            "balance": _MONEY,
            "pending": _MONEY,
            "total_granted": _MONEY,
            "total_purchased": _MONEY,
            "total_spent": _MONEY,
            "purchase_link": {"type": ["string", "null"]},
            "created_at": _TIME,
            "last_used_at": _TIME,
        },
    },
    "AccountCreate": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "group": {"type": "string"}, "credits": _MONEY},
    },
    "AccountCreated": {
        "allOf": [
            _ref("Account"),
            {
                "type": "object",
                "properties": {"api_key": {"type": "string", "description": "shown once"}},
            },
        ]
    },
    "AccountUpdate": {
        "type": "object",
        "properties": {"group": {"type": "string"}, "disabled": {"type": "boolean"}},
    },
    "Key": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "account_id": {"type": "integer"},
            "prefix": {"type": "string"},
            "created_at": _TIME,
            "revoked_at": _TIME,
        },
    },
    "KeyCreated": {
        "allOf": [
            _ref("Key"),
            {
                "type": "object",
                "properties": {"key": {"type": "string", "description": "shown once"}},
            },
        ]
    },
    "Grant": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "account_id": {"type": "integer"},
            "amount": _MONEY,
            "source": {"enum": ["starter", "purchase", "admin"]},
            "reason": {"type": ["string", "null"]},
            "reference": {"type": ["string", "null"]},
            "created_at": _TIME,
        },
    },
    "GrantCreate": {
        "type": "object",
        "required": ["amount", "reason"],
        "properties": {"amount": _MONEY, "reason": {"type": "string"}},
    },
    "Charge": {
        "type": "object",
        "properties": {
            "request_id": {"type": "string"},
            "account_id": {"type": "integer"},
            "group": {"type": "string"},
            "model": {"type": "string"},
            "provider": {"type": "string"},
            "upstream_model": {"type": "string"},
            **{
                name: {"type": "integer"}
                for name in (
                    "input_tokens",
                    "output_tokens",
                    "cached_tokens",
                    "reasoning_tokens",
                    "cache_write_tokens",
                    "images",
                    "http_status",
                )
            },
            "credits": _MONEY,
            "provider_cost": _MONEY,
            "price_input": {"type": "string"},
            "price_output": {"type": "string"},
            "prices": {
                "type": "object",
                "description": "Every price that applied, in credits (per 1M tokens or per image)",
            },
            "endpoint": {"type": "string"},
            "deployment": {"type": "string", "description": "provider/upstream that served it"},
            "usage_source": {"enum": ["upstream", "counted", "none"]},
            "outcome": {"type": "string"},
            "started_at": _TIME,
            "ended_at": _TIME,
        },
    },
    "Usage": {
        "type": "object",
        "properties": {
            "by": {"enum": ["model", "day"]},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "requests": {"type": "integer"},
                        "input_tokens": {"type": "integer"},
                        "output_tokens": {"type": "integer"},
                        "credits": _MONEY,
                        "provider_cost": _MONEY,
                        "margin": _MONEY,
                    },
                },
            },
        },
    },
    "Settings": {
        "type": "object",
        "properties": {"purchase_link": {"type": "string"}, "starter": _MONEY},
    },
    "Payment": {
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "type": {"type": "string"},
            "session_id": {"type": ["string", "null"]},
            "account_ref": {"type": ["string", "null"]},
            "amount": {"type": ["integer", "null"]},
            "currency": {"type": ["string", "null"]},
            "credits": {"type": ["string", "null"]},
            "status": {"type": "string"},
            "detail": {"type": ["string", "null"]},
            "received_at": _TIME,
        },
    },
}

_PAGE_PARAMS = [
    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
]
_CHARGE_FILTERS = [
    {"name": name, "in": "query", "schema": schema}
    for name, schema in (
        ("account", {"type": "integer"}),
        ("model", {"type": "string"}),
        ("provider", {"type": "string"}),
        ("outcome", {"type": "string"}),
        ("since", {"type": "string", "format": "date-time"}),
        ("until", {"type": "string", "format": "date-time"}),
    )
]
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}]

# (method, path, summary, parameters, request schema, status, response schema)
OPERATIONS: list[tuple[str, str, str, list[Any], str | None, str, dict[str, Any]]] = [
    (
        "post",
        "/accounts",
        "Create an account and its first key",
        [],
        "AccountCreate",
        "201",
        _ref("AccountCreated"),
    ),
    (
        "get",
        "/accounts",
        "List accounts",
        [
            {"name": "q", "in": "query", "schema": {"type": "string"}},
            {"name": "group", "in": "query", "schema": {"type": "string"}},
            *_PAGE_PARAMS,
        ],
        None,
        "200",
        _page("Account"),
    ),
    ("get", "/accounts/{id}", "Get an account", _ID, None, "200", _ref("Account")),
    (
        "patch",
        "/accounts/{id}",
        "Change an account's group, or disable it",
        _ID,
        "AccountUpdate",
        "200",
        _ref("Account"),
    ),
    (
        "post",
        "/accounts/{id}/keys",
        "Create a key (the secret is shown once)",
        _ID,
        None,
        "201",
        _ref("KeyCreated"),
    ),
    ("get", "/accounts/{id}/keys", "List an account's keys", _ID, None, "200", _page("Key")),
    (
        "delete",
        "/keys/{key_id}",
        "Revoke a key",
        [{"name": "key_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
        None,
        "200",
        _ref("Key"),
    ),
    (
        "post",
        "/accounts/{id}/grants",
        "Grant or remove credits",
        _ID,
        "GrantCreate",
        "201",
        _ref("Grant"),
    ),
    (
        "get",
        "/accounts/{id}/grants",
        "List an account's grants",
        [*_ID, *_PAGE_PARAMS],
        None,
        "200",
        _page("Grant"),
    ),
    ("get", "/grants", "List all grants", _PAGE_PARAMS, None, "200", _page("Grant")),
    (
        "get",
        "/charges",
        "List charges, newest first",
        [*_CHARGE_FILTERS, *_PAGE_PARAMS],
        None,
        "200",
        _page("Charge"),
    ),
    ("get", "/charges.csv", "Charges as CSV", _CHARGE_FILTERS, None, "200", {"type": "string"}),
    (
        "get",
        "/usage",
        "Usage summed by model or by day",
        [
            {"name": "by", "in": "query", "schema": {"enum": ["model", "day"]}},
            {"name": "account", "in": "query", "schema": {"type": "integer"}},
        ],
        None,
        "200",
        _ref("Usage"),
    ),
    ("get", "/settings", "Read the runtime settings", [], None, "200", _ref("Settings")),
    ("patch", "/settings", "Change the runtime settings", [], "Settings", "200", _ref("Settings")),
    ("post", "/reload", "Reload config.yaml", [], None, "200", {"type": "object"}),
    (
        "get",
        "/payments",
        "Stripe events received",
        [{"name": "status", "in": "query", "schema": {"type": "string"}}, *_PAGE_PARAMS],
        None,
        "200",
        _page("Payment"),
    ),
]

_ERRORS = {
    status: {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
    for status, text in (
        ("401", "no or wrong admin token"),
        ("404", "no such object"),
        ("422", "a field is invalid; `param` names it"),
    )
}


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, parameters, body, status, response in OPERATIONS:
        media = "text/csv" if path.endswith(".csv") else "application/json"
        operation: dict[str, Any] = {
            "summary": summary,
            "parameters": parameters,
            "responses": {
                status: {"description": summary, "content": {media: {"schema": response}}},
                **_ERRORS,
            },
        }
        if body:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(body)}},
            }
        paths.setdefault(f"/admin/v1{path}", {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "creditgate admin API", "version": "1"},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"adminToken": []}],
        "paths": paths,
    }
