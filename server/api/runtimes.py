"""RuntimeService: the enabled runtimes."""

from __future__ import annotations

from functions.v1 import runtime_pb2 as pb
from functions.v1 import runtime_pb2_grpc

from server.api import convert
from server.api.endpoint import ServicerBase, endpoint
from server.domain.auth import Caller, Scope
from server.domain.runtimes import RuntimeCatalog


class RuntimeServicer(ServicerBase, runtime_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, catalog: RuntimeCatalog, **base):
        super().__init__(**base)
        self.catalog = catalog

    @endpoint(Scope.FUNCTIONS_READ)
    def ListRuntimes(self, request: pb.ListRuntimesRequest, caller: Caller):
        enabled = self.catalog.enabled()
        return pb.ListRuntimesResponse(total=len(enabled), runtimes=[convert.runtime(r) for r in enabled])
