"""What runs the pool's runtime servers: the ContainerDriver contract (base)
and its two drivers, Docker (the service's) and local processes (development
and tests)."""

from server.engine.drivers.base import ContainerDriver
from server.engine.drivers.docker import DockerDriver
from server.engine.drivers.local import LocalProcessDriver

__all__ = ["ContainerDriver", "DockerDriver", "LocalProcessDriver"]
