"""Event payloads: a resource's JSON exactly as a REST client gets it
(Appwrite 0.13's `eventData` is the route's response)."""

from __future__ import annotations

from google.protobuf import json_format

from server.api import convert
from server.store import models


def event_payload(resource: object) -> str:
    if isinstance(resource, models.Function):
        message = convert.function(resource)
    elif isinstance(resource, models.Deployment):
        message = convert.deployment(resource, models.Build.find(resource.project, resource.build))
    elif isinstance(resource, models.Execution):
        message = convert.execution(resource)
    else:
        raise TypeError(f"no event payload for {type(resource).__name__}")
    # As Envoy's transcoder prints it: JSON names, fields at their defaults included.
    return json_format.MessageToJson(message, always_print_fields_with_no_presence=True, indent=None,
                                     ensure_ascii=False)
