"""Parameter validators with Appwrite 0.13's rules and messages.

Each check raises `ApiError` 400 `general_argument_invalid` with the text
`Invalid <param>: <description>` that Appwrite's validators produced.
"""

from __future__ import annotations

import json
import re
import secrets
import time

from croniter import croniter

from server.domain.errors import invalid_argument, missing_argument

KEY_DESCRIPTION = (
    "Parameter must contain at most 36 chars. Valid chars are a-z, A-Z, 0-9, period, hyphen, "
    "and underscore. Can't start with a special char"
)
UID_DESCRIPTION = (
    "UID must contain at most 36 chars. Valid chars are a-z, A-Z, 0-9, and underscore. "
    "Can't start with a leading underscore"
)
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,35}$")
UNIQUE = "unique()"


def new_id() -> str:
    """A 20-hex-character ID: 13 of time (like PHP's uniqid) + 7 random."""
    now = time.time()
    stamp = "%8x%05x" % (int(now), int((now - int(now)) * 1_000_000))
    return stamp + secrets.token_hex(4)[:7]


def custom_id(name: str, value: str) -> str:
    """A client-chosen ID, or a generated one for "unique()"."""
    if value == "":
        raise missing_argument(name)
    if value == UNIQUE:
        return new_id()
    if not _KEY.match(value):
        raise invalid_argument(name, KEY_DESCRIPTION)
    return value


def uid(name: str, value: str) -> str:
    """An ID naming an existing resource (path parameters, cursors)."""
    if not _KEY.match(value):
        raise invalid_argument(name, UID_DESCRIPTION)
    return value


def text(name: str, value: str, max_length: int, required: bool = False) -> str:
    if required and value == "":
        raise missing_argument(name)
    if len(value) > max_length:
        raise invalid_argument(name, f"Value must be a valid string and no longer than {max_length} chars")
    return value


def int_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise invalid_argument(name, f"Value must be a valid range between {low} and {high}")
    return value


def one_of(name: str, value: str, allowed: list[str] | tuple[str, ...]) -> str:
    if value not in allowed:
        raise invalid_argument(name, f"Value must be one of ({', '.join(allowed)})")
    return value


def string_list(name: str, values: list[str], max_items: int, max_length: int, allowed: set[str] | None = None) -> list[str]:
    if len(values) > max_items:
        raise invalid_argument(name, f"Value must a valid array no longer than {max_items} items and Value must be a valid string and no longer than {max_length} chars")
    for value in values:
        if len(value) > max_length:
            raise invalid_argument(name, f"Value must a valid array and Value must be a valid string and no longer than {max_length} chars")
        if allowed is not None and value not in allowed:
            raise invalid_argument(name, f"Value must a valid array and Value must be one of ({', '.join(sorted(allowed))})")
    return list(values)


def string_map(name: str, values: dict[str, str], max_bytes: int) -> dict[str, str]:
    encoded = json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()
    if len(encoded) > max_bytes:
        raise invalid_argument(name, f"Value must be a valid object no larger than {max_bytes} bytes as JSON.")
    for key in values:
        if key == "":
            raise invalid_argument(name, "Value must be a valid object with non-empty keys.")
    return dict(values)


def cron(name: str, value: str) -> str:
    """A standard 5-field CRON expression or an @-macro; "" means none."""
    if value == "":
        return value
    fields = value.split()
    is_macro = value.startswith("@") and len(fields) == 1
    if not (is_macro or len(fields) == 5) or not croniter.is_valid(value):
        raise invalid_argument(name, "String must be a valid cron expression")
    return value


def next_run(schedule: str, now: float | None = None) -> int:
    """Unix seconds of the next run of `schedule` after `now` (UTC)."""
    return int(croniter(schedule, time.time() if now is None else now).get_next(float))


def last_run(schedule: str, now: float) -> int:
    """Unix seconds of the latest run of `schedule` at or before `now` (UTC)."""
    return int(croniter(schedule, now + 1).get_prev(float))
