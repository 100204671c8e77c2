"""The Docker side of runtime containers (blocking; executor threads only):
start a hardened runtime container, remove it, list the ones this pool owns,
find out why one died, and give a container its code.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import docker
import requests
from docker.types import LogConfig

from server.domain.runtimes import Runtime
from server.engine.builder import (
    CODE_MOUNT,
    ROLE_LABEL,
    RUNTIME_LABEL,
    RUNTIME_MOUNT,
    SANDBOX_ENV,
    ContainerLimits,
    hardened_kwargs,
)
from server.engine.invoker import SOCKET_NAME, RuntimeGone

SOCKET_MOUNT = "/opt/functions/sock"
OWNER_LABEL = "functions.pool"  # unique per pool work_dir: a pool only ever removes its own containers
# The pool's work_dir: a container whose work_dir is gone belongs to a service
# that was killed and whose data was removed (test runs): any pool may remove it.
WORK_DIR_LABEL = "functions.work-dir"
PROJECT_LABEL = "functions.project"
DEPLOYMENT_LABEL = "functions.deployment"
COMMANDS = {
    "python": ["python3", f"{RUNTIME_MOUNT}/server.py"],
    "node": ["node", f"{RUNTIME_MOUNT}/server.js"],
}
CRASH_WAIT = 3.0  # seconds a container whose socket closed gets to finish exiting


class DockerRuntimes:
    """Blocking Docker calls for runtime containers; executor threads only.

    A container's host directory holds `code/` (bind-mounted read-only at
    CODE_MOUNT) and `sock/` (at SOCKET_MOUNT, for the runtime's socket).
    """

    def __init__(self, client: docker.DockerClient, runtimes_dir: Path, limits: ContainerLimits, tmp_mb: int, owner: str,
                 network: str = "none", work_dir: Path | None = None):
        self._network = network
        self._work_dir = str(work_dir or "")
        self._client = client
        self._runtimes_dir = Path(runtimes_dir).resolve()
        self.limits = limits
        self._tmp_mb = tmp_mb
        self.owner = owner

    def launch(self, name: str, host_dir: Path, runtime: Runtime, image: str, project: str = "", deployment: str = "") -> str:
        """Create and start a runtime container; returns its ID."""
        command = COMMANDS.get(runtime.language)
        scripts = self._runtimes_dir / runtime.language
        if command is None or not scripts.is_dir():
            raise RuntimeGone(f"no runtime server for language {runtime.language!r}")
        code_dir, sock_dir = host_dir / "code", host_dir / "sock"
        host_dir.mkdir(mode=0o755)
        code_dir.mkdir(mode=0o755)
        # Writable by the sandbox user only until the runtime listens (`lock_socket_dir`):
        # a writable host directory would let functions fill the host's disk.
        sock_dir.mkdir()
        os.chmod(sock_dir, 0o777)
        container = self._client.containers.create(
            image,
            command=command,
            name=name,
            working_dir=CODE_MOUNT,
            environment={**SANDBOX_ENV, "FUNCTIONS_RUNTIME_SOCKET": f"{SOCKET_MOUNT}/{SOCKET_NAME}"},
            labels={
                ROLE_LABEL: "runtime",
                RUNTIME_LABEL: runtime.id,
                OWNER_LABEL: self.owner,
                WORK_DIR_LABEL: self._work_dir,
                # Empty for stem cells: labels cannot change once a deployment takes one.
                PROJECT_LABEL: project,
                DEPLOYMENT_LABEL: deployment,
            },
            volumes={
                str(code_dir): {"bind": CODE_MOUNT, "mode": "ro"},
                str(sock_dir): {"bind": SOCKET_MOUNT, "mode": "rw"},
                str(scripts): {"bind": RUNTIME_MOUNT, "mode": "ro"},
            },
            log_config=LogConfig(type=LogConfig.types.JSON, config={"max-size": "256k", "max-file": "1"}),
            **hardened_kwargs(self._network, self._tmp_mb),
            **self.limits.docker_kwargs(),
        )
        container.start()
        return container.id

    def remove(self, name_or_id: str, host_dir: Path | None = None) -> None:
        """Kill and remove (absent is fine), then delete its host directory."""
        try:
            self._client.api.remove_container(name_or_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or "already in progress" not in str(exc):
                raise
        if host_dir is not None:
            shutil.rmtree(host_dir, ignore_errors=True)

    def owned(self) -> list[str]:
        """IDs of every container with this owner label, running or not, and of
        orphans: runtime containers whose pool's work_dir no longer exists."""
        found = self._client.api.containers(all=True, filters={"label": f"{ROLE_LABEL}=runtime"})
        return [
            item["Id"] for item in found
            if (item.get("Labels") or {}).get(OWNER_LABEL) == self.owner
            or _orphaned((item.get("Labels") or {}).get(WORK_DIR_LABEL, ""))
        ]

    def status(self, container_id: str) -> str:
        try:
            state = self._client.api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            return "gone"
        return state.get("Status", "unknown") + ("" if state.get("Running") else f" (exit code {state.get('ExitCode')})")

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        """"; its output: ..." (the container's own stdout/stderr), or ""."""
        try:
            text = self._client.api.logs(container_id, tail=lines).decode("utf-8", "replace").strip()
        except (docker.errors.DockerException, requests.RequestException):
            return ""
        return f"; its output:\n{text[-2000:]}" if text else ""

    def diagnose(self, container_id: str, since: float, protocol_error: bool, detail: str) -> tuple[bool, str]:
        """Why a runtime stopped answering during an execution: (out_of_memory, error message)."""
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
        if protocol_error:
            return False, f"Execution failed: invalid reply from the runtime: {detail}"
        if state.get("Running"):
            return False, "Execution failed: the runtime closed the connection unexpectedly."
        return False, f"Execution failed: the runtime exited unexpectedly (exit code {state.get('ExitCode')}){tail or '.'}"

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


def lock_socket_dir(sock_dir: Path) -> None:
    """Once the runtime listens: the service owns the directory, so the sandbox cannot undo this."""
    os.chmod(sock_dir, 0o755)


def link_tree(source: Path, dest: Path) -> None:
    """Hard-link the build output into a container's code dir (copies across filesystems)."""
    if not Path(source).is_dir():
        raise FileNotFoundError(f"the deployment's code is missing: {source}")
    shutil.copytree(source, dest, symlinks=True, copy_function=_link_or_copy, dirs_exist_ok=True)
    os.chmod(dest, 0o755)  # copytree copied the source's mode; the sandbox user must enter it


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or hard links not permitted
        shutil.copy2(src, dst)


def _orphaned(work_dir: str) -> bool:
    return bool(work_dir) and not os.path.isdir(work_dir)
