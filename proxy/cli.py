"""The `creditgate` command: serve the gateway, manage accounts.

Every subcommand reads the same config (`--config`, else $CREDITGATE_CONFIG, else
./config.yaml) and so the same database as the server, the embedded one included.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from billing.accounts import Account, AccountExists
from billing.database import open_pool, resolve_url
from billing.money import credits_to_micro
from billing.reports import ChargeFilter, list_charges
from proxy.config import Config, ConfigError, default_config_path, load_config
from proxy.gateway import GATEWAY, Gateway
from proxy.views import account_view, charge_view, charges_csv, grant_view, key_view


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $CREDITGATE_CONFIG, else ./config.yaml)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")
    parser = argparse.ArgumentParser(prog="creditgate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host", help="address to listen on (default: server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port)")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes sharing the port (default: server.workers, else 1)",
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    def group(name: str, help: str) -> argparse._SubParsersAction:
        return commands.add_parser(name, help=help).add_subparsers(dest="action", required=True)

    def action(parent: argparse._SubParsersAction, name: str, help: str, *extra: Any):
        return parent.add_parser(name, parents=[common, *extra], help=help)

    accounts = group("accounts", "manage accounts")
    create = action(accounts, "create", "create an account; prints its API key", as_json)
    create.add_argument("name")
    create.add_argument("--credits", default="0", help="initial credits, on top of the starter")
    create.add_argument("--group", default="default", help="customer group (pricing tier)")
    action(accounts, "show", "show an account", as_json).add_argument("name")
    listing = action(accounts, "list", "list accounts", as_json)
    listing.add_argument("--search", help="part of the name")
    listing.add_argument("--group", help="only this group")
    update = action(accounts, "update", "change an account's group or disable it", as_json)
    update.add_argument("name")
    update.add_argument("--group")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--disable", dest="disabled", action="store_const", const=True)
    state.add_argument("--enable", dest="disabled", action="store_const", const=False)

    keys = group("keys", "manage API keys")
    action(keys, "create", "a new key for an account; prints it", as_json).add_argument("account")
    action(keys, "list", "an account's keys (prefixes only)", as_json).add_argument("account")
    action(keys, "revoke", "revoke a key by its id", as_json).add_argument("key_id", type=int)

    grants = group("grants", "grant or remove credits, list grants")
    grant = action(grants, "create", "a manual grant (negative removes credits)", as_json)
    grant.add_argument("account")
    grant.add_argument("amount", help="credits, e.g. 12.5 or -3")
    grant.add_argument("--reason", required=True)
    action(grants, "list", "grants, newest first", as_json).add_argument("account", nargs="?")

    charges = group("charges", "the credit transactions")
    listing = action(charges, "list", "charges, newest first", as_json)
    listing.add_argument("--account", help="account name")
    listing.add_argument("--model")
    listing.add_argument("--provider")
    listing.add_argument("--outcome")
    listing.add_argument("--since", type=datetime.fromisoformat, help="RFC 3339 time")
    listing.add_argument("--until", type=datetime.fromisoformat, help="RFC 3339 time")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--csv", action="store_true", help="print CSV")
    return parser


class CLIError(Exception):
    """A message for the operator and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config or default_config_path())
    except ConfigError as err:
        print(f"creditgate: bad config: {err}", file=sys.stderr)
        return 2
    if args.command == "serve":
        host, port = args.host or config.server.host, args.port or config.server.port
        workers = args.workers or config.server.workers
        if workers > 1 and not args.worker:
            from proxy.workers import supervise

            logging.basicConfig(level=logging.INFO, format="%(message)s")
            return supervise(config, host, port, workers)
        return serve(config, host, port, reuse_port=args.worker)
    try:
        return asyncio.run(_run(config, _ACTIONS[args.command, args.action], args))
    except CLIError as err:
        print(f"creditgate: {err}", file=sys.stderr)
        return err.status


SHUTDOWN_SECONDS = 10.0  # how long open streams may run on after SIGTERM


def serve(config: Config, host: str, port: int, *, reuse_port: bool = False) -> int:
    from proxy.app import create_app
    from proxy.logs import configure_server_logging

    configure_server_logging()
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(create_app(config), host, port, reuse_port))
    return 0


async def _serve(app: web.Application, host: str, port: int, reuse_port: bool) -> None:
    # Cancel a handler whose caller went away, so its upstream stops and it settles at once.
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    await site.start()
    logging.getLogger("creditgate").info(
        "creditgate listening on http://%s:%d (pid %d)", host, port, os.getpid()
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def reload_soon() -> None:
        task = loop.create_task(_reload(app))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_soon)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def _reload(app: web.Application) -> None:
    """SIGHUP: read config.yaml again; a bad file is logged and the running config kept."""
    try:
        await app[GATEWAY].reload()
    except ConfigError as err:
        logging.getLogger("creditgate").error("config not reloaded: %s", err)


async def _run(
    config: Config,
    action: Callable[[Gateway, argparse.Namespace], Awaitable[Any]],
    args: argparse.Namespace,
) -> int:
    url = await resolve_url(config.database.url, config.database.embedded_dir)
    pool = await open_pool(url, min_size=1, max_size=2)
    try:
        gateway = Gateway(config, pool)
        await gateway.refresh_settings()
        result = await action(gateway, args)
    finally:
        await pool.close()
    if isinstance(result, str):
        print(result)
    elif getattr(args, "json", False):
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    elif isinstance(result, list):
        for item in result:
            print("\t".join("" if v is None else str(v) for v in item.values()))
    else:
        for key, value in result.items():
            print(f"{key:16} {value}")
    return 0


def _credits(text: str, option: str, *, allow_negative: bool = False) -> int:
    try:
        return credits_to_micro(text, allow_negative=allow_negative)
    except ValueError as err:
        raise CLIError(f"{option}: {err}", 2) from None


async def _account(gateway: Gateway, name: str) -> Account:
    account = await gateway.accounts.get_by_name(name)
    if account is None:
        raise CLIError(f"no account named {name!r}")
    return account


def _group(gateway: Gateway, group: str) -> str:
    if group not in gateway.config.groups:
        raise CLIError(f"no group {group!r}; groups: {', '.join(gateway.config.groups)}", 2)
    return group


async def _accounts_create(gateway: Gateway, args: argparse.Namespace) -> Any:
    try:
        account, key = await gateway.accounts.create(
            args.name,
            group=_group(gateway, args.group),
            starter=gateway.settings.starter,
            credits=_credits(args.credits, "--credits"),
        )
    except AccountExists:
        raise CLIError(f"an account named {args.name!r} exists already") from None
    if args.json:
        return {**account_view(account, gateway.purchase_link(account.id)), "api_key": key}
    return key  # the only line on standard output, for scripts


async def _accounts_show(gateway: Gateway, args: argparse.Namespace) -> Any:
    account = await _account(gateway, args.name)
    return account_view(account, gateway.purchase_link(account.id))


async def _accounts_list(gateway: Gateway, args: argparse.Namespace) -> Any:
    found, after = [], 0
    while page := await gateway.accounts.list(
        search=args.search, group=args.group, after_id=after, limit=500
    ):
        found += [account_view(a, gateway.purchase_link(a.id)) for a in page]
        after = page[-1].id
    return found


async def _accounts_update(gateway: Gateway, args: argparse.Namespace) -> Any:
    account = await _account(gateway, args.name)
    group = _group(gateway, args.group) if args.group else None
    updated = await gateway.accounts.update(account.id, group=group, disabled=args.disabled)
    return account_view(updated, gateway.purchase_link(account.id))


async def _keys_create(gateway: Gateway, args: argparse.Namespace) -> Any:
    account = await _account(gateway, args.account)
    key, secret = await gateway.accounts.create_key(account.id)
    return {**key_view(key), "key": secret} if args.json else secret


async def _keys_list(gateway: Gateway, args: argparse.Namespace) -> Any:
    account = await _account(gateway, args.account)
    return [key_view(key) for key in await gateway.accounts.list_keys(account.id)]


async def _keys_revoke(gateway: Gateway, args: argparse.Namespace) -> Any:
    revoked = await gateway.accounts.revoke_key(args.key_id)
    if revoked is None:
        raise CLIError(f"no key with id {args.key_id}")
    return key_view(revoked[0])


async def _grants_create(gateway: Gateway, args: argparse.Namespace) -> Any:
    account = await _account(gateway, args.account)
    amount = _credits(args.amount, "amount", allow_negative=True)
    if not amount:
        raise CLIError("amount: must not be zero", 2)
    grant = await gateway.ledger.adjust(account.id, amount, args.reason)
    if grant is None:
        raise CLIError("the grant would take the account's free balance below zero")
    return grant_view(grant)


async def _grants_list(gateway: Gateway, args: argparse.Namespace) -> Any:
    account_id = (await _account(gateway, args.account)).id if args.account else None
    grants = await gateway.accounts.list_grants(account_id=account_id, before_id=None, limit=10_000)
    return [grant_view(grant) for grant in grants]


async def _charges_list(gateway: Gateway, args: argparse.Namespace) -> Any:
    account_id = (await _account(gateway, args.account)).id if args.account else None
    where = ChargeFilter(
        account_id, args.model, args.provider, args.outcome, args.since, args.until
    )
    rows = [
        charge_view(row)
        for row in await list_charges(gateway.pool, where, before=None, limit=args.limit)
    ]
    return charges_csv(rows) if args.csv else rows


_ACTIONS: dict[tuple[str, str], Callable[[Gateway, argparse.Namespace], Awaitable[Any]]] = {
    ("accounts", "create"): _accounts_create,
    ("accounts", "show"): _accounts_show,
    ("accounts", "list"): _accounts_list,
    ("accounts", "update"): _accounts_update,
    ("keys", "create"): _keys_create,
    ("keys", "list"): _keys_list,
    ("keys", "revoke"): _keys_revoke,
    ("grants", "create"): _grants_create,
    ("grants", "list"): _grants_list,
    ("charges", "list"): _charges_list,
}


if __name__ == "__main__":
    sys.exit(main())
