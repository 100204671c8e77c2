"""ExecutionService: run functions and read their executions."""

from __future__ import annotations

import asyncio

from functions.v1 import execution_pb2 as pb
from functions.v1 import execution_pb2_grpc

from server.api import convert
from server.api.endpoint import ServicerBase, endpoint, optional
from server.domain.auth import Caller
from server.domain.executions import ExecutionRules
from server.domain.runner import ExecutionRunner


class ExecutionServicer(ServicerBase, execution_pb2_grpc.ExecutionServiceServicer):
    def __init__(self, rules: ExecutionRules, runner: ExecutionRunner, **base):
        super().__init__(**base)
        self.rules = rules
        self.runner = runner

    @endpoint(scope=None, http_status=201)
    async def CreateExecution(self, request: pb.CreateExecutionRequest, caller: Caller, context):
        """Async (the default): 201 with the waiting execution at once. Sync:
        waits for the function and answers 201 with the finished execution."""
        run_async = optional(request, "async")
        run = self.rules.runnable(caller, request.function_id, request.data, cached_only=True)
        if run is None:
            run = await self.blocking(self.rules.runnable, caller, request.function_id, request.data)
        if run_async is None or run_async:
            execution = await self.runner.submit(run, caller, request.data)
        else:
            # Shielded: if the caller hangs up, the run still finishes and is recorded.
            execution = await asyncio.shield(self.runner.run_sync(run, caller, request.data))
        return convert.execution(execution)

    @endpoint(scope=None)
    def GetExecution(self, request: pb.GetExecutionRequest, caller: Caller):
        return convert.execution(self.rules.get(caller, request.function_id, request.execution_id))

    @endpoint(scope=None)
    def ListExecutions(self, request: pb.ListExecutionsRequest, caller: Caller):
        page = self.rules.list(
            caller, request.function_id, search=request.search,
            limit=optional(request, "limit"), offset=request.offset,
            cursor=request.cursor, cursor_direction=request.cursor_direction,
        )
        return pb.ListExecutionsResponse(total=page.total, executions=[convert.execution(e) for e in page.items])
