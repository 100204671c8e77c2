"""Who this replica is.

A replica is slot `index` of a host: `<host id>-<index>`. The host id is
made once and kept in the data directory, so a slot keeps its id across
restarts and a restarted replica knows the work recorded under its id was
cut off by its own previous run. Two processes never hold one slot: each
takes an exclusive lock on `run/replica-<index>.lock` for as long as it runs.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


class SlotTaken(RuntimeError):
    """Another process runs this replica slot on this data directory."""


@dataclass(frozen=True)
class ReplicaIdentity:
    index: int
    host: str
    address: str

    @property
    def id(self) -> str:
        return f"{self.host}-{self.index}"


def host_id(data_dir: Path) -> str:
    """This host's id (12 hex digits), made on first use and kept in `<data dir>/host-id`."""
    path = Path(data_dir) / "host-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    fresh = secrets.token_hex(6)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another replica made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(fresh + "\n")
    return fresh


def hold_slot(data_dir: Path, index: int) -> int:
    """Lock replica slot `index` for this process (the lock goes with it). Returns the lock's fd."""
    run = Path(data_dir) / "run"
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(run / f"replica-{index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SlotTaken(f"replica {index} already runs on {data_dir}") from None
    return fd
