"""Files kept in the database (FUNCTIONS_STORAGE=database), so every host
of a deployment over one PostgreSQL can fetch them: code packages and build
outputs, as OpenWhisk keeps action code in CouchDB.

A blob is a key and its bytes in parts of PART_BYTES (bytea on PostgreSQL,
BLOB on SQLite), so neither side ever holds more than a part in memory.
Writing a blob replaces it in one transaction: a reader sees all of the
old parts or all of the new ones.
"""

from __future__ import annotations

from pathlib import Path

from server.store.db import database
from server.store.models import BlobPart

PART_BYTES = 4 * 1024 * 1024


def put(key: str, source: Path) -> int:
    """Store the file at `source` under `key`; returns its size."""
    size = 0
    with database.atomic(), open(source, "rb") as fh:
        BlobPart.delete().where(BlobPart.key == key).execute()
        for part, chunk in enumerate(iter(lambda: fh.read(PART_BYTES), b"")):
            BlobPart.insert(key=key, part=part, data=chunk).execute()
            size += len(chunk)
    return size


def get(key: str, dest: Path) -> bool:
    """Write the blob to `dest`; False if there is none."""
    count = BlobPart.select().where(BlobPart.key == key).count()
    if not count:
        return False
    with open(dest, "wb") as fh:
        for part in range(count):  # one part per query: memory stays bounded
            row = BlobPart.get_or_none((BlobPart.key == key) & (BlobPart.part == part))
            if row is None:
                raise FileNotFoundError(f"blob {key} lost part {part} while it was read")
            fh.write(bytes(row.data))
    return True


def delete(*keys: str) -> None:
    if keys:
        BlobPart.delete().where(BlobPart.key.in_(list(keys))).execute()
