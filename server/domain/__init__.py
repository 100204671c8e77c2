"""The service's rules: validation, permissions and lifecycles.

Domain code knows nothing about gRPC or HTTP; it raises `ApiError` and works
on `server.store` models.
"""
