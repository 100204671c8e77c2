"""Storage: Peewee models and the queries the domain needs.

SQLite (WAL) is the embedded default, PostgreSQL the scale-out store; both go
through the same models. `open_database` binds them and creates or upgrades
the schema idempotently.
"""

from server.store.db import database, open_database, close_database

__all__ = ["database", "open_database", "close_database"]
