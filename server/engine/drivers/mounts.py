"""Read-only bind mounts of build outputs (Linux, root), through the mount
API: open_tree(2), mount_setattr(2), move_mount(2), called with ctypes.

The Docker driver mounts a build output onto a runtime container's host code
dir; for the mount to show up inside a container that is already running,
the pool's work_dir must be a shared mount (`ensure_shared_mount`) and the
container's code volume `rslave`. `release_dir` (server.engine.drivers.hostdir)
unmounts what is left before it deletes a host directory.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

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


def mount_api_available() -> bool:
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


def umount(target: str) -> None:
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
    peers). True when this call made the bind (undo it with umount)."""
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
        umount(str(path))
        raise
    return True
