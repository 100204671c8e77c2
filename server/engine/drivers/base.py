"""What the container pool needs from whatever runs its runtime servers.

A driver starts runtime servers (`runtimes/<language>/server.*`) in
"containers", gives them their code, removes them, and says why one died.
The pool (server.engine.pool) decides which container runs what; the driver
never does. Two drivers exist: DockerDriver (hardened containers, the
service's) and LocalProcessDriver (plain subprocesses, for development and
tests; no isolation).

Threading: `lock_socket_dir`, `code_path` and the identity attributes are
used on the pool's event loop and must not block. Every other method blocks
and is called on the pool's driver threads (several at once, for different
containers).

Every container has a host directory `<work_dir>/<name>/` laid out as
server.engine.drivers.hostdir says; `launch` makes it and the runtime server
listens on its socket there.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Protocol

from server.domain.runtimes import Runtime
from server.engine.sandbox import ContainerLimits

CRASH_WAIT = 3.0  # seconds a container whose socket closed gets to finish exiting


class ContainerDriver(Protocol):
    work_dir: Path  # absolute; every host directory is a child of it
    owner: str  # the same for every run on this work_dir: what a pool removes as its own
    instance: str  # unique to this run of the service (builders label their containers with it)
    limits: ContainerLimits | None  # what each container may use; None: nothing is enforced
    errors: tuple[type[Exception], ...]  # what its calls raise besides OSError and RuntimeGone

    def setup(self) -> None:
        """Prepare the work_dir before the first `launch` (at pool start, after
        its sweep). Raises nothing: what cannot be set up is done without."""

    def teardown(self) -> None:
        """Undo `setup` after the last container is removed (at pool stop).

        Raises:
            OSError: the work_dir could not be restored (logged by the pool).
        """

    def launch(self, name: str, host_dir: Path, runtime: Runtime, image: str, project: str = "", deployment: str = "") -> str:
        """Make `host_dir` and start the runtime server of `runtime` in a new
        container called `name`, listening on hostdir.socket_path(host_dir).
        Returns at once once it is started, before it listens.

        Args:
            image: from the pool's `ensure_image`; drivers without images ignore it.
            project, deployment: the deployment it is started for; "" for a stem cell.
        Returns:
            The container's ID, for `status`, `logs_tail`, `diagnose` and `remove`.
        Raises:
            RuntimeGone: there is no runtime server for the runtime's language.
            OSError, one of `errors`: it could not start.
        """

    def lock_socket_dir(self, host_dir: Path) -> None:
        """The runtime listens: from now on the code it runs may no longer write
        in `sock/`. On the event loop: quick, no waiting."""

    def code_path(self, host_dir: Path) -> str:
        """The path, as the runtime server sees it, of the container's code dir
        (what the pool's `load` request names). Pure."""

    def give_code(self, source: Path, host_dir: Path) -> None:
        """Make the build output at `source` the container's code, read-only where the driver can.

        Raises:
            FileNotFoundError: `source` is not a directory.
            OSError: the code could not be given.
        """

    def remove(self, container_id: str, host_dir: Path | None = None) -> None:
        """Kill and remove the container (an absent one is fine), then delete
        `host_dir` (hostdir.release_dir: never while a mount stays in it).

        Args:
            container_id: from `launch`, `owned`, or the container's name.
        Raises:
            OSError, one of `errors`: it could not be removed.
        """

    def status(self, container_id: str) -> str:
        """"running", "exited (exit code N)", "gone", ...: for error messages. Raises nothing."""

    def logs_tail(self, container_id: str) -> str:
        """"; its output:\\n<last lines>" (what the runtime server wrote), or "". Raises nothing."""

    def diagnose(self, container_id: str, since: float, protocol_error: bool, detail: str) -> tuple[bool, str]:
        """Why the runtime stopped answering during an execution; waits up to
        CRASH_WAIT for it to exit unless `protocol_error`.

        Args:
            since: when the container was created (time.time()).
            protocol_error: it answered something invalid (rather than closing the connection).
            detail: what the connection saw.
        Returns:
            (out_of_memory, the error message for the execution).
        Raises:
            Exception: the driver could not find out (the pool reports `detail` then).
        """

    def owned(self, own_builds: bool = True, owner: str | None = None) -> list[str]:
        """IDs of the containers this driver's owner left (runtime and, for
        Docker, build containers), and of orphans of vanished services.
        `own_builds=False` leaves out the builds of this instance (at start-up:
        they may have started before the pool). `owner`: those of another
        owner instead (a dead replica of this host, whose lease expired).

        Raises:
            one of `errors`: they could not be listed.
        """


def owner_of(work_dir: Path) -> str:
    """The owner of the containers of every pool on `work_dir`."""
    return hashlib.sha256(str(work_dir).encode()).hexdigest()[:16]


def new_instance() -> str:
    """A fresh token for this run of the service."""
    return secrets.token_hex(8)


def crash_message(*, protocol_error: bool, detail: str, running: bool, exit_code: object, output: str) -> str:
    """What an execution says when its runtime was not killed for memory: it
    answered garbage, closed its connection while running, or exited
    (`output` is a logs_tail)."""
    if protocol_error:
        return f"Execution failed: invalid reply from the runtime: {detail}"
    if running:
        return "Execution failed: the runtime closed the connection unexpectedly."
    return f"Execution failed: the runtime exited unexpectedly (exit code {exit_code}){output or '.'}"
