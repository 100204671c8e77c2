"""Writes build/openapi.json, the OpenAPI 3 description of the REST API, from
the descriptor set build/functions.pb (scripts/gen.sh runs it after protoc).

Nothing here is a copy of the API: paths, parameters and bodies come from the
`google.api.http` rules, schemas from the messages (JSON names, proto3
optional, enums, repeated, maps, well-known types), descriptions from the
leading comments, success codes from the servicers' `@endpoint(http_status=)`
in server/api/*.py. Schemas describe what Envoy's transcoder prints with
`always_print_primitive_fields` (envoy.yaml): every scalar, repeated and map
field is always present; 64-bit integers are JSON strings, 32-bit ones numbers.

What the transcoder does not derive from the descriptor — client or server
streaming (the multipart upload) — is described by hand in EXCEPTIONS, the one
table of exceptions. A streaming method missing from it is an error.

Usage: python scripts/openapi.py [build/functions.pb] [build/openapi.json]
"""

from __future__ import annotations

import ast
import copy
import json
import re
import sys
import textwrap
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parent.parent
SERVICERS = REPO / "server" / "api"
OPENAPI_PATH = "/v1/openapi.json"  # where envoy.yaml serves the document

FDP = descriptor_pb2.FieldDescriptorProto

ERROR_REF = {"$ref": "#/components/schemas/Error"}

# Error statuses. The domain raises ApiError with 400, 401, 404, 409, 429, 500
# and 503 (server/domain); Envoy's own replies add 413 (body too large) and
# 503 (upstream down), both in the same shape (local_reply_config).
ERRORS_ALL = {
    "400": "Invalid parameters (general_argument_invalid, general_cursor_not_found, ...).",
    "401": "Missing or invalid credentials, or a missing scope (general_unauthorized_scope, user_unauthorized).",
    "404": "Unknown project, resource or route (project_not_found, function_not_found, ...).",
    "429": "Rate limit or overload (general_rate_limit_exceeded, ...).",
    "500": "Server error (general_unknown, general_server_error).",
    "503": "The service, a runtime or the gateway's upstream is unavailable.",
}
ERRORS_BODY = {"413": "Request body too large (storage_invalid_file_size)."}
ERRORS_CREATE = {"409": "A resource with the requested ID already exists."}

# The one table of exceptions: methods whose REST form the transcoder does not
# derive from the descriptor (streaming). Keyed by full method name; the value
# replaces what would be generated: `parameters` (appended to the path
# parameters), `requestBody`, and optionally `responses` overrides.
EXCEPTIONS: dict[str, dict] = {
    # Client streaming: Envoy streams the raw multipart/form-data body into
    # `body.data` pieces (server/domain/uploads.py parses it).
    "functions.v1.DeploymentService.CreateDeployment": {
        "parameters": [
            {
                "name": "Content-Range",
                "in": "header",
                "required": False,
                "description": "Chunked upload (5 MiB chunks): `bytes <start>-<end>/<total>`.",
                "schema": {"type": "string"},
            },
            {
                "name": "X-Appwrite-ID",
                "in": "header",
                "required": False,
                "description": "Chunked upload: the deployment ID answered for the first chunk, sent from the second chunk on.",
                "schema": {"type": "string"},
            },
        ],
        "requestBody": {
            "required": True,
            "description": "The code archive (tar.gz) and its settings, streamed.",
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["code", "entrypoint"],
                        "properties": {
                            "entrypoint": {"type": "string", "description": "Entrypoint file inside the archive, for example `main.py`."},
                            "code": {"type": "string", "format": "binary", "description": "Gzipped tar archive of the code."},
                            "activate": {
                                "type": "boolean",
                                "description": "Activate the deployment when its build is ready; `true`/`false`/`1`/`0` in any case.",
                            },
                        },
                    },
                    "encoding": {"code": {"contentType": "application/gzip, application/x-gzip, application/octet-stream"}},
                }
            },
        },
        "errors": ERRORS_BODY,
    },
    # Server streaming: Envoy sends each message as a Server-Sent Event.
    **{f"functions.v1.LogService.{name}": {
        "parameters": [
            *([{"name": "follow", "in": "query", "required": False, "schema": {"type": "boolean"},
                "description": "Keep the stream open until the run ends (default true); false returns what exists and ends."},
               {"name": "sinceSeq", "in": "query", "required": False,
                "schema": {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
                "description": "Resume after this line number."}] if resumable else []),
        ],
        "responses": {"200": {
            "description": "Server-Sent Events, one `data: <LogMessage JSON>` per message; the last one has type `end`.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }},
    } for name, resumable in (("StreamExecutionLogs", True), ("StreamFunctionLogs", False), ("StreamBuildLogs", True))},
}

# Well-known types as the protobuf JSON mapping prints them.
WELL_KNOWN = {
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    ".google.protobuf.FieldMask": {"type": "string"},
    ".google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    ".google.protobuf.Value": {},
    ".google.protobuf.ListValue": {"type": "array", "items": {}},
    ".google.protobuf.Empty": {"type": "object", "properties": {}, "additionalProperties": False},
    ".google.protobuf.Any": {"type": "object", "required": ["@type"], "properties": {"@type": {"type": "string"}}},
    ".google.protobuf.DoubleValue": {"type": "number", "nullable": True},
    ".google.protobuf.FloatValue": {"type": "number", "nullable": True},
    ".google.protobuf.Int64Value": {"type": "string", "format": "int64", "nullable": True},
    ".google.protobuf.UInt64Value": {"type": "string", "format": "uint64", "nullable": True},
    ".google.protobuf.Int32Value": {"type": "integer", "format": "int32", "nullable": True},
    ".google.protobuf.UInt32Value": {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295, "nullable": True},
    ".google.protobuf.BoolValue": {"type": "boolean", "nullable": True},
    ".google.protobuf.StringValue": {"type": "string", "nullable": True},
    ".google.protobuf.BytesValue": {"type": "string", "format": "byte", "nullable": True},
}

INT64 = {FDP.TYPE_INT64, FDP.TYPE_SINT64, FDP.TYPE_SFIXED64}
UINT64 = {FDP.TYPE_UINT64, FDP.TYPE_FIXED64}
INT32 = {FDP.TYPE_INT32, FDP.TYPE_SINT32, FDP.TYPE_SFIXED32}
UINT32 = {FDP.TYPE_UINT32, FDP.TYPE_FIXED32}


def scalar_schema(field: FDP) -> dict:
    t = field.type
    if t == FDP.TYPE_STRING:
        return {"type": "string"}
    if t == FDP.TYPE_BOOL:
        return {"type": "boolean"}
    if t in INT32:
        return {"type": "integer", "format": "int32"}
    if t in UINT32:
        return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295}
    # 64-bit integers print as JSON strings (requests accept both).
    if t in INT64:
        return {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
    if t in UINT64:
        return {"type": "string", "format": "uint64", "pattern": r"^[0-9]+$"}
    if t == FDP.TYPE_DOUBLE:
        return {"type": "number", "format": "double"}
    if t == FDP.TYPE_FLOAT:
        return {"type": "number", "format": "float"}
    if t == FDP.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    raise ValueError(f"no scalar schema for {field.name} ({t})")


def first_sentence(text: str) -> str:
    paragraph = " ".join(text.split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def comment(location) -> str | None:
    if location is None or not location.leading_comments.strip():
        return None
    return textwrap.dedent(location.leading_comments).strip()


class Generator:
    def __init__(self, descriptor_set: descriptor_pb2.FileDescriptorSet):
        self.files = list(descriptor_set.file)
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.docs: dict[str, str] = {}  # full name (".pkg.Msg.field") -> leading comment
        for f in self.files:
            self._index(f)
        self.schemas: dict[str, dict] = {}
        self.schema_names: dict[str, str] = {}  # full name -> component name

    # -- descriptor index -------------------------------------------------
    def _index(self, f: descriptor_pb2.FileDescriptorProto) -> None:
        locations = {tuple(loc.path): loc for loc in f.source_code_info.location}
        prefix = f".{f.package}" if f.package else ""

        def doc(name: str, path: tuple) -> None:
            text = comment(locations.get(path))
            if text:
                self.docs[name] = text

        def message(m, scope: str, path: tuple) -> None:
            name = f"{scope}.{m.name}"
            self.messages[name] = m
            doc(name, path)
            for i, field in enumerate(m.field):
                doc(f"{name}.{field.name}", path + (2, i))
            for i, nested in enumerate(m.nested_type):
                message(nested, name, path + (3, i))
            for i, e in enumerate(m.enum_type):
                enum(e, name, path + (4, i))

        def enum(e, scope: str, path: tuple) -> None:
            name = f"{scope}.{e.name}"
            self.enums[name] = e
            doc(name, path)

        for i, m in enumerate(f.message_type):
            message(m, prefix, (4, i))
        for i, e in enumerate(f.enum_type):
            enum(e, prefix, (5, i))
        for si, service in enumerate(f.service):
            doc(f"{prefix}.{service.name}", (6, si))
            for mi, method in enumerate(service.method):
                doc(f"{prefix}.{service.name}.{method.name}", (6, si, 2, mi))

    # -- schemas ------------------------------------------------------------
    def component(self, full_name: str) -> str:
        if full_name not in self.schema_names:
            short = full_name.rsplit(".", 1)[-1]
            taken = set(self.schema_names.values())
            self.schema_names[full_name] = short if short not in taken else full_name.lstrip(".")
        return self.schema_names[full_name]

    def ref(self, full_name: str) -> dict:
        if full_name in WELL_KNOWN:
            return copy.deepcopy(WELL_KNOWN[full_name])
        name = self.component(full_name)
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder against recursion
            if full_name in self.enums:
                self.schemas[name] = self.enum_schema(full_name)
            else:
                self.schemas[name] = self.message_schema(full_name)
        return {"$ref": f"#/components/schemas/{name}"}

    def enum_schema(self, full_name: str) -> dict:
        # Enums print as value names (always_print_enums_as_ints is off).
        schema = {"type": "string", "enum": [v.name for v in self.enums[full_name].value]}
        if full_name in self.docs:
            schema["description"] = self.docs[full_name]
        return schema

    def is_map(self, field: FDP) -> bool:
        return (
            field.type == FDP.TYPE_MESSAGE
            and field.label == FDP.LABEL_REPEATED
            and self.messages[field.type_name].options.map_entry
        )

    def value_schema(self, field: FDP) -> dict:
        if field.type == FDP.TYPE_MESSAGE:
            return self.ref(field.type_name)
        if field.type == FDP.TYPE_ENUM:
            return self.ref(field.type_name)
        if field.type == FDP.TYPE_GROUP:
            raise ValueError(f"groups are not supported ({field.name})")
        return scalar_schema(field)

    def field_schema(self, field: FDP, owner: str) -> dict:
        if self.is_map(field):
            entry = self.messages[field.type_name]
            value = next(f for f in entry.field if f.name == "value")
            schema = {"type": "object", "additionalProperties": self.value_schema(value)}
        elif field.label == FDP.LABEL_REPEATED:
            schema = {"type": "array", "items": self.value_schema(field)}
        else:
            schema = self.value_schema(field)
        description = self.docs.get(f"{owner}.{field.name}")
        if description:
            if "$ref" in schema:  # siblings of $ref are ignored in OpenAPI 3.0
                schema = {"allOf": [schema]}
            schema["description"] = description
        return schema

    @staticmethod
    def always_printed(field: FDP) -> bool:
        """Printed by the transcoder even when unset (always_print_primitive_fields):
        fields without presence (scalars, enums, repeated, maps)."""
        if field.label == FDP.LABEL_REPEATED:
            return True
        if field.proto3_optional or field.HasField("oneof_index"):
            return False
        return field.type != FDP.TYPE_MESSAGE

    def message_schema(self, full_name: str, exclude: frozenset = frozenset(), response: bool = True) -> dict:
        message = self.messages[full_name]
        properties = {}
        required = []
        for field in message.field:
            if field.name in exclude:
                continue
            properties[field.json_name] = self.field_schema(field, full_name)
            if response and self.always_printed(field):
                required.append(field.json_name)
        schema: dict = {"type": "object", "properties": properties}
        if response:
            schema["additionalProperties"] = False  # the transcoder prints declared fields only
        if required:
            schema["required"] = required
        if full_name in self.docs:
            schema["description"] = self.docs[full_name]
        return schema

    # -- operations ---------------------------------------------------------
    def field_path(self, message_name: str, dotted: str) -> list[FDP]:
        """The fields along a dotted path (`a.b`), from message_name."""
        fields = []
        current = message_name
        for part in dotted.split("."):
            message = self.messages[current]
            field = next((f for f in message.field if f.name == part), None)
            if field is None:
                raise ValueError(f"{message_name} has no field {dotted}")
            fields.append(field)
            current = field.type_name
        return fields

    def parameter_schema(self, field: FDP) -> dict:
        if field.type == FDP.TYPE_MESSAGE:
            if field.type_name in WELL_KNOWN:
                schema = copy.deepcopy(WELL_KNOWN[field.type_name])
                schema.pop("nullable", None)
                return schema
            raise ValueError(f"message field {field.name} cannot be a parameter")
        return self.value_schema(field)

    def query_parameters(self, message_name: str, exclude: set[str], prefix: str = "", json_prefix: str = "", depth: int = 0) -> list[dict]:
        """Query parameters: every field not bound to the path or the body;
        nested messages as dotted names (`a.b`), as the transcoder binds them."""
        if depth > 5:
            return []
        params = []
        for field in self.messages[message_name].field:
            path = f"{prefix}{field.name}"
            if path in exclude:
                continue
            description = self.docs.get(f"{message_name}.{field.name}")
            if field.type == FDP.TYPE_MESSAGE and field.type_name not in WELL_KNOWN:
                if field.label == FDP.LABEL_REPEATED:
                    continue  # repeated messages and maps cannot be query parameters
                params += self.query_parameters(field.type_name, exclude, f"{path}.", f"{json_prefix}{field.json_name}.", depth + 1)
                continue
            schema = self.parameter_schema(field)
            if field.label == FDP.LABEL_REPEATED:
                schema = {"type": "array", "items": schema}
            param = {"name": f"{json_prefix}{field.json_name}", "in": "query", "required": False, "schema": schema}
            if field.label == FDP.LABEL_REPEATED:
                param.update(style="form", explode=True)
            if description:
                param["description"] = description
            params.append(param)
        return params

    def operation(self, service_name: str, method, rule, method_bodies: dict[str, int]) -> tuple[str, str, dict]:
        full_method = f"{service_name}.{method.name}"
        verb = rule.WhichOneof("pattern")
        if verb == "custom":
            verb, template = rule.custom.kind.lower(), rule.custom.path
        else:
            template = getattr(rule, verb)
        input_name = method.input_type
        exception = EXCEPTIONS.get(full_method.lstrip("."))
        streaming = method.client_streaming or method.server_streaming
        if streaming and exception is None:
            raise SystemExit(f"{full_method} streams: describe its REST form in EXCEPTIONS of {__file__}")

        # Path: {field} and {field=pattern} segments, named by JSON name.
        bound: set[str] = set()
        parameters = []

        def path_param(match: re.Match) -> str:
            dotted, pattern = match.group(1), match.group(2)
            if pattern not in (None, "*"):
                raise SystemExit(f"{full_method}: path pattern {{{dotted}={pattern}}} is not supported")
            fields = self.field_path(input_name, dotted)
            bound.add(dotted)
            name = ".".join(f.json_name for f in fields)
            param = {"name": name, "in": "path", "required": True, "schema": self.parameter_schema(fields[-1])}
            description = self.docs.get(f"{self.owner_of(input_name, dotted)}.{fields[-1].name}")
            if description:
                param["description"] = description
            parameters.append(param)
            return "{" + name + "}"

        path = re.sub(r"\{([a-zA-Z0-9_.]+)(?:=([^}]*))?\}", path_param, template)

        operation: dict = {
            "operationId": method.name,
            "tags": [service_name.rsplit(".", 1)[-1]],
            "x-grpc-method": full_method.lstrip("."),
        }
        description = self.docs.get(full_method)
        if description:
            operation["summary"] = first_sentence(description).rstrip(".")
            operation["description"] = description

        errors = dict(ERRORS_ALL)
        if exception is not None:
            parameters += copy.deepcopy(exception.get("parameters", []))
            if "requestBody" in exception:
                operation["requestBody"] = copy.deepcopy(exception["requestBody"])
            errors.update(exception.get("errors", {}))
        else:
            body = rule.body
            if body == "*":
                schema = self.message_schema(input_name, exclude=frozenset(bound), response=False)
                operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
                errors.update(ERRORS_BODY)
            elif body:
                field = self.field_path(input_name, body)[-1]
                operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": self.field_schema(field, input_name)}}}
                parameters += self.query_parameters(input_name, bound | {body})
                errors.update(ERRORS_BODY)
            else:
                parameters += self.query_parameters(input_name, bound)
        if verb == "post" and any(f.name.endswith("_id") and f.name not in bound for f in self.messages[input_name].field):
            errors.update(ERRORS_CREATE)  # the client chooses the new resource's ID
        if parameters:
            operation["parameters"] = parameters

        status = method_bodies.get(method.name, 200)
        if method.output_type == ".google.protobuf.Empty" and status == 204:
            success = {"description": "Done; empty body."}
        else:
            if method.output_type == ".google.api.HttpBody":
                raise SystemExit(f"{full_method} answers HttpBody: describe it in EXCEPTIONS")
            success = {
                "description": first_sentence(self.docs.get(method.output_type, "Success.")),
                "content": {"application/json": {"schema": self.ref(method.output_type)}},
            }
        responses = {str(status): success}
        for code, text in sorted(errors.items()):
            responses[code] = {"$ref": f"#/components/responses/Error{code}"}
            self.error_responses[code] = text
        responses.update(copy.deepcopy(exception.get("responses", {})) if exception else {})
        operation["responses"] = responses
        return path, verb, operation

    def owner_of(self, message_name: str, dotted: str) -> str:
        fields = self.field_path(message_name, dotted)
        return message_name if len(fields) == 1 else fields[-2].type_name

    def document(self) -> dict:
        statuses = success_statuses()
        self.error_responses: dict[str, str] = {}
        paths: dict[str, dict] = {}
        names: set[str] = set()
        tags = []
        for f in self.files:
            prefix = f".{f.package}" if f.package else ""
            for service in f.service:
                service_name = f"{prefix}.{service.name}"
                tags.append({"name": service.name, **({"description": self.docs[service_name]} if service_name in self.docs else {})})
                for method in service.method:
                    if not method.options.HasExtension(annotations_pb2.http):
                        continue
                    rule = method.options.Extensions[annotations_pb2.http]
                    if method.name in names:
                        raise SystemExit(f"duplicate method name {method.name}: operationIds must be unique")
                    names.add(method.name)
                    for i, binding in enumerate([rule, *rule.additional_bindings]):
                        path, verb, op = self.operation(service_name, method, binding, statuses.get(service.name, {}))
                        if i:
                            op["operationId"] = f"{method.name}{i + 1}"
                        if verb in paths.setdefault(path, {}):
                            raise SystemExit(f"{verb.upper()} {path} is bound twice")
                        paths[path][verb] = op
        paths[OPENAPI_PATH] = {
            "get": {
                "operationId": "GetOpenApi",
                "tags": ["Meta"],
                "summary": "This document",
                "description": "The OpenAPI 3 description of this API, generated from the protos at build time (scripts/openapi.py).",
                "security": [],
                "responses": {"200": {"description": "The document.", "content": {"application/json": {"schema": {"type": "object"}}}}},
            }
        }
        tags.append({"name": "Meta", "description": "The API's own description."})
        error_schema = {
            "type": "object",
            "description": "Appwrite's error body; `code` equals the HTTP status.",
            "required": ["message", "code", "type", "version"],
            "properties": {
                "message": {"type": "string"},
                "code": {"type": "integer"},
                "type": {"type": "string"},
                "version": {"type": "string"},
            },
        }
        return {
            "openapi": "3.0.3",
            "info": {
                "title": "Functions Service",
                "version": "0.13",
                "description": "Appwrite 0.13's Functions API (REST through Envoy's gRPC-JSON transcoder). "
                "Generated from proto/functions/v1 by scripts/openapi.py; do not edit.",
            },
            "servers": [{"url": "/"}],
            "tags": tags,
            "security": [{"Project": [], "Key": []}, {"Project": [], "JWT": []}, {"Project": []}],
            "paths": dict(sorted(paths.items())),
            "components": {
                "securitySchemes": {
                    "Project": {"type": "apiKey", "in": "header", "name": "X-Appwrite-Project", "description": "Project ID."},
                    "Key": {"type": "apiKey", "in": "header", "name": "X-Appwrite-Key", "description": "API key with the call's scope."},
                    "JWT": {"type": "apiKey", "in": "header", "name": "X-Appwrite-JWT", "description": "End-user JWT (executions)."},
                },
                "responses": {
                    f"Error{code}": {"description": text, "content": {"application/json": {"schema": ERROR_REF}}}
                    for code, text in sorted(self.error_responses.items())
                },
                "schemas": {"Error": error_schema, **dict(sorted(self.schemas.items()))},
            },
        }


def success_statuses() -> dict[str, dict[str, int]]:
    """{servicer base service name: {method: http_status}} from the
    `@endpoint(..., http_status=N)` decorators in server/api/*.py."""
    result: dict[str, dict[str, int]] = {}
    for source in sorted(SERVICERS.glob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            services = [b.attr[: -len("Servicer")] for b in cls.bases if isinstance(b, ast.Attribute) and b.attr.endswith("ServiceServicer")]
            for fn in cls.body:
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for deco in fn.decorator_list:
                    if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "endpoint":
                        status = next((k.value.value for k in deco.keywords if k.arg == "http_status"), 200)
                        for service in services:
                            result.setdefault(service, {})[fn.name] = status
    return result


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else REPO / "build" / "functions.pb"
    target = Path(argv[2]) if len(argv) > 2 else REPO / "build" / "openapi.json"
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(source.read_bytes())
    document = Generator(descriptor_set).document()
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    temporary.replace(target)  # atomic: a running gateway never reads half a file
    print(f"generated {target.relative_to(REPO) if target.is_relative_to(REPO) else target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
