"""DeploymentService: uploads (client streaming), builds, activation."""

from __future__ import annotations

import asyncio

from google.protobuf import empty_pb2

from functions.v1 import deployment_pb2 as pb
from functions.v1 import deployment_pb2_grpc

from server.api import convert
from server.api.endpoint import ServicerBase, endpoint, metadata_of, optional
from server.api.services import require_decoded
from server.domain.auth import Caller, Scope
from server.domain.deployments import DeploymentRules
from server.domain import errors


class DeploymentServicer(ServicerBase, deployment_pb2_grpc.DeploymentServiceServicer):
    def __init__(self, rules: DeploymentRules, **base):
        super().__init__(**base)
        self.rules = rules

    @endpoint(Scope.FUNCTIONS_READ)
    def ListDeployments(self, request: pb.ListDeploymentsRequest, caller: Caller):
        page = self.rules.list(
            caller.project, request.function_id, search=request.search,
            limit=optional(request, "limit"), offset=request.offset, cursor=request.cursor,
            cursor_direction=request.cursor_direction, order_type=request.order_type,
        )
        return pb.ListDeploymentsResponse(total=page.total, deployments=[convert.deployment(d, b) for d, b in page.items])

    @endpoint(Scope.FUNCTIONS_WRITE, http_status=201)
    async def CreateDeployment(self, request_iterator, caller: Caller, context):
        """Streams the body to disk piece by piece; the first message carries
        the function ID (and, from gRPC clients, entrypoint and activate)."""
        try:
            first = require_decoded(await request_iterator.__anext__())
        except StopAsyncIteration:
            raise errors.file_empty() from None
        upload = await self.blocking(
            self.rules.begin_upload, caller.project, first.function_id, metadata_of(context),
            first.body.content_type, first.entrypoint, first.activate,
        )
        try:
            await self.blocking(upload.feed, first.body.data)
            async for message in request_iterator:
                await self.blocking(upload.feed, require_decoded(message).body.data)
            deployment = await self.blocking(upload.finish)
        except asyncio.CancelledError:
            # The client went away, maybe while a feed still runs on its thread:
            # the abort waits for it there (Upload's lock), off the event loop.
            self.blocking.submit(upload.abort)
            raise
        except Exception:
            await self.blocking(upload.abort)
            raise
        return convert.deployment(deployment, await self.blocking(self.rules.build_of, deployment))

    @endpoint(Scope.FUNCTIONS_READ)
    def GetDeployment(self, request: pb.GetDeploymentRequest, caller: Caller):
        deployment, build = self.rules.get(caller.project, request.function_id, request.deployment_id)
        return convert.deployment(deployment, build)

    @endpoint(Scope.FUNCTIONS_WRITE)
    def ActivateDeployment(self, request: pb.ActivateDeploymentRequest, caller: Caller):
        return convert.function(self.rules.activate(caller.project, request.function_id, request.deployment_id))

    @endpoint(Scope.FUNCTIONS_WRITE, http_status=204)
    def DeleteDeployment(self, request: pb.DeleteDeploymentRequest, caller: Caller):
        self.rules.delete(caller.project, request.function_id, request.deployment_id)
        return empty_pb2.Empty()

    @endpoint(Scope.FUNCTIONS_WRITE, http_status=204)
    def RetryBuild(self, request: pb.RetryBuildRequest, caller: Caller):
        self.rules.retry_build(caller.project, request.function_id, request.deployment_id, request.build_id)
        return empty_pb2.Empty()
