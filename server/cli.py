"""Command line: run the service and administer projects and keys.

    python -m server up                       gRPC server + Envoy gateway (make up)
    python -m server serve                    gRPC server only
    python -m server create-project ID [--name NAME]
    python -m server create-key PROJECT [--name NAME] [--scopes a,b]
    python -m server settings                 the settings table (Markdown)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import sys

from server import logs
from server.settings import Settings

log = logging.getLogger("server")


async def _up(settings: Settings) -> int:
    from server.app import serve
    from server.gateway import run_envoy

    stop = asyncio.Event()
    ready = asyncio.Event()
    gateway_secret = secrets.token_hex(32)  # per start: only this Envoy knows it
    grpc_task = asyncio.create_task(serve(settings, ready=ready, stop=stop, gateway_secret=gateway_secret))
    ready_or_failed = asyncio.create_task(ready.wait())
    await asyncio.wait({grpc_task, ready_or_failed}, return_when=asyncio.FIRST_COMPLETED)
    if grpc_task.done():
        ready_or_failed.cancel()
        grpc_task.result()
        return 1
    envoy = await run_envoy(settings, settings.data_dir / "run", gateway_secret)
    envoy_exit = asyncio.create_task(envoy.wait())
    stop_wait = asyncio.create_task(stop.wait())
    print(
        f"Functions service on http://{settings.host}:{settings.port}/v1 "
        f"(bootstrap key: {settings.bootstrap_key_path.resolve()}). Ctrl-C stops it.",
        file=sys.stderr,
        flush=True,
    )
    await asyncio.wait({envoy_exit, stop_wait, grpc_task}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if envoy_exit.done():
        log.error("gateway exited", extra={"returncode": envoy.returncode})
        code = 1
    stop.set()
    if envoy.returncode is None:
        envoy.terminate()
        try:
            await asyncio.wait_for(envoy.wait(), 10)
        except asyncio.TimeoutError:
            envoy.kill()
    with contextlib.suppress(asyncio.CancelledError):
        await grpc_task
    return code


def _open_store(settings: Settings) -> None:
    from server.store import open_database

    open_database(settings.database_url, settings.sqlite_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description="Functions service")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the gRPC server and the Envoy gateway")
    sub.add_parser("serve", help="run the gRPC server only")
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

        asyncio.run(serve(settings))
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
