"""The Docker side of runtime containers (blocking; executor threads only):
start a hardened runtime container, remove it, list the ones this pool owns
(runtime and build containers), find out why one died, and give a container
its code.

Giving a container its code (`give_code`): when the service runs as root, the
build output is bind-mounted read-only onto the container's host code dir; the
container's code volume has `rslave` propagation, so the new mount appears
inside the already-running stem cell at once, whatever the number of files.
For that the pool's work_dir is a shared mount (a bind of itself, made shared
in a peer group of its own, `ensure_shared_mount`). Without root, or when any
of that fails, the files are hard-linked one by one (`link_tree`).

A host directory with a build mounted inside must never be deleted
recursively: `shutil.rmtree` would go through the mount and delete the build
output. `release_dir` unmounts first and deletes nothing while a mount stays.
"""

from __future__ import annotations

import ctypes
import errno
import logging
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
    INSTANCE_LABEL,
    OWNER_LABEL,
    ROLE_LABEL,
    RUNTIME_LABEL,
    RUNTIME_MOUNT,
    SANDBOX_ENV,
    WORK_DIR_LABEL,
    ContainerLimits,
    hardened_kwargs,
    sandbox_ids,
)
from server.engine.invoker import SOCKET_NAME, RuntimeGone

log = logging.getLogger(__name__)

__all__ = ["DockerRuntimes", "INSTANCE_LABEL", "OWNER_LABEL", "WORK_DIR_LABEL", "link_tree", "lock_socket_dir", "release_dir"]

SOCKET_MOUNT = "/opt/functions/sock"
PROJECT_LABEL = "functions.project"
DEPLOYMENT_LABEL = "functions.deployment"
COMMANDS = {
    "python": ["python3", f"{RUNTIME_MOUNT}/server.py"],
    "node": ["node", f"{RUNTIME_MOUNT}/server.js"],
}
CRASH_WAIT = 3.0  # seconds a container whose socket closed gets to finish exiting


class DockerRuntimes:
    """Blocking Docker calls for runtime containers; executor threads only.

    A container's host directory (0700, the service's) holds `code/`
    (bind-mounted read-only at CODE_MOUNT) and `sock/` (at SOCKET_MOUNT, 0700,
    the sandbox user's until the runtime listens, then `lock_socket_dir`).
    """

    def __init__(self, client: docker.DockerClient, runtimes_dir: Path, limits: ContainerLimits, tmp_mb: int, owner: str,
                 network: str = "none", work_dir: Path | None = None, instance: str = ""):
        self._network = network
        self._work_dir = str(work_dir or "")
        self._client = client
        self._runtimes_dir = Path(runtimes_dir).resolve()
        self.limits = limits
        self._tmp_mb = tmp_mb
        self.owner = owner
        self.instance = instance
        self.mounting = False  # give_code mounts (set by enable_mounts) instead of linking
        self._made_shared: Path | None = None  # the work_dir bind this object made (undone by disable_mounts)

    # -- giving containers their code -------------------------------------------

    def enable_mounts(self) -> bool:
        """Use read-only bind mounts for code when possible (root, mount API, a
        shared work_dir); else link_tree. Logs the fallback once. Call before any launch."""
        self.mounting = False
        if not self._work_dir:
            return False
        if os.geteuid() != 0:
            log.info("code is hard-linked into runtime containers: the service is not root")
            return False
        try:
            if not _mount_api_available():
                raise OSError(errno.ENOSYS, "open_tree/mount_setattr/move_mount are not available")
            work_dir = Path(self._work_dir)
            if ensure_shared_mount(work_dir):
                self._made_shared = work_dir
        except OSError as exc:
            log.warning("code is hard-linked into runtime containers: read-only mounts are unavailable",
                        extra={"error": str(exc), "work_dir": self._work_dir})
            return False
        self.mounting = True
        return True

    def disable_mounts(self) -> None:
        """After the last container: undo the work_dir bind made by enable_mounts (submounts first)."""
        self.mounting = False
        work_dir, self._made_shared = self._made_shared, None
        if work_dir is not None:
            for mount_point in sorted(mounts_under(work_dir), key=len, reverse=True):
                _umount(mount_point)

    def give_code(self, source: Path, code_dir: Path) -> None:
        """The build output at `source` becomes the container's code (read-only).

        A mount when enabled (no per-file work; falls back to linking, once
        logged, if the mount fails), else link_tree."""
        if not Path(source).is_dir():
            raise FileNotFoundError(f"the deployment's code is missing: {source}")
        if self.mounting:
            try:
                mode = os.stat(source).st_mode
                if mode & 0o555 != 0o555:  # the sandbox user must enter it (link_tree chmods its copy alike)
                    os.chmod(source, mode | 0o555)
                mount_readonly(Path(source), Path(code_dir))
                return
            except OSError as exc:
                self.mounting = False
                log.warning("mounting code failed: hard-linking from now on", extra={"error": str(exc), "source": str(source)})
        link_tree(source, code_dir)

    # -- containers --------------------------------------------------------------

    def launch(self, name: str, host_dir: Path, runtime: Runtime, image: str, project: str = "", deployment: str = "") -> str:
        """Create and start a runtime container; returns its ID."""
        command = COMMANDS.get(runtime.language)
        scripts = self._runtimes_dir / runtime.language
        if command is None or not scripts.is_dir():
            raise RuntimeGone(f"no runtime server for language {runtime.language!r}")
        code_dir, sock_dir = host_dir / "code", host_dir / "sock"
        # Only the service (and Docker, root) may enter the host directory: the
        # socket inside is reachable by no other local user. mkdir's mode is
        # final at once (the umask only removes bits): no wider window.
        host_dir.mkdir(mode=0o700)
        code_dir.mkdir(mode=0o755)
        # The sandbox user's, 0700, until the runtime listens (`lock_socket_dir`):
        # a writable host directory would let functions fill the host's disk.
        sock_dir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(sock_dir, *sandbox_ids())
        try:
            container = self._create(name, image, command, code_dir, sock_dir, scripts, runtime, project, deployment)
        except docker.errors.APIError as exc:
            # Docker refuses rslave when it does not see the work_dir as a shared
            # mount (dockerd in a mount namespace of its own): link from now on.
            if not self.mounting or "propagation" not in str(exc) and "shared or slave" not in str(exc):
                raise
            self.mounting = False
            log.warning("code is hard-linked into runtime containers: Docker refused mount propagation",
                        extra={"error": str(exc), "work_dir": self._work_dir})
            container = self._create(name, image, command, code_dir, sock_dir, scripts, runtime, project, deployment)
        container.start()
        return container.id

    def _create(self, name, image, command, code_dir: Path, sock_dir: Path, scripts: Path, runtime: Runtime, project: str, deployment: str):
        # rslave: a mount made on the host code dir later (give_code) appears inside.
        code_mode = "ro,rslave" if self.mounting else "ro"
        return self._client.containers.create(
            image,
            command=command,
            name=name,
            working_dir=CODE_MOUNT,
            environment={
                **SANDBOX_ENV,
                "FUNCTIONS_RUNTIME_SOCKET": f"{SOCKET_MOUNT}/{SOCKET_NAME}",
                # Docker gives every container its own PID namespace (pid_mode is
                # never set): the runtime may kill stray processes in it.
                "FUNCTIONS_RUNTIME_PID_NAMESPACE": "1",
            },
            labels={
                ROLE_LABEL: "runtime",
                RUNTIME_LABEL: runtime.id,
                OWNER_LABEL: self.owner,
                WORK_DIR_LABEL: self._work_dir,
                INSTANCE_LABEL: self.instance,
                # Empty for stem cells: labels cannot change once a deployment takes one.
                PROJECT_LABEL: project,
                DEPLOYMENT_LABEL: deployment,
            },
            volumes={
                str(code_dir): {"bind": CODE_MOUNT, "mode": code_mode},
                str(sock_dir): {"bind": SOCKET_MOUNT, "mode": "rw"},
                str(scripts): {"bind": RUNTIME_MOUNT, "mode": "ro"},
            },
            log_config=LogConfig(type=LogConfig.types.JSON, config={"max-size": "256k", "max-file": "1"}),
            **hardened_kwargs(self._network, self._tmp_mb),
            **self.limits.docker_kwargs(),
        )

    def remove(self, name_or_id: str, host_dir: Path | None = None) -> None:
        """Kill and remove (absent is fine), then its host directory: unmounted
        first, never deleted while a mount remains (`release_dir`)."""
        try:
            self._client.api.remove_container(name_or_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or "already in progress" not in str(exc):
                raise
        if host_dir is not None:
            release_dir(host_dir)

    def owned(self, own_builds: bool = True) -> list[str]:
        """IDs of every runtime and build container with this owner label,
        running or not, and of orphans: ones whose pool's work_dir no longer
        exists. `own_builds=False` leaves out the builds of this instance
        (at start-up: they may have started before the pool)."""
        found = self._client.api.containers(all=True, filters={"label": ROLE_LABEL})
        ids = []
        for item in found:
            labels = item.get("Labels") or {}
            role = labels.get(ROLE_LABEL)
            if role not in ("runtime", "build"):
                continue
            if _orphaned(labels.get(WORK_DIR_LABEL, "")):
                ids.append(item["Id"])
            elif self.owner and labels.get(OWNER_LABEL) == self.owner:
                if role == "build" and not own_builds and self.instance and labels.get(INSTANCE_LABEL) == self.instance:
                    continue
                ids.append(item["Id"])
        return ids

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
    """Once the runtime listens: the sandbox user may no longer write in it.

    As root: the service owns it and the sandbox group may only list and enter
    it (root:<sandbox gid> 0750, never readable by others); the socket itself is
    the runtime's (0600). chown first: until chmod the mode stays 0700, so no
    one but root is let in meanwhile. Without root the sandbox user is the
    service's own user: the directory stays 0700.
    """
    if os.geteuid() == 0:
        os.chown(sock_dir, 0, sandbox_ids()[1])
        os.chmod(sock_dir, 0o750)


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


# -- mounts (Linux; root) ------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

# The same numbers on x86_64 and the generic table (arm64, riscv64).
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
MS_BIND, MS_REC, MS_PRIVATE, MS_SHARED = 0x1000, 0x4000, 1 << 18, 1 << 20
MNT_DETACH = 2


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str, path: Path | str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", str(path))
    return result


def _mount_api_available() -> bool:
    """open_tree(2) and friends exist (Linux 5.12+ for mount_setattr)."""
    result = _libc.syscall(SYS_MOUNT_SETATTR, ctypes.c_int(-1), b"", ctypes.c_uint(0), None, ctypes.c_size_t(0))
    return not (result < 0 and ctypes.get_errno() == errno.ENOSYS)


def mount_readonly(source: Path, dest: Path) -> None:
    """Bind `source` onto `dest`, read-only (and nosuid, nodev) from the very
    start: the detached copy is made read-only before it is attached, so the
    copies propagated into containers are read-only too (a bind followed by a
    remount would leave them writable). Symbolic links are never followed."""
    fd = _check(_libc.syscall(SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), os.fsencode(source),
                              ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_SYMLINK_NOFOLLOW)), "open_tree", source)
    try:
        attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
        _check(_libc.syscall(SYS_MOUNT_SETATTR, ctypes.c_int(fd), b"", ctypes.c_uint(AT_EMPTY_PATH),
                             ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr", source)
        _check(_libc.syscall(SYS_MOVE_MOUNT, ctypes.c_int(fd), b"", ctypes.c_int(AT_FDCWD), os.fsencode(dest),
                             ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), "move_mount", dest)
    finally:
        os.close(fd)


def _mount(source: Path | None, target: Path, flags: int) -> None:
    _check(_libc.mount(os.fsencode(source) if source else None, os.fsencode(target), None, flags, None), "mount", target)


def _umount(target: str) -> None:
    if _libc.umount2(os.fsencode(target), MNT_DETACH) < 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        err = ctypes.get_errno()
        raise OSError(err, f"umount: {os.strerror(err)}", target)


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, root, optional fields) of every mount this process sees."""
    rows = []
    with open("/proc/self/mountinfo", "rb") as fh:
        for line in fh:
            fields = line.decode("utf-8", "surrogateescape").split()
            if len(fields) < 7:
                continue
            optional = " ".join(fields[6:fields.index("-")] if "-" in fields else [])
            rows.append((_unescape(fields[4]), _unescape(fields[3]), optional))
    return rows


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    if "\\" not in path:
        return path
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts_under(path: Path) -> list[str]:
    """Mount points at `path` or below it."""
    root = os.path.realpath(path)
    prefix = root.rstrip("/") + "/"
    return [mp for mp, _, _ in _mountinfo() if mp == root or mp.startswith(prefix)]


def ensure_shared_mount(path: Path) -> bool:
    """Make `path` a shared mount (containers' rslave volumes below it then see
    mounts made under it). A plain directory gets a bind of itself in a peer
    group of its own (private, then shared: nothing propagates to the parent's
    peers). True when this call made the bind (undo it with _umount)."""
    path = Path(os.path.realpath(path))
    entries = [(root, optional) for mp, root, optional in _mountinfo() if mp == str(path)]
    if entries:  # already a mount point: ours, left by a killed run, or the operator's
        root, optional = entries[-1]
        if "shared:" not in optional:
            _mount(None, path, MS_SHARED)
        return root != "/" and str(path).endswith(root)  # a bind of the directory onto itself: ours
    _mount(path, path, MS_BIND)
    try:
        _mount(None, path, MS_PRIVATE)
        _mount(None, path, MS_SHARED)
    except OSError:
        _umount(str(path))
        raise
    return True


def release_dir(path: Path) -> bool:
    """Delete a container's host directory: unmount what is mounted in it first
    (deepest first); delete nothing while any mount remains (the build output
    would go with it). True when it is gone."""
    path = Path(path)
    try:
        mounts = mounts_under(path)
    except OSError as exc:
        log.error("cannot read the mount table: host directory kept", extra={"path": str(path), "error": str(exc)})
        return False
    for mount_point in sorted(mounts, key=len, reverse=True):
        try:
            _umount(mount_point)
        except OSError as exc:
            log.warning("unmount failed", extra={"path": mount_point, "error": str(exc)})
    if mounts and mounts_under(path):
        log.error("a mount remains: host directory kept", extra={"path": str(path)})
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()
