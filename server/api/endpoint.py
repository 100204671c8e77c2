"""What every RPC shares: authentication, blocking work off the event loop,
success codes for REST, and errors in Appwrite's shape.

Errors: the domain raises `ApiError`; the client gets the matching gRPC
status, and the `x-appwrite-error` trailer carries Appwrite's JSON body, which
the gateway's Lua filter turns into the REST response. Nothing may send
initial metadata before an abort (the response must stay trailers-only).

Success: `x-http-code` in the initial metadata tells the gateway to answer
201 or 204 instead of 200.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging

import grpc

from server.api.errors import to_api_error
from server.api.services import Undecodable
from server.concurrency import Blocking
from server.domain.auth import Authenticator, Caller, Scope, client_address
from server.domain.errors import ApiError, server_error, undecodable_request

log = logging.getLogger(__name__)

GRPC_STATUS_FOR_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    416: grpc.StatusCode.OUT_OF_RANGE,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


async def abort_with(context: grpc.aio.ServicerContext, error: ApiError, version: str) -> None:
    body = json.dumps({"message": error.message, "code": error.status, "type": error.type, "version": version})
    code = GRPC_STATUS_FOR_HTTP.get(error.status, grpc.StatusCode.INTERNAL)
    await context.abort(code, error.message, trailing_metadata=(("x-appwrite-error", body),))


class ServicerBase:
    """Shared plumbing for servicers; see `endpoint`."""

    def __init__(self, blocking: Blocking, error_version: str, authenticator: Authenticator, gateway_secret: str = ""):
        self.blocking = blocking
        self.error_version = error_version
        self.authenticator = authenticator
        self.gateway_secret = gateway_secret

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        metadata = metadata_of(context)
        address = client_address(metadata, context.peer() or "", self.gateway_secret)
        caller = self.authenticator.cached(metadata, address)  # no thread hop when nothing needs the DB
        return caller if caller is not None else await self.blocking(self.authenticator, metadata, address)

    async def fail(self, context: grpc.aio.ServicerContext, error: BaseException, rpc: str) -> None:
        api_error = to_api_error(error)
        if api_error is None:
            log.exception("unhandled error in %s", rpc, exc_info=error)
            api_error = server_error()
        elif api_error.status >= 500:
            log.error("%s failed: %s", rpc, api_error.message)
        await abort_with(context, api_error, self.error_version)


def optional(message, field: str):
    """A proto3 `optional` field's value, or None when the client left it out."""
    return getattr(message, field) if message.HasField(field) else None


def endpoint(scope: Scope | None, http_status: int = 200):
    """Decorate an RPC handler with authentication, the scope check, errors
    and the REST success code.

    A plain `(self, request, caller)` handler is blocking work and runs on the
    blocking pool. An `async (self, request, caller, context)` handler runs on
    the event loop (streams, waiting on containers) and gets the context for
    its metadata. `scope=None` leaves the check to the handler (executions,
    where end users may call too).
    """

    def wrap(handler):
        is_async = inspect.iscoroutinefunction(handler)

        @functools.wraps(handler)
        async def rpc(self: ServicerBase, request, context):
            try:
                caller = await self.authenticate(context)
                if scope is not None:
                    caller.require(scope)
                if isinstance(request, Undecodable):
                    raise undecodable_request()
                if is_async:
                    response = await handler(self, request, caller, context)
                else:
                    response = await self.blocking(handler, self, request, caller)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - every error becomes an API error
                await self.fail(context, error, handler.__name__)
                return None
            if http_status != 200:
                await context.send_initial_metadata((("x-http-code", str(http_status)),))
            return response

        return rpc

    return wrap
