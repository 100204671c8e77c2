"""API errors: an HTTP status, an Appwrite error type and a message.

The gRPC layer turns an `ApiError` into a gRPC status plus the
`x-appwrite-error` trailer that the gateway renders as Appwrite's error body.
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


def invalid_argument(name: str, description: str) -> ApiError:
    return ApiError(400, "general_argument_invalid", f"Invalid {name}: {description}")


def missing_argument(name: str) -> ApiError:
    return ApiError(400, "general_argument_invalid", f'Param "{name}" is not optional.')


def project_not_found() -> ApiError:
    return ApiError(404, "project_not_found", "Project not found")


def function_not_found() -> ApiError:
    return ApiError(404, "function_not_found", "Function not found")


def function_already_exists() -> ApiError:
    return ApiError(409, "function_already_exists", "Function with the requested ID already exists.")


def deployment_not_found(message: str = "Deployment not found") -> ApiError:
    return ApiError(404, "deployment_not_found", message)


def build_not_found() -> ApiError:
    return ApiError(404, "build_not_found", "Build not found")


def build_not_ready() -> ApiError:
    return ApiError(400, "build_not_ready", "Build not ready")


def execution_not_found() -> ApiError:
    return ApiError(404, "execution_not_found", "Execution not found")


def cursor_not_found(label: str, cursor: str) -> ApiError:
    return ApiError(400, "general_cursor_not_found", f"{label} '{cursor}' for the 'cursor' value not found.")


def server_error() -> ApiError:
    return ApiError(500, "general_unknown", "Server Error")
