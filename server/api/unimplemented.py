"""Servicers for services whose RPCs are not built yet.

Each RPC answers UNIMPLEMENTED with Appwrite's error body (REST: 501), so
clients see a clear error instead of fake data.
"""

from __future__ import annotations

import grpc

from server.api.endpoint import abort_with
from server.domain.errors import not_implemented


def unimplemented_servicer(base_class: type, service_name: str, version: str):
    """An instance of `base_class` (a generated *Servicer) whose every RPC aborts."""

    def make(method_name: str):
        async def rpc(self, request, context: grpc.aio.ServicerContext):
            await abort_with(context, not_implemented(f"{service_name}.{method_name}"), version)

        rpc.__name__ = method_name
        return rpc

    methods = {
        name: make(name)
        for name in dir(base_class)
        if not name.startswith("_") and callable(getattr(base_class, name))
    }
    return type(f"Unimplemented{base_class.__name__}", (base_class,), methods)()
