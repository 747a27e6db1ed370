"""The aiohttp gateway: routes, auth, upstream clients, SSE relay and the CLI."""
