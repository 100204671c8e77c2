"""The Docker side: runtime images, builds, (later) the container pool and invoker.

The rest of the service calls only the classes exported here.
"""

from server.engine.builder import BuildResult, Builder, ContainerLimits
from server.engine.engine import DockerUnavailable, Engine
from server.engine.images import RuntimeImageError, RuntimeImages

__all__ = ["BuildResult", "Builder", "ContainerLimits", "DockerUnavailable", "Engine", "RuntimeImageError", "RuntimeImages"]
