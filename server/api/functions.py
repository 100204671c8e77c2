"""FunctionService: functions CRUD."""

from __future__ import annotations

from functions.v1 import function_pb2 as pb
from functions.v1 import function_pb2_grpc
from google.protobuf import empty_pb2

from server.api import convert
from server.api.endpoint import ServicerBase, endpoint, optional
from server.domain.auth import Caller, Scope
from server.domain.functions import FunctionInput, FunctionRules


def _input(request) -> FunctionInput:
    return FunctionInput(
        name=request.name,
        execute=list(request.execute),
        vars=dict(request.vars),
        events=list(request.events),
        schedule=request.schedule,
        timeout=optional(request, "timeout"),
    )


class FunctionServicer(ServicerBase, function_pb2_grpc.FunctionServiceServicer):
    def __init__(self, rules: FunctionRules, **base):
        super().__init__(**base)
        self.rules = rules

    @endpoint(Scope.FUNCTIONS_READ)
    def ListFunctions(self, request: pb.ListFunctionsRequest, caller: Caller):
        page = self.rules.list(
            caller.project,
            search=request.search,
            limit=optional(request, "limit"),
            offset=request.offset,
            cursor=request.cursor,
            cursor_direction=request.cursor_direction,
            order_type=request.order_type,
        )
        return pb.ListFunctionsResponse(total=page.total, functions=[convert.function(f) for f in page.items])

    @endpoint(Scope.FUNCTIONS_WRITE, http_status=201)
    def CreateFunction(self, request: pb.CreateFunctionRequest, caller: Caller):
        fn = self.rules.create(caller.project, request.function_id, request.runtime, _input(request))
        return convert.function(fn)

    @endpoint(Scope.FUNCTIONS_READ)
    def GetFunction(self, request: pb.GetFunctionRequest, caller: Caller):
        return convert.function(self.rules.get(caller.project, request.function_id))

    @endpoint(Scope.FUNCTIONS_WRITE)
    def UpdateFunction(self, request: pb.UpdateFunctionRequest, caller: Caller):
        fn = self.rules.update(caller.project, request.function_id, _input(request))
        return convert.function(fn)

    @endpoint(Scope.FUNCTIONS_WRITE, http_status=204)
    def DeleteFunction(self, request: pb.DeleteFunctionRequest, caller: Caller):
        self.rules.delete(caller.project, request.function_id)
        return empty_pb2.Empty()
