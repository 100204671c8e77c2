"""The Docker driver: runtime servers in hardened, labelled containers (the
service's driver; see server.engine.drivers.base for the contract).

A container has no network (`network_mode="none"`) unless the operator opts
in, a read-only root, no capabilities, its limits, and the sandbox user. Its
host directory (0700, the service's) holds `code/`, bind-mounted read-only at
CODE_MOUNT, and `sock/` at SOCKET_MOUNT: 0700 and the sandbox user's until
the runtime listens (`lock_socket_dir`), so functions cannot fill the host's
disk through it.

Giving a container its code (`give_code`): when the service runs as root, the
build output is bind-mounted read-only onto the container's host code dir; the
container's code volume has `rslave` propagation, so the new mount appears
inside the already-running stem cell at once, whatever the number of files.
For that the pool's work_dir is a shared mount (a bind of itself, made shared
in a peer group of its own, `ensure_shared_mount`, done by `setup`). Without
root, or when any of that fails, the files are hard-linked one by one
(`link_tree`).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import docker
import requests
from docker.types import LogConfig

from server.domain.runtimes import Runtime
from server.engine.drivers import hostdir
from server.engine.drivers.base import CRASH_WAIT, crash_message, new_instance, owner_of
from server.engine.drivers.mounts import ensure_shared_mount, mount_api_available, mount_readonly, mounts_under, umount
from server.engine.invoker import RuntimeGone
from server.engine.sandbox import (
    CODE_MOUNT,
    DEPLOYMENT_LABEL,
    INSTANCE_LABEL,
    OWNER_LABEL,
    PROJECT_LABEL,
    ROLE_LABEL,
    RUNTIME_LABEL,
    RUNTIME_MOUNT,
    SANDBOX_ENV,
    SOCKET_MOUNT,
    WORK_DIR_LABEL,
    ContainerLimits,
    hardened_kwargs,
    sandbox_ids,
)

log = logging.getLogger(__name__)

class DockerDriver:
    """Runtime containers of one pool work_dir on a Docker engine.

    Args:
        runtimes_dir: `runtimes/`, bind-mounted read-only at RUNTIME_MOUNT; the
            runtime's `server` command (from its language.toml) runs from there.
        work_dir: the pool's; containers are labelled with it and its owner.
        limits, tmp_mb, network: of every runtime container.
    """

    errors = (docker.errors.DockerException, requests.RequestException)

    def __init__(self, client: docker.DockerClient, runtimes_dir: Path, work_dir: Path, *,
                 limits: ContainerLimits, tmp_mb: int, network: str):
        self._client = client
        self._runtimes_dir = Path(runtimes_dir).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.owner = owner_of(self.work_dir)
        self.instance = new_instance()
        self.limits = limits
        self._tmp_mb = tmp_mb
        self._network = network
        self.mounting = False  # give_code mounts (set by setup) instead of linking
        self._made_shared: Path | None = None  # the work_dir bind this object made (undone by teardown)

    # -- the work_dir ---------------------------------------------------------------

    def setup(self) -> None:
        """Use read-only bind mounts for code when possible (root, mount API, a
        shared work_dir); else link_tree. Logs the fallback once."""
        self.mounting = False
        if os.geteuid() != 0:
            log.info("code is hard-linked into runtime containers: the service is not root")
            return
        try:
            if not mount_api_available():
                raise OSError(errno.ENOSYS, "open_tree/mount_setattr/move_mount are not available")
            if ensure_shared_mount(self.work_dir):
                self._made_shared = self.work_dir
        except OSError as exc:
            log.warning("code is hard-linked into runtime containers: read-only mounts are unavailable",
                        extra={"error": str(exc), "work_dir": str(self.work_dir)})
            return
        self.mounting = True

    def teardown(self) -> None:
        """Undo the work_dir bind made by setup (submounts first)."""
        self.mounting = False
        work_dir, self._made_shared = self._made_shared, None
        if work_dir is not None:
            for mount_point in sorted(mounts_under(work_dir), key=len, reverse=True):
                umount(mount_point)

    # -- giving containers their code -----------------------------------------------

    def code_path(self, host_dir: Path) -> str:
        return CODE_MOUNT

    def give_code(self, source: Path, host_dir: Path) -> None:
        """A mount when enabled (no per-file work; falls back to linking, once
        logged, if the mount fails), else link_tree."""
        hostdir.check_code(source)
        code_dir = hostdir.code_dir(host_dir)
        if self.mounting:
            try:
                mode = os.stat(source).st_mode
                if mode & 0o555 != 0o555:  # the sandbox user must enter it (link_tree chmods its copy alike)
                    os.chmod(source, mode | 0o555)
                mount_readonly(Path(source), code_dir)
                return
            except OSError as exc:
                self.mounting = False
                log.warning("mounting code failed: hard-linking from now on", extra={"error": str(exc), "source": str(source)})
        hostdir.link_tree(source, code_dir)

    def lock_socket_dir(self, host_dir: Path) -> None:
        """As root: the service owns `sock/` and the sandbox group may only list
        and enter it (root:<sandbox gid> 0750, never readable by others); the
        socket itself is the runtime's (0600). chown first: until chmod the mode
        stays 0700, so no one but root is let in meanwhile. Without root the
        sandbox user is the service's own user: the directory stays 0700."""
        if os.geteuid() == 0:
            sock_dir = hostdir.sock_dir(host_dir)
            os.chown(sock_dir, 0, sandbox_ids()[1])
            os.chmod(sock_dir, 0o750)

    # -- containers -------------------------------------------------------------------

    def launch(self, name: str, host_dir: Path, runtime: Runtime, image: str, project: str = "", deployment: str = "") -> str:
        command = list(runtime.server)
        scripts = self._runtimes_dir
        if not command:
            raise RuntimeGone(f"no runtime server for language {runtime.language!r}")
        hostdir.create(host_dir, with_code_dir=True)
        # The sandbox user's until the runtime listens (`lock_socket_dir`).
        if os.geteuid() == 0:
            os.chown(hostdir.sock_dir(host_dir), *sandbox_ids())
        try:
            container = self._create(name, image, command, host_dir, scripts, runtime, project, deployment)
        except docker.errors.APIError as exc:
            # Docker refuses rslave when it does not see the work_dir as a shared
            # mount (dockerd in a mount namespace of its own): link from now on.
            if not self.mounting or "propagation" not in str(exc) and "shared or slave" not in str(exc):
                raise
            self.mounting = False
            log.warning("code is hard-linked into runtime containers: Docker refused mount propagation",
                        extra={"error": str(exc), "work_dir": str(self.work_dir)})
            container = self._create(name, image, command, host_dir, scripts, runtime, project, deployment)
        container.start()
        return container.id

    def _create(self, name, image, command, host_dir: Path, scripts: Path, runtime: Runtime, project: str, deployment: str):
        # rslave: a mount made on the host code dir later (give_code) appears inside.
        code_mode = "ro,rslave" if self.mounting else "ro"
        return self._client.containers.create(
            image,
            command=command,
            name=name,
            working_dir=CODE_MOUNT,
            environment={
                **SANDBOX_ENV,
                "FUNCTIONS_RUNTIME_SOCKET": f"{SOCKET_MOUNT}/{hostdir.SOCKET_NAME}",
                # Docker gives every container its own PID namespace (pid_mode is
                # never set): the runtime may kill stray processes in it.
                "FUNCTIONS_RUNTIME_PID_NAMESPACE": "1",
            },
            labels={
                ROLE_LABEL: "runtime",
                RUNTIME_LABEL: runtime.id,
                OWNER_LABEL: self.owner,
                WORK_DIR_LABEL: str(self.work_dir),
                INSTANCE_LABEL: self.instance,
                # Empty for stem cells: labels cannot change once a deployment takes one.
                PROJECT_LABEL: project,
                DEPLOYMENT_LABEL: deployment,
            },
            volumes={
                str(hostdir.code_dir(host_dir)): {"bind": CODE_MOUNT, "mode": code_mode},
                str(hostdir.sock_dir(host_dir)): {"bind": SOCKET_MOUNT, "mode": "rw"},
                str(scripts): {"bind": RUNTIME_MOUNT, "mode": "ro"},
            },
            log_config=LogConfig(type=LogConfig.types.JSON, config={"max-size": "256k", "max-file": "1"}),
            **hardened_kwargs(self._network, self._tmp_mb),
            **self.limits.docker_kwargs(),
        )

    def remove(self, container_id: str, host_dir: Path | None = None) -> None:
        try:
            self._client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or "already in progress" not in str(exc):
                raise
        if host_dir is not None:
            hostdir.release_dir(host_dir)

    def owned(self, own_builds: bool = True, owner: str | None = None) -> list[str]:
        """Every runtime and build container with this owner label, running or
        not, and orphans: ones whose pool's work_dir no longer exists."""
        found = self._client.api.containers(all=True, filters={"label": ROLE_LABEL})
        ids = []
        for item in found:
            labels = item.get("Labels") or {}
            role = labels.get(ROLE_LABEL)
            if role not in ("runtime", "build"):
                continue
            if _orphaned(labels.get(WORK_DIR_LABEL, "")):
                ids.append(item["Id"])
            elif labels.get(OWNER_LABEL) == (owner or self.owner):
                if role == "build" and not own_builds and owner is None and labels.get(INSTANCE_LABEL) == self.instance:
                    continue
                ids.append(item["Id"])
        return ids

    # -- what became of a container -------------------------------------------------

    def status(self, container_id: str) -> str:
        try:
            state = self._client.api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            return "gone"
        return state.get("Status", "unknown") + ("" if state.get("Running") else f" (exit code {state.get('ExitCode')})")

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        """The container's own stdout/stderr."""
        try:
            text = self._client.api.logs(container_id, tail=lines).decode("utf-8", "replace").strip()
        except (docker.errors.DockerException, requests.RequestException):
            return ""
        return f"; its output:\n{text[-2000:]}" if text else ""

    def diagnose(self, container_id: str, since: float, protocol_error: bool, detail: str) -> tuple[bool, str]:
        api = self._client.api
        if not protocol_error:
            try:
                api.wait(container_id, timeout=CRASH_WAIT)
            except (requests.RequestException, docker.errors.APIError):
                pass  # still running: report what is known
        state = api.inspect_container(container_id)["State"]
        tail = self.logs_tail(container_id)
        # tini (PID 1) exits when the runtime dies, so OOMKilled is set; node may
        # instead abort on its own heap limit first.
        oom = bool(state.get("OOMKilled")) or "heap out of memory" in tail
        if not oom and state.get("ExitCode") == 137:
            oom = self._oom_event_seen(container_id, since)
        if oom:
            return True, f"Execution failed: the function exceeded its memory limit of {self.limits.memory_mb} MB."
        return False, crash_message(protocol_error=protocol_error, detail=detail, running=bool(state.get("Running")),
                                    exit_code=state.get("ExitCode"), output=tail)

    def _oom_event_seen(self, container_id: str, since: float) -> bool:
        """Docker's `oom` event (the only live signal when PID 1 survives). Bounded: `until` is now."""
        try:
            events = self._client.api.events(
                since=int(since) - 1, until=int(time.time()) + 1,
                filters={"container": container_id, "event": "oom"}, decode=True,
            )
            try:
                return any(True for _ in events)
            finally:
                events.close()
        except (docker.errors.DockerException, requests.RequestException):
            return False


def _orphaned(work_dir: str) -> bool:
    return bool(work_dir) and not os.path.isdir(work_dir)
