"""The `creditgate` command: serve the gateway, manage accounts.

Every subcommand reads the same config (`--config`, else $CREDITGATE_CONFIG, else
./config.yaml) and so the same database as the server, the embedded one included.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from aiohttp import web

from billing.database import open_pool, resolve_url
from billing.ledger import AccountExists, Ledger
from billing.money import credits_to_micro, micro_to_credits
from proxy.config import Config, ConfigError, default_config_path, load_config


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $CREDITGATE_CONFIG, else ./config.yaml)",
    )
    parser = argparse.ArgumentParser(prog="creditgate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host", help="address to listen on (default: server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port)")

    accounts = commands.add_parser("accounts", help="manage accounts")
    account_commands = accounts.add_subparsers(dest="action", required=True)
    create = account_commands.add_parser(
        "create", parents=[common], help="create an account; prints its API key"
    )
    create.add_argument("name")
    create.add_argument("--credits", default="0", help="initial credits, on top of the starter")
    create.add_argument("--group", default="default", help="customer group (pricing tier)")
    show = account_commands.add_parser("show", parents=[common], help="show an account")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config or default_config_path())
    except ConfigError as err:
        print(f"creditgate: bad config: {err}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(config, args.host, args.port)
    action = {"create": _create_account, "show": _show_account}[args.action]
    return asyncio.run(_with_ledger(config, lambda ledger: action(ledger, config, args)))


def serve(config: Config, host: str | None, port: int | None) -> int:
    from proxy.app import create_app

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("creditgate").setLevel(logging.INFO)  # one JSON line per request
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(
            _serve(create_app(config), host or config.server.host, port or config.server.port)
        )
    return 0


async def _serve(app: web.Application, host: str, port: int) -> None:
    # Cancel a handler whose caller went away, so its upstream stops and it settles at once.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=10)
    await site.start()
    logging.getLogger("creditgate").info("creditgate listening on http://%s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def _with_ledger(config: Config, action: Callable[[Ledger], Awaitable[int]]) -> int:
    url = await resolve_url(config.database.url, config.database.embedded_dir)
    pool = await open_pool(url, min_size=1, max_size=2)
    try:
        return await action(Ledger(pool))
    finally:
        await pool.close()


async def _create_account(ledger: Ledger, config: Config, args: argparse.Namespace) -> int:
    try:
        credits = credits_to_micro(args.credits)
    except ValueError as err:
        print(f"creditgate: --credits: {err}", file=sys.stderr)
        return 2
    try:
        _, key = await ledger.create_account(
            args.name, group=args.group, starter=config.credits.starter, credits=credits
        )
    except AccountExists:
        print(f"creditgate: an account named {args.name!r} exists already", file=sys.stderr)
        return 1
    print(key)
    return 0


async def _show_account(ledger: Ledger, config: Config, args: argparse.Namespace) -> int:
    account = await ledger.summary(args.name)
    if account is None:
        print(f"creditgate: no account named {args.name!r}", file=sys.stderr)
        return 1
    view = {
        "id": account.id,
        "name": account.name,
        "group": account.group,
        "balance": micro_to_credits(account.balance),
        "pending": micro_to_credits(account.pending),
        "total_granted": micro_to_credits(account.total_granted),
        "total_purchased": micro_to_credits(account.total_purchased),
        "total_spent": micro_to_credits(account.total_spent),
        "created_at": account.created_at.isoformat(),
        "last_used_at": account.last_used_at.isoformat() if account.last_used_at else None,
    }
    if args.json:
        print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
    else:
        for key, value in view.items():
            print(f"{key:16} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
