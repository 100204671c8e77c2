from __future__ import annotations

import uuid
import tempfile
from pathlib import Path

import pytest

from harness import Service, make_service


# Tests never download packages: builds run without network.
TEST_ENV = {"FUNCTIONS_BUILD_NETWORK": "none"}


@pytest.fixture(scope="session")
def runtime_images():
    """The runtime images, built from their recipes once (cached across runs)."""
    import docker

    from server.domain.runtimes import load_catalog
    from server.engine import RuntimeImages
    from server.settings import REPO_ROOT, Settings

    images = RuntimeImages(docker.from_env(), REPO_ROOT / "runtimes")
    results = images.ensure_all(load_catalog(Settings().runtime_catalog), progress=lambda line: None)
    failed = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert not failed, failed
    return results


@pytest.fixture(scope="session")
def service(runtime_images) -> Service:
    """One service (SQLite) for the session, runtimes ready."""
    # Short path: unix socket paths are limited to 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="fs-"))
    svc = make_service(tmp, **TEST_ENV).start()
    yield svc
    svc.stop()


@pytest.fixture
def fresh_service(runtime_images):
    """A service of its own, for tests that restart or reconfigure it."""
    started = []

    def start(**env) -> Service:
        svc = make_service(Path(tempfile.mkdtemp(prefix="fs-")), **{**TEST_ENV, **env}).start()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture
def api(service):
    """requests.Session bound to the default project with the bootstrap key."""
    import requests

    session = requests.Session()
    session.headers.update(service.headers())
    session.base = service.url
    yield session
    session.close()


@pytest.fixture
def unique_id():
    """Makes IDs unique across the whole test session (and other sessions)."""

    def make(prefix: str = "fn") -> str:
        return f"{prefix}{uuid.uuid4().hex[:16]}"

    return make
