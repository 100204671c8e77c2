"""Who may execute and read: API keys, end users with JWTs, anonymous callers."""

from __future__ import annotations

import uuid

import pytest
import requests

from harness import error_of
from restkit import GUEST, PY_USER_ECHO, deploy, execute, jwt_for


def as_user(service, user, teams=()):
    return {"X-Appwrite-Project": "default", "X-Appwrite-JWT": jwt_for(service, user, teams)}


@pytest.fixture(scope="module")
def functions(service):
    """One function per `execute` list."""
    made = {}
    for name, execute_list in {
        "all": ["role:all"], "guest": ["role:guest"], "member": ["role:member"], "user": ["user:alice"],
        "team": ["team:blue"], "teamrole": ["team:blue/admin"], "none": [],
    }.items():
        made[name] = deploy(service, f"perm{name}{uuid.uuid4().hex[:6]}", PY_USER_ECHO, execute=execute_list)
    return made


@pytest.mark.parametrize(
    "caller, allowed",
    [
        ("key", {"all", "guest", "member", "user", "team", "teamrole", "none"}),
        ("guest", {"all", "guest"}),
        ("alice", {"all", "member", "user"}),
        ("bob-blue-member", {"all", "member", "team"}),
        ("carol-blue-admin", {"all", "member", "team", "teamrole"}),
    ],
)
def test_execute_permission_matrix(service, functions, caller, allowed):
    headers = {
        "key": service.headers(),
        "guest": GUEST,
        "alice": as_user(service, "alice"),
        "bob-blue-member": as_user(service, "bob", ["blue", "blue/member"]),
        "carol-blue-admin": as_user(service, "carol", ["blue", "blue/admin"]),
    }[caller]
    for name, fid in functions.items():
        r = execute(service, fid, headers=headers)
        if name in allowed:
            assert r.status_code == 201 and r.json()["status"] == "completed", (caller, name, r.text)
        else:
            assert r.status_code == 401, (caller, name, r.text)
            assert error_of(r)["type"] == "user_unauthorized"


def test_users_read_only_their_own_executions(service, functions):
    fid = functions["all"]
    alice, bob = as_user(service, "alice"), as_user(service, "bob")
    mine = execute(service, fid, headers=alice).json()
    assert mine["$read"] == ["user:alice"] and mine["stdout"] == '{"user":"alice"}'
    theirs = execute(service, fid, headers=bob).json()
    assert requests.get(f"{service.url}/functions/{fid}/executions/{mine['$id']}", headers=alice).status_code == 200
    r = requests.get(f"{service.url}/functions/{fid}/executions/{theirs['$id']}", headers=alice)
    assert r.status_code == 404 and error_of(r)["type"] == "execution_not_found"
    listed = requests.get(f"{service.url}/functions/{fid}/executions", headers=alice).json()
    assert listed["total"] >= 1 and all(e["$read"] == ["user:alice"] for e in listed["executions"])
    everything = requests.get(f"{service.url}/functions/{fid}/executions", headers=service.headers()).json()
    assert everything["total"] > listed["total"]
    assert requests.get(f"{service.url}/functions/{fid}/executions", headers=GUEST).status_code == 401


def test_bad_tokens_are_401(service, functions):
    fid = functions["all"]
    for token in ("garbage", jwt_for(service, "alice", secret="wrong-secret"), jwt_for(service, "alice", expires_in=-120)):
        r = execute(service, fid, headers={"X-Appwrite-Project": "default", "X-Appwrite-JWT": token})
        assert r.status_code == 401 and error_of(r)["type"] == "user_jwt_invalid"


def test_key_scopes_for_executions(service, functions):
    read_only = service.create_key("default", scopes="execution.read")
    r = execute(service, functions["all"], headers=service.headers(key=read_only))
    assert r.status_code == 401 and "execution.write" in error_of(r)["message"]
    write_only = service.create_key("default", scopes="execution.write")
    assert execute(service, functions["all"], headers=service.headers(key=write_only)).status_code == 201
    r = requests.get(f"{service.url}/functions/{functions['all']}/executions", headers=service.headers(key=write_only))
    assert r.status_code == 401 and "execution.read" in error_of(r)["message"]


def test_another_tenant_cannot_read_or_run(service, functions):
    project = "other" + uuid.uuid4().hex[:6]
    service.create_project(project)
    key = service.create_key(project)
    headers = service.headers(project, key)
    fid = functions["all"]
    ex = execute(service, fid).json()
    assert requests.get(f"{service.url}/functions/{fid}/executions/{ex['$id']}", headers=headers).status_code == 404
    assert requests.get(f"{service.url}/functions/{fid}/executions", headers=headers).status_code == 404
    assert execute(service, fid, headers=headers).status_code == 404


def test_anonymous_callers_are_rate_limited(fresh_service):
    svc = fresh_service(FUNCTIONS_EXECUTION_RATE_LIMIT="3")
    fid = deploy(svc, "limited", PY_USER_ECHO)
    codes = [execute(svc, fid, headers=GUEST).status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429]
    assert execute(svc, fid).status_code == 201  # API keys are exempt
    assert execute(svc, fid, headers=as_user(svc, "dave")).status_code == 201  # counted per user
