"""A runtime container's own directory on the host, `<work_dir>/<name>/`,
whatever the driver: `code/` (where the deployment's code appears) and
`sock/` (the runtime server's UNIX socket, `sock/runtime.sock`).

A host directory with a build mounted inside must never be deleted
recursively: `shutil.rmtree` would go through the mount and delete the build
output. `release_dir` unmounts first and deletes nothing while a mount stays.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from server.engine.drivers.mounts import mounts_under, umount

log = logging.getLogger(__name__)

SOCKET_NAME = "runtime.sock"
# sun_path holds 108 bytes on Linux and 104 on the BSDs: keep below both.
MAX_SOCKET_PATH = 104


def code_dir(host_dir: Path) -> Path:
    return host_dir / "code"


def sock_dir(host_dir: Path) -> Path:
    return host_dir / "sock"


def socket_path(host_dir: Path) -> Path:
    """Where the runtime server listens."""
    return sock_dir(host_dir) / SOCKET_NAME


def check_socket_path(host_dir: Path) -> None:
    """Raises ValueError when a socket in `host_dir` would have too long a path."""
    if len(str(socket_path(host_dir)).encode()) >= MAX_SOCKET_PATH:
        raise ValueError(f"work_dir is too long for UNIX socket paths: {host_dir.parent}")


def create(host_dir: Path, *, with_code_dir: bool) -> None:
    """Make the host directory and `sock/`, both 0700 (and `code/`, 0755, if asked).

    Only the service (and Docker, root) may enter the host directory: the
    socket inside is reachable by no other local user. mkdir's mode is final
    at once (the umask only removes bits): no wider window."""
    host_dir.mkdir(mode=0o700)
    if with_code_dir:
        code_dir(host_dir).mkdir(mode=0o755)
    sock_dir(host_dir).mkdir(mode=0o700)


def check_code(source: Path) -> None:
    """Raises FileNotFoundError when the deployment's build output is missing."""
    if not Path(source).is_dir():
        raise FileNotFoundError(f"the deployment's code is missing: {source}")


def link_tree(source: Path, dest: Path) -> None:
    """Hard-link the build output into a container's code dir (copies across filesystems)."""
    check_code(source)
    shutil.copytree(source, dest, symlinks=True, copy_function=_link_or_copy, dirs_exist_ok=True)
    os.chmod(dest, 0o755)  # copytree copied the source's mode; the sandbox user must enter it


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or hard links not permitted
        shutil.copy2(src, dst)


def release_dir(path: Path) -> bool:
    """Delete a container's host directory: unmount what is mounted in it first
    (deepest first); delete nothing while any mount remains (the build output
    would go with it). True when it is gone. Blocking."""
    path = Path(path)
    try:
        mounts = mounts_under(path)
    except OSError as exc:
        log.error("cannot read the mount table: host directory kept", extra={"path": str(path), "error": str(exc)})
        return False
    for mount_point in sorted(mounts, key=len, reverse=True):
        try:
            umount(mount_point)
        except OSError as exc:
            log.warning("unmount failed", extra={"path": mount_point, "error": str(exc)})
    if mounts and mounts_under(path):
        log.error("a mount remains: host directory kept", extra={"path": str(path)})
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()
