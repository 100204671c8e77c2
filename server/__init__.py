"""Functions service: gRPC server (grpcio) with Peewee storage and Docker execution."""
