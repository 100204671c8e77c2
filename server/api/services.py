"""Registers servicers from their service descriptors, with requests that
fail to decode answered in Appwrite's error format.

The generated `add_*Servicer_to_server` functions parse requests with
`FromString`, and a parse error never reaches our code: grpcio answers
INTERNAL with protobuf's own text (a REST client sent `%ff` in a path, which
the transcoder put into a proto3 string as the invalid UTF-8 byte 0xff).
Here a request that does not decode arrives as `Undecodable`, and the
endpoint decorator answers 400 `general_argument_invalid`.
"""

from __future__ import annotations

import grpc
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from server.domain.errors import undecodable_request

_HANDLER_OF_KIND = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class Undecodable:
    """A request message that failed to parse (invalid UTF-8, malformed bytes)."""

    __slots__ = ("type_name", "reason")

    def __init__(self, type_name: str, reason: str):
        self.type_name = type_name
        self.reason = reason


def require_decoded(request):
    """`request`, or ApiError 400 if it did not decode (streamed messages)."""
    if isinstance(request, Undecodable):
        raise undecodable_request()
    return request


def _tolerant_parser(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except pb_message.DecodeError as error:
            return Undecodable(message_class.DESCRIPTOR.full_name, str(error))

    return parse


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer) -> None:
    """Serve every method of `service` from the servicer's method of the same name."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        make = _HANDLER_OF_KIND[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_tolerant_parser(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
