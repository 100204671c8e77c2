"""The container side: runtime images, builds, the warm container pool and its
drivers, and the protocol to the runtime servers.

The rest of the service calls only the classes exported here.
"""

from server.engine.builder import BuildResult, Builder
from server.engine.drivers import ContainerDriver, DockerDriver, LocalProcessDriver
from server.engine.engine import DockerUnavailable, Engine
from server.engine.images import RuntimeImageError, RuntimeImages
from server.engine.pool import ContainerPool, DeploymentTarget, InvocationResult, PoolBusy, PoolClosed, PoolOptions
from server.engine.sandbox import ContainerLimits

__all__ = [
    "BuildResult", "Builder", "ContainerDriver", "ContainerLimits", "ContainerPool", "DeploymentTarget", "DockerDriver",
    "DockerUnavailable", "Engine", "InvocationResult", "LocalProcessDriver", "PoolBusy", "PoolClosed", "PoolOptions",
    "RuntimeImageError", "RuntimeImages",
]
