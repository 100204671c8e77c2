"""The Docker side: runtime images, builds, (later) the container pool and invoker.

The rest of the service calls only the classes exported here.
"""

from server.engine.builder import BuildResult, Builder, ContainerLimits
from server.engine.engine import DockerUnavailable, Engine
from server.engine.images import RuntimeImageError, RuntimeImages
from server.engine.pool import ContainerPool, DeploymentTarget, InvocationResult, PoolBusy, PoolClosed

__all__ = [
    "BuildResult", "Builder", "ContainerLimits", "ContainerPool", "DeploymentTarget", "DockerUnavailable", "Engine",
    "InvocationResult", "PoolBusy", "PoolClosed", "RuntimeImageError", "RuntimeImages",
]
