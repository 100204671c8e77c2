"""Composition root: wires settings, store, domain and servicers into one
grpc.aio server, and runs it until SIGTERM/SIGINT.

Concurrency: the server is asyncio (grpc.aio), so thousands of open streams
(uploads, log subscribers, sync executions waiting on containers) cost a
coroutine each, not a thread. Blocking work (Peewee, Docker SDK, files) runs
on a bounded thread pool (`Blocking`), so it never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import signal
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from functions.v1 import deployment_pb2, event_pb2, execution_pb2, function_pb2, log_pb2, runtime_pb2

from server.api.deployments import DeploymentServicer
from server.api.events import EventServicer
from server.api.executions import ExecutionServicer
from server.api.functions import FunctionServicer
from server.api.logs import LogServicer
from server.api.payloads import event_payload
from server.api.runtimes import RuntimeServicer
from server.api.services import add_service
from server import logs
from server.cluster.identity import ReplicaIdentity, hold_slot, host_id
from server.cluster.membership import Membership
from server.domain import auth
from server.domain.builds import BuildQueue
from server.domain.deployments import DeploymentRules
from server.domain.events import EventBus
from server.domain.livelogs import NOTIFY_CHANNEL, LogHub, ThreadedLog, store_lines
from server.domain.logstreams import LogStreams
from server.domain.executions import ExecutionRules
from server.domain.ratelimit import RateLimiter
from server.domain.runner import ExecutionRunner
from server.domain.schedules import Scheduler
from server.domain.functions import FunctionRules
from server.domain.packages import PackageStore
from server.domain.quotas import MB, StorageQuota
from server.domain.runtimes import RuntimeCatalog, load_catalog
from server.concurrency import Blocking
from server.engine import Engine
from server.engine.engine import AVAILABILITY_REFRESH
from server.engine.invoker import reply_limit
from server.settings import Settings
from server.store import close_database, open_database
from server.store.db import checkpoint, database, is_postgres
from server.jobs import Jobs, OneShot, Periodic, QueueWorkers, Resource
from server.store.batch import BatchWriter
from server.store.notify import Listener

log = logging.getLogger(__name__)

BOOTSTRAP_PROJECT = "default"
SERVICE_NAMES = [
    function_pb2.DESCRIPTOR.services_by_name["FunctionService"].full_name,
    runtime_pb2.DESCRIPTOR.services_by_name["RuntimeService"].full_name,
    deployment_pb2.DESCRIPTOR.services_by_name["DeploymentService"].full_name,
    execution_pb2.DESCRIPTOR.services_by_name["ExecutionService"].full_name,
    event_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    log_pb2.DESCRIPTOR.services_by_name["LogService"].full_name,
]
# Upload pieces from Envoy are at most 1 MiB; gRPC clients may send more.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Request headers: Envoy accepts up to 60 KiB (max_request_headers_kb) and
# adds its own; grpc's default soft limit of 8 KiB refused some of them at
# random with RESOURCE_EXHAUSTED (HTTP 429).
MAX_METADATA_BYTES = 128 * 1024
SCHEDULE_TICK = 0.05  # seconds after a look for due CRON fires before waiting for the next whole second
EXECUTION_SWEEP_INTERVAL = 5.0  # seconds: waiting executions whose wake-up was lost still run
STOP_TIMEOUT = 30.0  # seconds the background jobs get to stop
LOG_FLUSH_INTERVAL = 0.1  # seconds between batched inserts of printed lines (replay, other replicas)


@dataclass
class Components:
    """The wired service, without the network server."""

    settings: Settings
    engine: Engine
    catalog: RuntimeCatalog
    functions: FunctionRules
    deployments: DeploymentRules
    builds: BuildQueue
    executions: ExecutionRules
    events: EventBus


def secure_data_dir(settings: Settings) -> None:
    """The data directory holds the database (function vars are secrets), keys
    and every project's code: only the service's user may enter it. Older
    data directories are tightened too."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    for path in (settings.sqlite_path, settings.jwt_secret_path, settings.bootstrap_key_path):
        for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if candidate.exists():
                os.chmod(candidate, 0o600)


def build_components(settings: Settings, replica: str = "", replica_index: int = 0) -> Components:
    """`replica`: this replica's id (the owner of the work it claims)."""
    if settings.storage not in ("local", "database"):
        raise SystemExit(f"FUNCTIONS_STORAGE={settings.storage!r}: `local` or `database`")
    open_database(settings.database_url, settings.sqlite_path)
    runtimes = load_catalog(settings.runtime_catalog, settings.image_overrides)
    configured = RuntimeCatalog(runtimes, allowed=settings.runtimes).configured()
    engine = Engine.connect(settings, configured, replica_index)
    catalog = RuntimeCatalog(runtimes, allowed=settings.runtimes, is_available=engine.image_available)
    packages = PackageStore(settings.data_dir.resolve(), shared=settings.storage == "database")
    events = EventBus(payload=event_payload)
    functions = FunctionRules(catalog=catalog, max_timeout=settings.max_timeout, vars_max_bytes=settings.vars_max_bytes,
                              events=events)
    quota = StorageQuota(project_bytes=settings.project_storage_mb * MB, pending_uploads=settings.max_pending_uploads,
                         pending_upload_bytes=settings.pending_upload_mb * MB)
    builds = BuildQueue(catalog=catalog, packages=packages, offline=engine.offline_builder, online=engine.online_builder,
                        ensure_image=engine.ensure_image, quota=quota, uncompressed_limit=settings.code_uncompressed_limit,
                        workers_count=settings.build_workers, replica=replica)
    deployments = DeploymentRules(
        functions=functions, packages=packages, code_size_limit=settings.code_size_limit,
        uncompressed_limit=settings.code_uncompressed_limit, build_queued=builds.enqueue, quota=quota, events=events,
    )
    executions = ExecutionRules(functions=functions, catalog=catalog,
                                limiter=RateLimiter(settings.execution_rate_limit), max_waiting=settings.max_waiting,
                                replica=replica, packages=packages, events=events, retries=settings.async_retries)
    events.executions = executions  # executions emit events, and events queue executions
    ensure_bootstrap_key(settings)
    return Components(settings=settings, engine=engine, catalog=catalog, functions=functions,
                      deployments=deployments, builds=builds, executions=executions, events=events)


def connect_engine_hooks(components: Components, loop: asyncio.AbstractEventLoop) -> None:
    """Files and containers follow deployments: removed with them, warmed on activation."""
    engine, executions, packages = components.engine, components.executions, components.deployments.packages

    def function_deleted(fn, deployments) -> None:
        for dep in deployments:
            packages.remove(dep.project, dep.uid, dep.build)
            engine.forget(dep.project, dep.uid, loop)

    components.functions.on_delete.append(function_deleted)
    components.deployments.on_delete.append(lambda dep: engine.forget(dep.project, dep.uid, loop))

    def warm_active(fn) -> None:
        try:
            run = executions.runnable_for_active(fn)
        except Exception:  # nothing to warm (no ready build): not an error
            return
        engine.warm(run, loop)

    components.deployments.on_activate.append(warm_active)
    components.builds.on_ready.append(lambda build, dep, fn: warm_active(fn) if fn.deployment == dep.uid else None)


def jwt_secret(settings: Settings) -> str:
    """FUNCTIONS_JWT_SECRET, else a random secret kept in the data directory."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = settings.jwt_secret_path
    if not path.exists():
        _write_private(path, secrets.token_hex(32))
    return path.read_text().strip()


def _write_private(path, text: str) -> None:
    """Write a secret file atomically, readable by its owner only. Replicas
    start at once: the first one to write wins, the others keep its file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    try:
        os.link(tmp, path)  # never replaces: a secret another replica already uses stays
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def ensure_bootstrap_key(settings: Settings) -> None:
    """First start: project `default` and an all-scopes key in <data>/bootstrap-key (0600)."""
    path = settings.bootstrap_key_path
    auth.create_project(BOOTSTRAP_PROJECT, "Default project")
    if path.exists():
        return
    with database.atomic():  # one replica makes the key (the write lock is taken at BEGIN)
        if path.exists():
            return
        _write_private(path, auth.create_key(BOOTSTRAP_PROJECT, "bootstrap"))
    log.info("bootstrap API key written", extra={"path": str(path.resolve()), "project": BOOTSTRAP_PROJECT})


def create_server(components: Components, blocking: Blocking, runner: ExecutionRunner,
                  gateway_secret: str = "", address: str = "") -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    settings = components.settings
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", max(MAX_MESSAGE_BYTES, reply_limit(settings.response_max_bytes))),
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.max_concurrent_streams", 10000),
            ("grpc.so_reuseport", 0),
        ]
    )
    authenticator = auth.Authenticator(jwt_secret(settings), jwt_max_ttl=settings.jwt_max_ttl)
    base = dict(blocking=blocking, error_version=settings.error_version, authenticator=authenticator,
                gateway_secret=gateway_secret)
    servicers = {
        "FunctionService": (function_pb2, FunctionServicer(components.functions, **base)),
        "RuntimeService": (runtime_pb2, RuntimeServicer(components.catalog, **base)),
        "DeploymentService": (deployment_pb2, DeploymentServicer(components.deployments, **base)),
        "ExecutionService": (execution_pb2, ExecutionServicer(components.executions, runner, **base)),
        "EventService": (event_pb2, EventServicer(components.events, **base)),
        "LogService": (log_pb2, LogServicer(LogStreams(runner.logs, blocking), components.executions,
                                            components.deployments, **base)),
    }
    for name, (module, servicer) in servicers.items():
        add_service(server, module.DESCRIPTOR.services_by_name[name], servicer)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.grpc_reflection:
        reflection.enable_server_reflection(
            SERVICE_NAMES + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
        )
    address = address or settings.grpc_address
    if address.startswith("unix:"):
        socket_path = address[len("unix:"):]
        if os.path.exists(socket_path):
            os.unlink(socket_path)
    server.add_insecure_port(address)
    return server, health_servicer


def background_jobs(components: Components, runner: ExecutionRunner, writer: BatchWriter, blocking: Blocking,
                    identity: ReplicaIdentity) -> Jobs:
    """Every background loop of the service, in start-up order (stopped in reverse)."""
    settings, engine, catalog = components.settings, components.engine, components.catalog
    pool = engine.pool

    def take_over(dead: str) -> dict:
        requeued, failed = components.executions.recover(dead)
        return {"executions_requeued": requeued, "executions_failed": failed, "builds_requeued": BuildQueue.requeue_of(dead)}

    membership = Membership(identity, settings.lease_seconds, blocking, take_over,
                            pool_owner=pool.owner if pool is not None else "",
                            work_dir_of=lambda index: Engine.containers_dir(settings, index),
                            sweep=pool.sweep_dead if pool is not None else None)
    jobs = Jobs(writer, membership,
                OneShot("build-recovery", components.builds.requeue_interrupted, blocking=blocking))
    if pool is not None:
        jobs.add(Resource("container-pool", lambda: pool.start(wait=False), pool.stop))
    jobs.add(components.builds.workers)
    jobs.add(OneShot("runtime-images", lambda: engine.prepare_images(catalog), wait=False,
                     cancel=engine.images.cancel if engine.images is not None else None))
    jobs.add(Periodic("runtime-availability", AVAILABILITY_REFRESH, lambda: engine.refresh_availability(catalog),
                      blocking=blocking))
    if pool is not None:
        jobs.add(Periodic("container-reaper", pool.reap_interval, pool.reap))
    jobs.add(OneShot("execution-recovery", runner.recover))
    jobs.add(Periodic("execution-sweep", EXECUTION_SWEEP_INTERVAL, runner.queue_waiting, first=0))
    jobs.add(QueueWorkers("execution-workers", settings.async_workers, runner.next_queued, runner.run_queued))
    scheduler = Scheduler(components.executions, catchup=settings.schedule_catchup)

    async def fire_schedules() -> None:
        await asyncio.sleep(scheduler.until_next_look())
        for seq in await blocking(scheduler.fire_due):
            runner.enqueue(seq)  # this replica fired it: it runs it at once

    jobs.add(Periodic("schedule-fire", SCHEDULE_TICK, fire_schedules, first=0))

    async def flush_logs() -> None:
        rows = runner.logs.take_unflushed()
        if rows:
            await asyncio.wrap_future(writer.submit(functools.partial(store_lines, rows)))

    jobs.add(Periodic("log-flush", LOG_FLUSH_INTERVAL, flush_logs))
    if is_postgres():  # other replicas' stored lines wake this one's subscribers
        jobs.add(Listener(NOTIFY_CHANNEL, runner.logs.wake))
    jobs.add(Periodic("event-retention", 3600.0, components.events.forget_older_than, blocking=blocking))
    jobs.add(Periodic("rate-windows", 60.0, components.executions.limiter.sweep, blocking=blocking))
    if not settings.database_url:
        jobs.add(Periodic("sqlite-checkpoint", 1.0, checkpoint, blocking=blocking))

    def remove_stale_uploads() -> None:
        removed = components.deployments.discard_stale_uploads(settings.upload_ttl)
        if removed:
            log.info("unfinished uploads removed", extra={"count": removed})

    jobs.add(Periodic("stale-uploads", min(3600.0, max(settings.upload_ttl / 2, 1.0)), remove_stale_uploads,
                      blocking=blocking))
    return jobs


async def serve(settings: Settings, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                gateway_secret: str = "", replica: int = 0) -> None:
    """Run replica `replica` of this host (its gRPC server and background
    jobs) until `stop` is set or SIGTERM/SIGINT arrives. Requests carrying
    `gateway_secret` come from our Envoy (see auth.client_address)."""
    # Work hops between the event loop and a few threads (store, Docker); a
    # thread waiting for the GIL would otherwise wait up to 5 ms per hop.
    sys.setswitchinterval(0.0002)
    secure_data_dir(settings)
    slot = hold_slot(settings.data_dir, replica)
    identity = ReplicaIdentity(replica, host_id(settings.data_dir), settings.replica_address(replica))
    logs.tag_replica(identity.id)
    blocking = Blocking(settings.blocking_threads)
    components = await blocking(build_components, settings, identity.id, replica)
    loop = asyncio.get_running_loop()
    connect_engine_hooks(components, loop)
    writer = BatchWriter()

    async def write(fn):
        # Shielded: a caller that hangs up must not cancel a write of work already done.
        return await asyncio.shield(asyncio.wrap_future(writer.submit(fn)))

    hub = LogHub()
    runner = ExecutionRunner(components.executions, components.engine.invoke, blocking, write, settings.async_workers,
                             logs=hub)
    components.builds.live = ThreadedLog(hub, loop, lambda rows: write(functools.partial(store_lines, rows)))
    # Executions an event queued on this replica run at once (after the commit, from any thread).
    components.events.queued = lambda seqs: loop.call_soon_threadsafe(runner.enqueue_all, seqs)
    server, health_servicer = create_server(components, blocking, runner, gateway_secret, identity.address)
    jobs = background_jobs(components, runner, writer, blocking, identity)
    await jobs.start()
    await server.start()
    for name in [""] + SERVICE_NAMES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC server listening", extra={"address": identity.address})
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down")
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=5)
    await jobs.stop(timeout=STOP_TIMEOUT)
    blocking.shutdown()
    close_database()
    os.close(slot)
    log.info("stopped")
