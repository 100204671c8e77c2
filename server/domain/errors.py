"""API errors: an HTTP status, an Appwrite error type and a message.

Every error a client can get is built here, one factory per case, grouped
by Appwrite type, so a type and its status never drift apart. The gRPC
layer turns an `ApiError` into a gRPC status plus the `x-appwrite-error`
trailer that the gateway renders as Appwrite's error body; errors of other
layers (the engine's) are translated at that edge (server.api.errors).
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str):
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.type!r}, {self.message!r})"


# ---- general_* ------------------------------------------------------------------

def invalid_argument(name: str, description: str) -> ApiError:
    return ApiError(400, "general_argument_invalid", f"Invalid {name}: {description}")


def missing_argument(name: str) -> ApiError:
    return ApiError(400, "general_argument_invalid", f'Param "{name}" is not optional.')


def undecodable_request() -> ApiError:
    return bad_request("Invalid request: a parameter is not valid UTF-8 text or the request is malformed.")


def bad_request(message: str) -> ApiError:
    """A malformed request (the body, a form field, the upload itself)."""
    return ApiError(400, "general_argument_invalid", message)


def cursor_not_found(label: str, cursor: str) -> ApiError:
    return ApiError(400, "general_cursor_not_found", f"{label} '{cursor}' for the 'cursor' value not found.")


def missing_scope(who: str, role: str, scope: str) -> ApiError:
    return ApiError(401, "general_unauthorized_scope", f"{who} (role: {role}) missing scope ({scope})")


def rate_limited(message: str = "Too many requests") -> ApiError:
    return ApiError(429, "general_rate_limit_exceeded", message)


def server_error() -> ApiError:
    return ApiError(500, "general_unknown", "Server Error")


def unavailable(message: str) -> ApiError:
    return ApiError(503, "general_server_error", message)


def shutting_down() -> ApiError:
    return unavailable("The service is shutting down.")


def no_container_engine() -> ApiError:
    return unavailable("The Docker engine is unreachable: functions cannot run.")


def too_many_executions() -> ApiError:
    return rate_limited("Too many executions of this function at once; retry later.")


# ---- project_*, user_* -----------------------------------------------------------

def project_not_found() -> ApiError:
    return ApiError(404, "project_not_found", "Project not found")


def user_unauthorized(message: str) -> ApiError:
    return ApiError(401, "user_unauthorized", message)


def jwt_invalid(detail: str) -> ApiError:
    return ApiError(401, "user_jwt_invalid", f"Failed to verify JWT. {detail}")


# ---- function_*, deployment_*, build_*, execution_* ----------------------------------

def function_not_found() -> ApiError:
    return ApiError(404, "function_not_found", "Function not found")


def function_already_exists() -> ApiError:
    return ApiError(409, "function_already_exists", "Function with the requested ID already exists.")


def runtime_unsupported(runtime: str) -> ApiError:
    return ApiError(400, "function_runtime_unsupported", f'Runtime "{runtime}" is not supported')


def deployment_not_found(message: str = "Deployment not found") -> ApiError:
    return ApiError(404, "deployment_not_found", message)


def build_not_found() -> ApiError:
    return ApiError(404, "build_not_found", "Build not found")


def build_not_ready() -> ApiError:
    return ApiError(400, "build_not_ready", "Build not ready")


def build_not_failed() -> ApiError:
    return ApiError(400, "build_in_progress", "Build not failed")


def execution_not_found() -> ApiError:
    return ApiError(404, "execution_not_found", "Execution not found")


# ---- storage_* (uploads) ------------------------------------------------------------

def file_empty() -> ApiError:
    return ApiError(400, "storage_file_empty", "No file sent")


def file_type_unsupported() -> ApiError:
    return ApiError(400, "storage_file_type_unsupported", "The code must be a gzip-compressed tar archive (.tar.gz).")


def invalid_file(message: str) -> ApiError:
    return ApiError(400, "storage_invalid_file", message)


def invalid_file_size(message: str) -> ApiError:
    return ApiError(400, "storage_invalid_file_size", message)


def file_too_large(limit: int) -> ApiError:
    return invalid_file_size(f"File size not allowed: the limit is {limit} bytes.")


def storage_quota_exceeded(limit_bytes: int) -> ApiError:
    return invalid_file_size(
        f"The project's storage quota of {limit_bytes // (1024 * 1024)} MB (FUNCTIONS_PROJECT_STORAGE_MB) is used up: "
        "delete deployments to make room.")


def invalid_content_range(message: str = "Invalid content-range header") -> ApiError:
    return ApiError(400, "storage_invalid_content_range", message)
