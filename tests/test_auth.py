"""Projects, API keys and scopes: who may see and change what."""

from __future__ import annotations

import os
import stat
import uuid

import pytest
import requests

from harness import error_of


def fn_body(fid):
    return {"functionId": fid, "name": "tenant", "runtime": "python-3.11"}


@pytest.fixture(scope="module")
def two_tenants(service):
    tenants = {}
    for name in ("a", "b"):
        project = f"tenant{name}{uuid.uuid4().hex[:8]}"
        service.create_project(project)
        tenants[name] = (project, service.create_key(project))
    return tenants


def test_missing_key_is_401_naming_the_scope(service):
    r = requests.get(f"{service.url}/functions", headers={"X-Appwrite-Project": "default"})
    assert r.status_code == 401
    err = error_of(r)
    assert err["type"] == "general_unauthorized_scope" and "functions.read" in err["message"]


def test_invalid_key_is_401(service):
    r = requests.get(f"{service.url}/functions", headers=service.headers(key="not-a-key"))
    assert r.status_code == 401 and error_of(r)["type"] == "user_unauthorized"


def test_missing_scope_is_401_naming_it(service):
    read_only = service.create_key("default", scopes="functions.read")
    headers = service.headers(key=read_only)
    assert requests.get(f"{service.url}/functions", headers=headers).status_code == 200
    r = requests.post(f"{service.url}/functions", headers=headers, json=fn_body("nope" + uuid.uuid4().hex[:6]))
    assert r.status_code == 401
    assert "functions.write" in error_of(r)["message"]
    # Scope is checked before parameters, as in Appwrite.
    r = requests.post(f"{service.url}/functions", headers=headers, json={"functionId": "-bad"})
    assert r.status_code == 401


def test_unknown_project_is_404(service):
    r = requests.get(f"{service.url}/functions", headers=service.headers(project="no-such-project"))
    assert r.status_code == 404 and error_of(r)["type"] == "project_not_found"


def test_projects_are_isolated(service, two_tenants):
    (project_a, key_a), (project_b, key_b) = two_tenants["a"], two_tenants["b"]
    ha, hb = service.headers(project_a, key_a), service.headers(project_b, key_b)
    fid = "shared-" + uuid.uuid4().hex[:8]
    assert requests.post(f"{service.url}/functions", headers=ha, json=fn_body(fid)).status_code == 201
    # Invisible to B: get, list, search, update, delete.
    assert requests.get(f"{service.url}/functions/{fid}", headers=hb).status_code == 404
    listed = requests.get(f"{service.url}/functions", headers=hb, params={"search": fid}).json()
    assert listed == {"total": 0, "functions": []}
    assert requests.put(f"{service.url}/functions/{fid}", headers=hb, json={"name": "x"}).status_code == 404
    assert requests.delete(f"{service.url}/functions/{fid}", headers=hb).status_code == 404
    # B may use the same ID for its own function.
    assert requests.post(f"{service.url}/functions", headers=hb, json=fn_body(fid)).status_code == 201
    # A's key does not open B's project.
    r = requests.get(f"{service.url}/functions", headers={"X-Appwrite-Project": project_b, "X-Appwrite-Key": key_a})
    assert r.status_code == 401
    assert requests.get(f"{service.url}/functions/{fid}", headers=ha).json()["name"] == "tenant"


def test_bootstrap_key_file(service):
    path = service.data_dir / "bootstrap-key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(service.bootstrap_key) == 128
    assert "bootstrap-key" in service.log_path.read_text(errors="replace")  # logged once, at the first start


def test_keys_are_stored_hashed(service):
    import sqlite3

    db = sqlite3.connect(service.data_dir / "functions.db")
    try:
        stored = [row[0] for row in db.execute("select secret_hash from api_key")]
    finally:
        db.close()
    assert service.bootstrap_key not in stored and len(stored) >= 1


def test_cli_rejects_bad_input(service):
    assert service.cli("create-key", "no-such-project").returncode == 2
    assert service.cli("create-key", "default", "--scopes", "everything").returncode == 2
    assert service.cli("create-project", "-bad").returncode == 2


def test_project_as_query_parameter(service):
    r = requests.get(f"{service.url}/functions", params={"project": "default", "limit": 1},
                     headers={"X-Appwrite-Key": service.bootstrap_key})
    assert r.status_code == 200 and "functions" in r.json()
