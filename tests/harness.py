"""Starts the real service for tests: the gRPC server and Envoy, as
subprocesses, on free loopback ports, with data in a temporary directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import requests

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> int:
    """A port that is free with the `count - 1` after it (replica k listens on port + k)."""
    for _ in range(100):
        base = free_port()
        try:
            for port in range(base + 1, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports found")


@dataclass
class Service:
    """A running service: REST at `url`, gRPC at `grpc_address`."""

    data_dir: Path
    port: int
    grpc_address: str
    env: dict
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def bootstrap_key(self) -> str:
        return (self.data_dir / "bootstrap-key").read_text().strip()

    def headers(self, project: str = "default", key: str | None = None) -> dict:
        return {"X-Appwrite-Project": project, "X-Appwrite-Key": key if key is not None else self.bootstrap_key}

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.grpc_address)
        return self._channel

    def gateway_channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "server", *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60
        )

    def start(self, timeout: float = 30) -> "Service":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "service.log"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "up"], cwd=REPO, env=self.env, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited: {self.log()}")
            try:
                r = requests.get(f"{self.url}/functions/runtimes", headers=self.headers(), timeout=2)
                if r.status_code < 500:
                    return self
            except (requests.ConnectionError, FileNotFoundError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service did not become ready: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path and self.log_path.exists() else ""

    def create_key(self, project: str, scopes: str = "") -> str:
        args = ["create-key", project] + (["--scopes", scopes] if scopes else [])
        result = self.cli(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def create_project(self, project: str) -> None:
        result = self.cli("create-project", project)
        assert result.returncode == 0, result.stderr


def make_service(tmp: Path, **env_overrides: str) -> Service:
    port = free_port()
    data_dir = tmp / "data"
    grpc_address = f"unix:{tmp / 'grpc.sock'}"
    env = dict(os.environ)
    env.update(
        FUNCTIONS_DATA_DIR=str(data_dir),
        FUNCTIONS_PORT=str(port),
        FUNCTIONS_GRPC_ADDRESS=grpc_address,
        FUNCTIONS_LOG_LEVEL="INFO",
    )
    env.update(env_overrides)
    return Service(data_dir=data_dir, port=port, grpc_address=grpc_address, env=env)


def error_of(response: requests.Response) -> dict:
    """The Appwrite error body, checked for shape."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) >= {"message", "code", "type", "version"}, body
    assert body["code"] == response.status_code, body
    return body


def poll(read, done, timeout: float = 60, interval: float = 0.05):
    """Call `read()` until `done(value)`; returns (value, the distinct states seen)."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        value = read()
        state = value.get("status") if isinstance(value, dict) else value
        if not seen or seen[-1] != state:
            seen.append(state)
        if done(value):
            return value, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"still {seen} after {timeout} s")
        time.sleep(interval)
