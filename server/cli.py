"""Command line: run the service and administer projects and keys.

    python -m server up                       the replicas + Envoy gateway (make up)
    python -m server serve [--replica K]      one replica's gRPC server only
    python -m server create-project ID [--name NAME]
    python -m server create-key PROJECT [--name NAME] [--scopes a,b]
    python -m server settings                 the settings table (Markdown)
    python -m server runtimes [--all] [IDS]   build the runtime images ahead of time (make runtimes)
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


def _build_runtimes(settings: Settings, selection: list[str]) -> int:
    """Build the selected runtimes' images (in parallel, progress on stderr); 1 if any failed."""
    import time

    import docker

    from server.domain.runtimes import RuntimeCatalog, load_catalog
    from server.engine import RuntimeImages
    from server.engine.engine import RUNTIMES_DIR

    catalog = RuntimeCatalog(load_catalog(settings.runtime_catalog, settings.image_overrides),
                             allowed=selection or settings.runtimes)
    wanted = catalog.configured()
    if not wanted:
        print(f"no runtime matches {','.join(selection or settings.runtimes)}", file=sys.stderr)
        return 1
    started = time.monotonic()
    results = RuntimeImages(docker.from_env(), RUNTIMES_DIR, work_dir=settings.data_dir.resolve() / "tmp").ensure_all(
        wanted, progress=lambda line: print(line, file=sys.stderr, flush=True))
    for runtime_id, outcome in results.items():
        print(f"{runtime_id}\t{'failed: ' + str(outcome) if isinstance(outcome, Exception) else outcome}")
    print(f"{len(wanted)} runtimes in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 1 if any(isinstance(v, Exception) for v in results.values()) else 0


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
    images = sub.add_parser("runtimes", help="build (or pull) runtime images ahead of time")
    images.add_argument("runtime", nargs="*", help="runtime IDs or language names (default: FUNCTIONS_RUNTIMES)")
    images.add_argument("--all", action="store_true", help="every runtime that has a recipe or an image override")
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
    if args.command == "runtimes":
        return _build_runtimes(settings, ["all"] if args.all else args.runtime)

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
