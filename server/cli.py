"""Command line: run the service and administer projects and keys.

    python -m server up                       the replicas + Envoy gateway (make up)
    python -m server serve [--replica K]      one replica's gRPC server only
    python -m server create-project ID [--name NAME]
    python -m server create-key PROJECT [--name NAME] [--scopes a,b]
    python -m server settings                 the settings table (Markdown)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys

from server import logs
from server.settings import Settings

log = logging.getLogger("server")


async def _up(settings: Settings) -> int:
    from server.cluster.supervisor import supervise

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway_secret = secrets.token_hex(32)  # per start: only this Envoy (and its replicas) know it
    return await supervise(settings, gateway_secret, stop)


def _open_store(settings: Settings) -> None:
    from server.store import open_database

    open_database(settings.database_url, settings.sqlite_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description="Functions service")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the gRPC server and the Envoy gateway")
    serve_cmd = sub.add_parser("serve", help="run one replica: its gRPC server only")
    serve_cmd.add_argument("--replica", type=int, default=0, help="slot of this host (`up` runs 0..FUNCTIONS_REPLICAS-1)")
    serve_cmd.add_argument("--gateway-secret-on-stdin", action="store_true", help="read the gateway's secret from stdin (`up` does)")
    project = sub.add_parser("create-project", help="create a project")
    project.add_argument("project_id")
    project.add_argument("--name", default="")
    key = sub.add_parser("create-key", help="create an API key and print its secret")
    key.add_argument("project_id")
    key.add_argument("--name", default="operator")
    key.add_argument("--scopes", default=None, help="comma-separated; left out: all scopes (empty is an error)")
    sub.add_parser("settings", help="print the settings table")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    logs.configure(settings.log_level)
    # Files the service makes (database, keys, packages, builds, sockets) are
    # its own: anything a sandbox must read is opened up explicitly.
    os.umask(0o077)
    if args.command == "up":
        return asyncio.run(_up(settings))
    if args.command == "serve":
        from server.app import serve

        secret = sys.stdin.readline().strip() if args.gateway_secret_on_stdin else ""
        asyncio.run(serve(settings, gateway_secret=secret, replica=args.replica))
        return 0
    if args.command == "settings":
        print(Settings.table())
        return 0

    from server.domain import auth, validation
    from server.domain.errors import ApiError

    _open_store(settings)
    if args.command == "create-project":
        try:
            validation.custom_id("projectId", args.project_id)
        except ApiError as error:
            print(error.message, file=sys.stderr)
            return 2
        auth.create_project(args.project_id, args.name)
        print(args.project_id)
        return 0
    # create-key: the last command argparse lets through
    scopes = auth.ALL_SCOPES if args.scopes is None else tuple(s.strip() for s in args.scopes.split(",") if s.strip())
    try:
        print(auth.create_key(args.project_id, args.name, scopes))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    return 0
