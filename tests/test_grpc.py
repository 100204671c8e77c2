"""Native gRPC: generated stubs, status codes, health and reflection, directly
and through Envoy's shared listener."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from functions.v1 import deployment_pb2, deployment_pb2_grpc, function_pb2, function_pb2_grpc
from functions.v1 import runtime_pb2, runtime_pb2_grpc


@pytest.fixture(params=["direct", "envoy"])
def channel(request, service):
    ch = service.channel() if request.param == "direct" else service.gateway_channel()
    yield ch
    if request.param == "envoy":
        ch.close()


@pytest.fixture
def md(service):
    return (("x-appwrite-project", "default"), ("x-appwrite-key", service.bootstrap_key))


def test_crud_over_grpc(channel, md):
    stub = function_pb2_grpc.FunctionServiceStub(channel)
    fid = "g" + uuid.uuid4().hex[:10]
    fn = stub.CreateFunction(function_pb2.CreateFunctionRequest(function_id=fid, name="grpc", runtime="python-3.11"), metadata=md)
    assert fn.id == fid and fn.timeout == 15
    assert stub.GetFunction(function_pb2.GetFunctionRequest(function_id=fid), metadata=md).name == "grpc"
    page = stub.ListFunctions(function_pb2.ListFunctionsRequest(search=fid), metadata=md)
    assert page.total == 1 and page.functions[0].id == fid
    updated = stub.UpdateFunction(function_pb2.UpdateFunctionRequest(function_id=fid, name="renamed", timeout=20), metadata=md)
    assert (updated.name, updated.timeout) == ("renamed", 20)
    stub.DeleteFunction(function_pb2.DeleteFunctionRequest(function_id=fid), metadata=md)
    runtimes = runtime_pb2_grpc.RuntimeServiceStub(channel).ListRuntimes(runtime_pb2.ListRuntimesRequest(), metadata=md)
    assert runtimes.total >= 2


def test_real_status_codes_with_appwrite_error_trailer(channel, md):
    stub = function_pb2_grpc.FunctionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetFunction(function_pb2.GetFunctionRequest(function_id="missing"), metadata=md)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    trailer = dict(caught.value.trailing_metadata())["x-appwrite-error"]
    assert json.loads(trailer)["type"] == "function_not_found"

    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateFunction(function_pb2.CreateFunctionRequest(function_id="-x", name="n", runtime="python-3.11"), metadata=md)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.RpcError) as caught:
        stub.ListFunctions(function_pb2.ListFunctionsRequest(), metadata=(("x-appwrite-project", "default"),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    deployments = deployment_pb2_grpc.DeploymentServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        deployments.GetDeployment(deployment_pb2.GetDeploymentRequest(function_id="f", deployment_id="d"), metadata=md)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_duplicate_is_already_exists(channel, md):
    stub = function_pb2_grpc.FunctionServiceStub(channel)
    request = function_pb2.CreateFunctionRequest(function_id="d" + uuid.uuid4().hex[:10], name="n", runtime="python-3.11")
    stub.CreateFunction(request, metadata=md)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateFunction(request, metadata=md)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "functions.v1.FunctionService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"functions.v1.FunctionService", "functions.v1.DeploymentService", "functions.v1.ExecutionService",
            "functions.v1.RuntimeService", "grpc.health.v1.Health"} <= names
