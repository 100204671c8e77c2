"""What every sandbox container (a build, or a runtime container of the pool)
is made of: the paths inside it, the labels that tell whose it is, the
sandbox user, its environment, its resource limits and the Docker options
that confine untrusted code. The builder and the Docker driver both read them
from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Paths inside build and runtime containers.
CODE_MOUNT = "/opt/functions/code"
SOURCE_MOUNT = "/opt/functions/source.tar.gz"
RUNTIME_MOUNT = "/opt/functions-runtime"
SOCKET_MOUNT = "/opt/functions/sock"  # runtime containers: the directory of the runtime's UNIX socket

ROLE_LABEL = "functions.role"  # "runtime" or "build"
RUNTIME_LABEL = "functions.runtime"
# Labels shared by runtime and build containers, so the pool's sweep removes both.
OWNER_LABEL = "functions.pool"  # unique per pool work_dir: a pool only ever removes its own containers
# The pool's work_dir: a container whose work_dir is gone belongs to a service
# that was killed and whose data was removed (test runs): any pool may remove it.
WORK_DIR_LABEL = "functions.work-dir"
# One random token per running service: the start-up sweep leaves the builds
# of the service that is starting alone (builds may start before the pool).
INSTANCE_LABEL = "functions.instance"
# Runtime containers only; empty for stem cells (labels cannot change once a deployment takes one).
PROJECT_LABEL = "functions.project"
DEPLOYMENT_LABEL = "functions.deployment"

# Sandbox user when the service runs as root: numeric, so images need no passwd entry.
SANDBOX_UID = SANDBOX_GID = 10001

# Environment every sandbox gets: the root fs is read-only, only /tmp is writable.
SANDBOX_ENV = {"HOME": "/tmp", "TMPDIR": "/tmp"}


@dataclass
class ContainerLimits:
    """Resource limits of one sandbox container (a build, or a runtime container)."""

    memory_mb: int = 512
    cpus: float = 1.0
    pids: int = 256

    def docker_kwargs(self) -> dict:
        return {
            "mem_limit": f"{self.memory_mb}m",
            # Equal to mem_limit: no swap, so the memory limit is a hard one.
            "memswap_limit": f"{self.memory_mb}m",
            "nano_cpus": int(self.cpus * 1e9),
            "pids_limit": self.pids,
        }


def sandbox_ids() -> tuple[int, int]:
    """uid/gid sandbox containers run as.

    As root the service uses a dedicated uid and hands it the output directory.
    Otherwise it uses its own uid, so it can still clean up what builds write.
    """
    if os.geteuid() == 0:
        return SANDBOX_UID, SANDBOX_GID
    return os.geteuid(), os.getegid()


def hardened_kwargs(network: str, tmp_mb: int) -> dict:
    """Docker `create` arguments that confine untrusted code."""
    uid, gid = sandbox_ids()
    return {
        "user": f"{uid}:{gid}",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        # exec: package builds run helpers from /tmp. The tmpfs is charged to the memory limit anyway.
        "tmpfs": {"/tmp": f"rw,exec,nosuid,nodev,size={tmp_mb}m,mode=1777"},
        # tini as PID 1: signals work and zombies are reaped.
        "init": True,
        "network_mode": network,
    }
