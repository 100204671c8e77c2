"""Auth has no gaps (reliability probe F8): JWTs are bound to their project
and a maximum lifetime, claims have strict types, keys always have scopes,
the guest rate limit cannot be dodged by spoofing x-forwarded-for on the
direct gRPC port, and reflection can be switched off."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
import requests

from harness import error_of
from restkit import GUEST, PY_USER_ECHO, deploy, execute, jwt_for


@pytest.fixture(scope="module")
def open_function(service):
    return deploy(service, f"jwtfn{uuid.uuid4().hex[:6]}", PY_USER_ECHO, execute=["role:all"])


def _as(service, token, project="default"):
    return {"X-Appwrite-Project": project, "X-Appwrite-JWT": token}


def test_jwt_works_in_its_own_project_only(service, open_function):
    assert execute(service, open_function, headers=_as(service, jwt_for(service, "alice"))).status_code == 201
    other = "jwtp" + uuid.uuid4().hex[:6]
    service.create_project(other)
    # Issued for `default`, presented to `other`: refused before anything is looked up.
    r = requests.get(f"{service.url}/functions/{open_function}/executions", headers=_as(service, jwt_for(service, "alice"), other))
    assert r.status_code == 401 and error_of(r)["type"] == "user_jwt_invalid"
    # Issued for `other`, presented to `default`.
    r = execute(service, open_function, headers=_as(service, jwt_for(service, "alice", project=other)))
    assert r.status_code == 401 and "project" in error_of(r)["message"]
    # No project claim at all.
    r = execute(service, open_function, headers=_as(service, jwt_for(service, "alice", project=None)))
    assert r.status_code == 401


def test_jwt_lifetime_is_bounded(service, open_function):
    now = int(time.time())
    too_long = [
        jwt_for(service, "alice", expires_in=10 ** 9),  # exp: far future, no iat
        jwt_for(service, "alice", expires_in=2 * 3600, iat=now),  # 2 h > 1 h default
        jwt_for(service, "alice", expires_in=600, iat=now - 10 ** 6),  # exp - iat huge
        jwt_for(service, "alice", expires_in=10 ** 9, iat=now + 10 ** 9 - 60),  # iat in the future cannot stretch it
    ]
    for token in too_long:
        r = execute(service, open_function, headers=_as(service, token))
        assert r.status_code == 401 and error_of(r)["type"] == "user_jwt_invalid", r.text
    assert execute(service, open_function, headers=_as(service, jwt_for(service, "alice", expires_in=3000, iat=now))).status_code == 201


def test_jwt_teams_must_be_a_list_of_strings(service, open_function):
    from server.domain import jwt

    secret = (service.data_dir / "jwt-secret").read_text().strip()
    for teams in ("blue", [1, 2], [["blue"]], {"blue": True}):
        token = jwt.encode({"projectId": "default", "userId": "alice", "teams": teams, "exp": int(time.time()) + 60}, secret)
        r = execute(service, open_function, headers=_as(service, token))
        assert r.status_code == 401 and "teams" in error_of(r)["message"], (teams, r.text)


@pytest.mark.parametrize("scopes", ["", " ", " , ", ",,"])
def test_create_key_with_blank_scopes_is_an_error(service, scopes):
    result = service.cli("create-key", "default", "--scopes", scopes)
    assert result.returncode == 2 and "scope" in result.stderr
    assert "\n" not in result.stdout.strip()  # no key printed


def test_forwarded_for_cannot_be_spoofed(fresh_service):
    """Through Envoy the address is the peer Envoy saw; on the direct gRPC port
    x-forwarded-for counts for nothing: rotating the header never buys a
    fresh allowance on either."""
    from functions.v1 import execution_pb2, execution_pb2_grpc

    from harness import free_ports

    address = f"127.0.0.1:{free_ports(8)}"  # replica k listens on the port + k
    svc = fresh_service(FUNCTIONS_EXECUTION_RATE_LIMIT="3", FUNCTIONS_GRPC_ADDRESS=address)
    fid = deploy(svc, "spoof", PY_USER_ECHO, execute=["role:all"])
    spoofed = [execute(svc, fid, headers={**GUEST, "X-Forwarded-For": f"10.9.9.{i}", "X-Envoy-External-Address": f"10.8.8.{i}",
                                          "X-Functions-Gateway": "guess"}).status_code for i in range(4)]
    assert spoofed == [201, 201, 201, 429]
    stub = execution_pb2_grpc.ExecutionServiceStub(grpc.insecure_channel(address))
    codes = []
    for i in range(5):
        metadata = (("x-appwrite-project", "default"), ("x-forwarded-for", f"10.0.0.{i}"),
                    ("x-envoy-external-address", f"10.0.1.{i}"), ("x-functions-gateway", "guess"))
        try:
            stub.CreateExecution(execution_pb2.CreateExecutionRequest(function_id=fid), metadata=metadata, timeout=30)
            codes.append("ok")
        except grpc.RpcError as error:
            codes.append(error.code().name)
    assert codes == ["ok", "ok", "ok", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]


def test_reflection_can_be_switched_off(fresh_service):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def services(svc):
        stub = reflection_pb2_grpc.ServerReflectionStub(svc.channel())
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        return [s.name for r in stub.ServerReflectionInfo(iter([request]), timeout=10) for s in r.list_services_response.service]

    on = fresh_service()
    assert "functions.v1.FunctionService" in services(on)
    off = fresh_service(FUNCTIONS_GRPC_REFLECTION="false")
    with pytest.raises(grpc.RpcError) as raised:
        services(off)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED

