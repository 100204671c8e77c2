"""The warm container pool: runs executions in long-lived runtime containers,
one deployment per container, reused while warm. What a "container" is comes
from a driver (server.engine.drivers): hardened Docker containers for the
service, local subprocesses for development and tests.

Every container is a small state machine (after OpenWhisk's ContainerProxy);
`Container.move` is the only place a state changes (checked against
TRANSITIONS), and `Registry.transition`, which calls it, the only place the
pool's indexes follow and the change is logged:

    STARTING ─► PREWARMED ─► LOADING ─► BUSY ⇄ IDLE
       └───────────────────► LOADING               cold start: no stem cell was ready
    any state ─► REMOVING                          timeout, crash, load error, eviction,
                                                   keep-alive, forget, stop

STARTING   the driver launches the runtime server, until it answers a ping on its socket.
PREWARMED  a code-less "stem cell" of one runtime, waiting for any deployment.
LOADING    assigned to ONE deployment for the rest of its life: the driver gives
           it the build output (Docker: mounted read-only on its code directory
           or, without root, hard-linked into it), then the runtime `load`s it
           from the driver's `code_path`.
BUSY       running one execution (runtime servers handle one at a time).
IDLE       loaded and free; reused by its deployment, removed after `keep_alive`.
REMOVING   killed and removed in the background; it no longer counts against any cap.

Scheduling an invocation (the decisions: scheduling.py): an IDLE container of
the deployment (the warm path); else a new one (a stem cell, or a cold start)
while the deployment has fewer than `max_per_deployment` and the pool fewer
than `max_containers` (the least recently used IDLE container, or a stem cell,
is evicted to make room); else wait, bounded by `acquire_timeout` and
`max_waiters`, for one of the deployment's containers (handed over on release)
or, if it has none, for any slot. A full queue or a wait that times out raises
PoolBusy (HTTP 429).

Each container has its own host directory `<work_dir>/<name>/` (0700) holding
`code/` (Docker: bind-mounted read-only at CODE_MOUNT with rslave propagation,
empty until assignment; the build output mounted on it then appears inside)
and `sock/` (the runtime's UNIX socket; 0700, writable by the sandbox user
only until the runtime listens). A host directory is unmounted before it is
deleted, and the sweeps at start and stop (sweep.py) unmount what a killed
service left. Docker containers have no network at all (`network_mode="none"`)
unless the operator opts in.

The sweep at start and stop also removes build containers carrying the pool's
owner label (Builder(owner=pool.owner, instance=pool.instance, ...)) and empties
`staging_dir` (the builders' copies of source archives), except, at start, what
belongs to this instance.

Keep-alive is not the pool's own loop: whoever runs the service's background
jobs calls `reap()` every `reap_interval` seconds, on the pool's loop.

Threading: everything here runs on the event loop, without locks (no state
change spans an await). Blocking driver and file work runs on the pool's own
threads. The warm path of `invoke` makes no driver call and awaits nothing but
the socket request: take an IDLE container, one request/reply on its socket,
put it back.

Modules: container.py (State, TRANSITIONS, Container, Deployment),
registry.py (the indexes), scheduling.py (the decisions, pure), lifecycle.py
(starting, loading, removing, crashes, stem cells), sweep.py, config.py
(PoolOptions, DeploymentTarget), container_pool.py (ContainerPool, the face).
"""

from server.engine.errors import PoolBusy, PoolClosed, PoolError
from server.engine.invoker import InvocationResult
from server.engine.pool.config import DeploymentTarget, PoolOptions
from server.engine.pool.container import State
from server.engine.pool.container_pool import ContainerPool
from server.engine.sandbox import OWNER_LABEL

__all__ = ["ContainerPool", "DeploymentTarget", "InvocationResult", "OWNER_LABEL", "PoolBusy", "PoolClosed", "PoolError",
           "PoolOptions", "State"]
