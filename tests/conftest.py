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
    results = images.ensure_all([r for r in load_catalog(Settings().runtime_catalog) if r.recipe], progress=lambda line: None)
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


@pytest.fixture
def pg_database():
    """A PostgreSQL database of its own (dropped afterwards): its URL.
    Skipped without FUNCTIONS_TEST_DATABASE_URL (`make test` sets it)."""
    import os

    import psycopg2

    base = os.environ.get("FUNCTIONS_TEST_DATABASE_URL", "")
    if not base:
        if os.environ.get("CI"):
            pytest.fail("FUNCTIONS_TEST_DATABASE_URL must be set in CI (make test sets it)")
        pytest.skip("FUNCTIONS_TEST_DATABASE_URL not set (make test sets it)")
    name = f"fs_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(base)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + "/" + name
    cursor = admin.cursor()
    cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    cursor.execute(f"DROP DATABASE IF EXISTS {name}")
    admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request):
    """Environment for a service on SQLite (its data dir) or on a fresh
    PostgreSQL database. Tests ask for it before `fresh_service`, so the
    service stops before its database is dropped."""
    if request.param == "sqlite":
        return {}
    return {"FUNCTIONS_DATABASE_URL": request.getfixturevalue("pg_database")}
