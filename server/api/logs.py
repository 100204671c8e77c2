"""LogService: live logs of executions, of a function, and of builds
(server-streaming; Server-Sent Events through Envoy)."""

from __future__ import annotations

import functools

from functions.v1 import log_pb2 as pb
from functions.v1 import log_pb2_grpc

from server.api.endpoint import ServicerBase, endpoint, optional
from server.domain import logstreams
from server.domain.auth import Caller, Scope
from server.domain.deployments import DeploymentRules
from server.domain.executions import ExecutionRules
from server.domain.livelogs import End, Line
from server.domain.logstreams import Dropped, LogStreams


class LogServicer(ServicerBase, log_pb2_grpc.LogServiceServicer):
    def __init__(self, streams: LogStreams, executions: ExecutionRules, deployments: DeploymentRules, **base):
        super().__init__(**base)
        self.streams = streams
        self.executions = executions
        self.deployments = deployments

    @endpoint(scope=None)
    async def StreamExecutionLogs(self, request: pb.StreamExecutionLogsRequest, caller: Caller, context):
        """Authorized as reading the execution (404 before any message)."""
        ex = await self.blocking(self.executions.get, caller, request.function_id, request.execution_id)
        messages = self.streams.follow(
            caller.project, ex.uid, request.since_seq, _follows(request),
            state=functools.partial(self.blocking, logstreams.execution_state, caller.project, ex.uid))
        await _write_all(context, messages, execution=True)

    @endpoint(Scope.FUNCTIONS_READ)
    async def StreamFunctionLogs(self, request: pb.StreamFunctionLogsRequest, caller: Caller, context):
        await self.blocking(self.executions.functions.get, caller.project, request.function_id)
        await _write_all(context, self.streams.tail(caller.project, request.function_id), execution=True)

    @endpoint(Scope.FUNCTIONS_READ)
    async def StreamBuildLogs(self, request: pb.StreamBuildLogsRequest, caller: Caller, context):
        dep, _ = await self.blocking(self.deployments.get, caller.project, request.function_id, request.deployment_id)
        messages = self.streams.follow(
            caller.project, dep.uid, request.since_seq, _follows(request),
            state=functools.partial(self.blocking, logstreams.build_state, caller.project, dep.uid, dep.build))
        await _write_all(context, messages, execution=False)


def _follows(request) -> bool:
    """`follow` defaults to true: an absent field is not false."""
    follow = optional(request, "follow")
    return follow is None or follow


async def _write_all(context, messages, execution: bool) -> None:
    # Headers at once: a client (through Envoy, the HTTP status) knows the
    # stream is open before the first message, which may be 15 s away.
    await context.send_initial_metadata(())
    async for message in messages:
        await context.write(_message(message, execution))


def _message(message, execution: bool) -> pb.LogMessage:
    ids = {"execution_id" if execution else "deployment_id": message.source} if message.source else {}
    if isinstance(message, Line):
        return pb.LogMessage(type="line", stream=message.stream, text=message.text, seq=message.seq,
                             timestamp=float(message.time_ms), **ids)
    if isinstance(message, End):
        return pb.LogMessage(type="end", status=message.status, status_code=message.status_code, time=message.time, **ids)
    if isinstance(message, Dropped):
        return pb.LogMessage(type="dropped", count=message.count, **ids)
    return pb.LogMessage(type="heartbeat", **ids)
