from __future__ import annotations

import uuid
import tempfile
from pathlib import Path

import pytest

from harness import Service, make_service


@pytest.fixture(scope="session")
def service(tmp_path_factory) -> Service:
    """One service (SQLite, or PostgreSQL when FUNCTIONS_TEST_DATABASE_URL is set) for the session."""
    # Short path: unix socket paths are limited to 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="fs-"))
    env = {}
    svc = make_service(tmp, **env).start()
    yield svc
    svc.stop()


@pytest.fixture
def fresh_service():
    """A service of its own, for tests that restart or reconfigure it."""
    started = []

    def start(**env) -> Service:
        svc = make_service(Path(tempfile.mkdtemp(prefix="fs-")), **env).start()
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
