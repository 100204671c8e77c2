"""Fixtures of the runtime-image and builder tests (test_engine_images,
test_engine_builder): a Docker client, the catalog and the images, built once
per session. `runtime_images` here is the RuntimeImages object (it shadows
conftest's fixture of the same name in the modules that import it)."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from server.domain.runtimes import Runtime, load_catalog
from server.engine import RuntimeImages

REPO = Path(__file__).resolve().parent.parent


RUNTIMES_DIR = REPO / "runtimes"


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def catalog() -> dict[str, Runtime]:
    return {r.id: r for r in load_catalog(RUNTIMES_DIR / "catalog.toml")}


@pytest.fixture(scope="session")
def runtime_images(docker_client) -> RuntimeImages:
    return RuntimeImages(docker_client, RUNTIMES_DIR)


@pytest.fixture(scope="session")
def built_images(runtime_images, catalog) -> dict[str, str]:
    """The image of every runtime with a recipe, built (or found) once per session: runtime ID → image ID."""
    results = runtime_images.ensure_all([r for r in catalog.values() if r.recipe], progress=lambda line: None)
    failed = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert not failed, failed
    return results
