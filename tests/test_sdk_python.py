"""The official Python client of the Appwrite 0.13 era, unmodified, against
the real service (Envoy + gRPC server): PyPI `appwrite==0.8.0`,
`appwrite.services.functions.Functions`, every function-management call.

What the client sends and expects: ../../shared/research/sdk-client.md.
In short: `content-type: application/json` and a `{}` body on every call,
GET included; query strings form-encoded (a space is `+`); success bodies
must be `application/json`; a 204 must carry a non-JSON content type (the
SDK then returns b''); errors must be JSON with a `message`, and the SDK
raises AppwriteException(message, HTTP status, type, body).

Every test works on its own functions (uuid-tagged ids and names, list
calls scoped by searching the tag) and deletes them afterwards, so the tests
share the session's service without seeing each other's data.
"""

from __future__ import annotations

import re
import uuid

import pytest
from appwrite.client import Client
from appwrite.exception import AppwriteException
from appwrite.services.functions import Functions

FUNCTION_FIELDS = {
    "$id", "execute", "name", "dateCreated", "dateUpdated", "status", "runtime", "deployment",
    "vars", "events", "schedule", "scheduleNext", "schedulePrevious", "timeout",
}
ID_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,35}$")
EVENTS = ["account.create", "database.documents.create"]


def make_functions(service, key: str | None = None) -> Functions:
    client = (
        Client()
        .set_endpoint(service.url)
        .set_project("default")
        .set_key(key if key is not None else service.bootstrap_key)
    )
    return Functions(client)


@pytest.fixture
def functions(service) -> Functions:
    return make_functions(service)


@pytest.fixture
def tag() -> str:
    """A unique lowercase word: prefix of this test's ids and names."""
    return "py" + uuid.uuid4().hex[:12]


@pytest.fixture
def created(functions):
    """Ids to delete after the test (already-deleted ones are fine)."""
    ids: list[str] = []
    yield ids
    for function_id in ids:
        try:
            functions.delete(function_id)
        except AppwriteException:
            pass


@pytest.fixture
def runtime(functions) -> str:
    """A runtime id this service offers (the set is configuration)."""
    return functions.list_runtimes()["runtimes"][0]["$id"]


def raises(call, *args, **kwargs) -> AppwriteException:
    with pytest.raises(AppwriteException) as info:
        call(*args, **kwargs)
    error = info.value
    # The SDK raised from a JSON error body: the full body is kept.
    assert isinstance(error.response, dict), error.response
    assert error.response["code"] == error.code, error.response
    assert error.response["message"] == error.message
    return error


def ids_of(listing: dict) -> list[str]:
    return [f["$id"] for f in listing["functions"]]


def test_list_runtimes(functions):
    result = functions.list_runtimes()
    assert result["total"] == len(result["runtimes"]) >= 1
    for runtime in result["runtimes"]:
        assert set(runtime) >= {"$id", "name", "version", "base", "image", "logo", "supports"}, runtime
        assert runtime["$id"] and isinstance(runtime["$id"], str)
        assert isinstance(runtime["supports"], list)
    assert len({r["$id"] for r in result["runtimes"]}) == result["total"]


def test_create_custom_id_with_every_option_then_get(functions, tag, created, runtime):
    function_id = f"{tag}-full.1_x"
    created.append(function_id)
    result = functions.create(
        function_id, f"{tag} Full", ["role:all", "team:abc"], runtime,
        vars={"API_KEY": "secret", "MODE": "test"}, events=EVENTS, schedule="*/5 * * * *", timeout=30,
    )
    assert set(result) == FUNCTION_FIELDS, result
    assert result["$id"] == function_id
    assert result["name"] == f"{tag} Full"
    assert result["execute"] == ["role:all", "team:abc"]
    assert result["runtime"] == runtime
    assert result["vars"] == {"API_KEY": "secret", "MODE": "test"}
    assert result["events"] == EVENTS
    assert result["schedule"] == "*/5 * * * *"
    assert result["timeout"] == 30
    assert result["status"] == "disabled"
    assert result["deployment"] == ""
    for field in ("dateCreated", "dateUpdated", "scheduleNext", "schedulePrevious", "timeout"):
        assert type(result[field]) is int, (field, result[field])
    assert result["dateUpdated"] == result["dateCreated"] > 0
    assert result["scheduleNext"] > 0  # a schedule was given
    assert result["scheduleNext"] % 300 == 0  # */5: on a 5-minute boundary
    assert functions.get(function_id) == result


def test_create_minimal_form_gets_defaults(functions, tag, created, runtime):
    function_id = f"{tag}min"
    created.append(function_id)
    result = functions.create(function_id, "Minimal", [], runtime)
    assert result["$id"] == function_id
    assert result["execute"] == []
    assert result["vars"] == {}
    assert result["events"] == []
    assert result["schedule"] == ""
    assert result["scheduleNext"] == 0
    assert result["schedulePrevious"] == 0
    assert result["timeout"] == 15
    assert result["status"] == "disabled"
    assert result["deployment"] == ""
    assert functions.get(function_id) == result


def test_create_with_unique_id(functions, tag, created, runtime):
    first = functions.create("unique()", f"{tag} one", ["role:all"], runtime, vars={"A": "1"}, timeout=5)
    created.append(first["$id"])
    second = functions.create("unique()", f"{tag} two", [], runtime)
    created.append(second["$id"])
    for result in (first, second):
        assert result["$id"] != "unique()"
        assert ID_PATTERN.match(result["$id"]), result["$id"]
    assert first["$id"] != second["$id"]
    assert first["vars"] == {"A": "1"} and first["timeout"] == 5
    assert functions.get(first["$id"]) == first
    assert functions.get(second["$id"]) == second


def test_list_search_with_space(functions, tag, created, runtime):
    # The SDK form-encodes the space as `+` (search=...alpha+...beta).
    wanted = functions.create(f"{tag}a", f"{tag}alpha {tag}beta", [], runtime)["$id"]
    unrelated = functions.create(f"{tag}c", f"{tag}delta", [], runtime)["$id"]
    created.extend([wanted, unrelated])
    listing = functions.list(search=f"{tag}alpha {tag}beta")
    assert wanted in ids_of(listing)
    assert unrelated not in ids_of(listing)
    assert listing["total"] == len(listing["functions"])
    assert listing["functions"][ids_of(listing).index(wanted)] == functions.get(wanted)
    # Search covers the id and the runtime too ("$id name runtime").
    assert ids_of(functions.list(search=f"{tag}c")) == [unrelated]
    assert {wanted, unrelated} <= set(ids_of(functions.list(search=f"{tag} {runtime}", limit=100)))
    assert ids_of(functions.list(search=f"{tag}delta")) == [unrelated]
    nothing = functions.list(search=f"{tag}nomatch")
    assert nothing == {"total": 0, "functions": []}


def test_list_paging_cursor_and_order(functions, tag, created, runtime):
    ids = [f"{tag}p{i}" for i in range(5)]
    for i, function_id in enumerate(ids):
        created.append(function_id)
        functions.create(function_id, f"{tag} page{i}", [], runtime)
    p0, p1, p2, p3, p4 = ids

    def page(**params) -> list[str]:
        listing = functions.list(search=tag, **params)
        assert listing["total"] == 5, (params, listing["total"])  # total ignores paging
        return ids_of(listing)

    assert page() == ids  # creation order
    assert page(limit=2) == [p0, p1]
    assert page(limit=2, offset=2) == [p2, p3]
    assert page(offset=4) == [p4]
    assert page(offset=5) == []
    assert page(cursor=p1) == [p2, p3, p4]
    assert page(cursor=p1, limit=1) == [p2]
    assert page(cursor=p3, cursor_direction="after") == [p4]
    assert page(cursor=p3, cursor_direction="before") == [p0, p1, p2]
    assert page(cursor=p3, cursor_direction="before", limit=1) == [p2]
    assert page(order_type="DESC") == [p4, p3, p2, p1, p0]
    assert page(order_type="ASC") == ids
    assert page(order_type="DESC", limit=2) == [p4, p3]
    assert page(order_type="DESC", cursor=p2) == [p1, p0]
    assert page(order_type="DESC", cursor=p2, cursor_direction="before") == [p4, p3]
    # Walking the pages with the cursor visits every function once.
    seen, cursor = [], None
    while True:
        batch = page(limit=2, **({"cursor": cursor} if cursor else {}))
        if not batch:
            break
        seen += batch
        cursor = batch[-1]
    assert seen == ids


def test_update_is_a_full_replace(functions, tag, created, runtime):
    function_id = f"{tag}upd"
    created.append(function_id)
    original = functions.create(
        function_id, "Before", ["role:all"], runtime,
        vars={"KEEP": "no"}, events=EVENTS, schedule="0 * * * *", timeout=120,
    )

    # PUT: the optional fields left out go back to their defaults.
    updated = functions.update(function_id, "After", ["role:member"])
    assert set(updated) == FUNCTION_FIELDS
    assert updated["$id"] == function_id
    assert updated["name"] == "After"
    assert updated["execute"] == ["role:member"]
    assert updated["vars"] == {}
    assert updated["events"] == []
    assert updated["schedule"] == ""
    assert updated["scheduleNext"] == 0
    assert updated["timeout"] == 15
    assert updated["runtime"] == runtime  # not updatable
    assert updated["dateCreated"] == original["dateCreated"]
    assert updated["dateUpdated"] >= original["dateUpdated"]
    assert functions.get(function_id) == updated

    again = functions.update(
        function_id, "Again", [], vars={"X": "y", "EMPTY": ""}, events=["functions.create"],
        schedule="30 2 * * *", timeout=900,
    )
    assert again["name"] == "Again"
    assert again["execute"] == []
    assert again["vars"] == {"X": "y", "EMPTY": ""}
    assert again["events"] == ["functions.create"]
    assert again["schedule"] == "30 2 * * *"
    assert again["scheduleNext"] > 0
    assert again["timeout"] == 900
    assert functions.get(function_id) == again
    assert ids_of(functions.list(search=f"{tag}upd")) == [function_id]


def test_delete_returns_empty_bytes(functions, tag, created, runtime):
    function_id = f"{tag}del"
    created.append(function_id)
    functions.create(function_id, f"{tag} doomed", [], runtime)
    # 204 with a non-JSON content type: the SDK returns the raw empty body.
    assert functions.delete(function_id) == b""
    assert raises(functions.get, function_id).code == 404
    assert functions.list(search=tag) == {"total": 0, "functions": []}
    assert raises(functions.delete, function_id).code == 404
    # The id is free again.
    assert functions.create(function_id, "reborn", [], runtime)["name"] == "reborn"


def test_not_found_errors(functions, tag):
    missing = f"{tag}missing"
    for call, args in [
        (functions.get, (missing,)),
        (functions.update, (missing, "x", [])),
        (functions.delete, (missing,)),
    ]:
        error = raises(call, *args)
        assert (error.code, error.type) == (404, "function_not_found"), (call.__name__, error.response)
        assert error.message == "Function not found"


def test_duplicate_id_conflicts(functions, tag, created, runtime):
    function_id = f"{tag}dup"
    created.append(function_id)
    first = functions.create(function_id, "first", [], runtime)
    error = raises(functions.create, function_id, "second", [], runtime)
    assert (error.code, error.type) == (409, "function_already_exists")
    assert functions.get(function_id) == first


@pytest.mark.parametrize(
    "case",
    [
        "id with space", "id starting with special char", "id over 36 chars", "unknown runtime",
        "timeout 0", "timeout over 900", "bad cron", "unknown event", "name over 128 chars",
    ],
)
def test_create_invalid_argument(functions, tag, created, runtime, case):
    function_id = f"{tag}bad"
    created.append(function_id)
    args = {"function_id": function_id, "name": "x", "execute": [], "runtime": runtime}
    args.update({
        "id with space": {"function_id": "bad id"},
        "id starting with special char": {"function_id": "-" + function_id},
        "id over 36 chars": {"function_id": "a" * 37},
        "unknown runtime": {"runtime": "cobol-1.0"},
        "timeout 0": {"timeout": 0},
        "timeout over 900": {"timeout": 901},
        "bad cron": {"schedule": "every minute"},
        "unknown event": {"events": ["no.such.event"]},
        "name over 128 chars": {"name": "n" * 129},
    }[case])
    error = raises(functions.create, **args)
    assert (error.code, error.type) == (400, "general_argument_invalid"), error.response
    assert error.message.startswith("Invalid "), error.message
    assert raises(functions.get, function_id).code == 404  # nothing was created


def test_update_invalid_argument_changes_nothing(functions, tag, created, runtime):
    function_id = f"{tag}keep"
    created.append(function_id)
    original = functions.create(function_id, "keep", [], runtime, timeout=20)
    error = raises(functions.update, function_id, "changed", [], timeout=10_000)
    assert (error.code, error.type) == (400, "general_argument_invalid")
    assert functions.get(function_id) == original


@pytest.mark.parametrize(
    "params, error_type",
    [
        ({"limit": 101}, "general_argument_invalid"),
        ({"offset": -1}, "general_argument_invalid"),
        ({"cursor_direction": "sideways"}, "general_argument_invalid"),
        ({"order_type": "RANDOM"}, "general_argument_invalid"),
        ({"search": "x" * 257}, "general_argument_invalid"),
        ({"cursor": "nosuchfunction"}, "general_cursor_not_found"),
    ],
)
def test_list_invalid_argument(functions, params, error_type):
    error = raises(functions.list, **params)
    assert (error.code, error.type) == (400, error_type), error.response


def test_key_without_write_scope_gets_401(service, functions, tag, created, runtime):
    function_id = f"{tag}scoped"
    created.append(function_id)
    existing = functions.create(function_id, "scoped", [], runtime)
    read_only = make_functions(service, service.create_key("default", scopes="functions.read"))

    assert read_only.get(function_id) == existing
    assert ids_of(read_only.list(search=function_id)) == [function_id]
    assert read_only.list_runtimes()["total"] >= 1
    for call, args in [
        (read_only.create, (f"{tag}other", "x", [], runtime)),
        (read_only.update, (function_id, "x", [])),
        (read_only.delete, (function_id,)),
    ]:
        error = raises(call, *args)
        assert (error.code, error.type) == (401, "general_unauthorized_scope"), (call.__name__, error.response)
    assert functions.get(function_id) == existing
    assert raises(functions.get, f"{tag}other").code == 404


def test_unknown_key_gets_401(service, functions):
    error = raises(make_functions(service, "not-a-key").list)
    assert error.code == 401
    assert error.type == "user_unauthorized"
