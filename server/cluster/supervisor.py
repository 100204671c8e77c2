"""`make up`: one host's replicas and its Envoy, kept running.

Replica k is `python -m server serve --replica k`, a process of its own (no
fork after gRPC objects exist), listening on `settings.replica_address(k)`.
The supervisor hands each the gateway secret on its stdin, waits until every
replica answers gRPC health checks, then starts Envoy with all of them as
endpoints (Envoy's own health checks take a dead one out). A replica that
exits is started again (after 1 s, doubling to 30 s while it keeps failing);
its slot recovers its own leftovers at start. Every child dies with the
supervisor, even if it is killed with SIGKILL (parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.gateway import die_with_parent, run_envoy
from server.settings import Settings

log = logging.getLogger(__name__)

READY_TIMEOUT = 600.0  # seconds: a first start may build runtime images
RESTART_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_AFTER = 60.0  # seconds up before a replica's restart delay starts over
STOP_TIMEOUT = 45.0


class Replica:
    """One replica process, started (and started again) by the supervisor."""

    def __init__(self, settings: Settings, index: int, gateway_secret: str):
        self.settings = settings
        self.index = index
        self.address = settings.replica_address(index)
        self.secret = gateway_secret
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.failures = 0

    async def start(self) -> None:
        argv = [sys.executable, "-m", "server", "serve", "--replica", str(self.index), "--gateway-secret-on-stdin"]
        self.process = await asyncio.create_subprocess_exec(*die_with_parent(argv), stdin=asyncio.subprocess.PIPE)
        self.process.stdin.write(self.secret.encode() + b"\n")
        await self.process.stdin.drain()
        self.process.stdin.close()
        self.started = time.monotonic()
        log.info("replica started", extra={"replica": self.index, "pid": self.process.pid, "address": self.address})

    async def ready(self, timeout: float) -> bool:
        """True once it answers SERVING; False if it exited or `timeout` passed."""
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline and self.process.returncode is None:
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        return False

    def restart_delay(self) -> float:
        if time.monotonic() - self.started > STABLE_AFTER:
            self.failures = 0
        delay = RESTART_DELAYS[min(self.failures, len(RESTART_DELAYS) - 1)]
        self.failures += 1
        return delay

    async def stop(self, timeout: float) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("replica did not stop in time: killed", extra={"replica": self.index})
            self.process.kill()
            await self.process.wait()


def prepare(settings: Settings) -> None:
    """What the replicas would otherwise race for, once: the data directory,
    the schema (and SQLite's WAL mode, which needs the database alone), the
    JWT secret and the bootstrap key. Blocking."""
    from server.app import ensure_bootstrap_key, jwt_secret, secure_data_dir
    from server.store import close_database, open_database

    secure_data_dir(settings)
    open_database(settings.database_url, settings.sqlite_path)
    try:
        jwt_secret(settings)
        ensure_bootstrap_key(settings)
    finally:
        close_database()


async def supervise(settings: Settings, gateway_secret: str, stop: asyncio.Event) -> int:
    """Run the replicas and Envoy until `stop` is set (or Envoy exits). Returns the exit code."""
    await asyncio.to_thread(prepare, settings)
    replicas = [Replica(settings, i, gateway_secret) for i in range(settings.replica_count)]
    for replica in replicas:
        await replica.start()
    readiness = await asyncio.gather(*(r.ready(READY_TIMEOUT) for r in replicas))
    if not all(readiness):
        log.error("replicas failed to start", extra={"failed": [r.index for r, ok in zip(replicas, readiness) if not ok]})
        await asyncio.gather(*(r.stop(10) for r in replicas))
        return 1
    envoy = await run_envoy(settings, settings.data_dir / "run", gateway_secret, [r.address for r in replicas])
    print(
        f"Functions service on http://{settings.host}:{settings.port}/v1 with {len(replicas)} replicas "
        f"(bootstrap key: {settings.bootstrap_key_path.resolve()}). Ctrl-C stops it.",
        file=sys.stderr, flush=True,
    )
    keepers = [asyncio.create_task(_keep_running(r, stop)) for r in replicas]
    envoy_exit = asyncio.create_task(envoy.wait())
    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait({envoy_exit, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if envoy_exit.done():
        log.error("gateway exited", extra={"returncode": envoy.returncode})
        code = 1
    stop.set()
    for keeper in keepers:
        keeper.cancel()
    await asyncio.gather(*keepers, return_exceptions=True)
    if envoy.returncode is None:  # first: no new requests while the replicas finish theirs
        envoy.terminate()
        try:
            await asyncio.wait_for(envoy.wait(), 10)
        except asyncio.TimeoutError:
            envoy.kill()
    await asyncio.gather(*(r.stop(STOP_TIMEOUT) for r in replicas))
    stop_wait.cancel()
    return code


async def _keep_running(replica: Replica, stop: asyncio.Event) -> None:
    while not stop.is_set():
        code = await replica.process.wait()
        if stop.is_set():
            return
        delay = replica.restart_delay()
        log.error("replica exited; starting it again", extra={"replica": replica.index, "returncode": code, "delay": delay})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
        await replica.start()
