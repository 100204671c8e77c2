"""EventService: internal services publish events."""

from __future__ import annotations

from functions.v1 import event_pb2 as pb
from functions.v1 import event_pb2_grpc

from server.api.endpoint import ServicerBase, endpoint
from server.domain.auth import Caller, Scope
from server.domain.events import EventBus


class EventServicer(ServicerBase, event_pb2_grpc.EventServiceServicer):
    def __init__(self, bus: EventBus, **base):
        super().__init__(**base)
        self.bus = bus

    @endpoint(Scope.EVENTS_WRITE, http_status=201)
    def PublishEvent(self, request: pb.PublishEventRequest, caller: Caller):
        published = self.bus.publish(caller.project, request.event, request.data, request.user_id, request.source,
                                     request.id, depth=request.depth)
        event = published.event
        return pb.Event(id=event.uid, event=event.name, source=event.source, source_id=event.source_id, data=event.data,
                        user_id=event.user_id, depth=event.depth, matched=event.matched, duplicate=published.duplicate,
                        date_created=event.date_created)
