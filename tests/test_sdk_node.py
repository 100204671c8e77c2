"""The official node client of the Appwrite 0.13 era, unmodified, against the
real service (Envoy + gRPC server): npm `node-appwrite@5.1.0` (declared in
tests/package.json; `make test` installs it into tests/node_modules).

tests/sdk/node_functions.js runs every function-management call once and
prints what the SDK returned or raised as one JSON object; the assertions
live here. The scenario runs once per module (one node process, bounded in
time) on ids and names prefixed with its own unique tag, and deletes what it
created.

node-appwrite 5.1.0 (axios 0.26) sends `null` with Content-Type
application/json and Content-Length 4 on every GET, and `{}` on DELETE
(../../shared/research/sdk-client.md); the gateway must ignore those bodies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / "sdk" / "node_functions.js"
SDK_DIR = TESTS / "node_modules" / "node-appwrite"
FUNCTION_FIELDS = {
    "$id", "execute", "name", "dateCreated", "dateUpdated", "status", "runtime", "deployment",
    "vars", "events", "schedule", "scheduleNext", "schedulePrevious", "timeout",
}
EVENTS = ["account.create", "database.documents.create"]


@pytest.fixture(scope="module")
def scenario(service) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/system-deps.sh node)")
    if not SDK_DIR.is_dir():
        pytest.fail("tests/node_modules is missing: run `make test` or `cd tests && npm install --no-audit --no-fund`")
    assert json.loads((SDK_DIR / "package.json").read_text())["version"] == "5.1.0"
    tag = "js" + uuid.uuid4().hex[:12]
    read_key = service.create_key("default", scopes="functions.read")
    result = subprocess.run(
        [node, str(SCRIPT)], cwd=TESTS, capture_output=True, text=True, timeout=120,
        env={
            **os.environ,
            "APPWRITE_ENDPOINT": service.url,
            "APPWRITE_PROJECT": "default",
            "APPWRITE_KEY": service.bootstrap_key,
            "APPWRITE_READ_KEY": read_key,
            "APPWRITE_TAG": tag,
        },
    )
    assert result.stdout.strip(), f"no output (status {result.returncode}): {result.stderr}"
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert "fatal" not in output, output["fatal"]
    assert result.returncode == 0, result.stderr
    assert output["tag"] == tag
    crashes = {name: s["crash"] for name, s in output["steps"].items() if "crash" in s}
    assert not crashes, crashes  # non-AppwriteException errors (e.g. JSON decoding)
    return output


def ok(scenario: dict, name: str):
    """The value the SDK returned for step `name` (fails on an exception)."""
    outcome = scenario["steps"][name]
    assert "ok" in outcome, f"{name} raised: {outcome}"
    return outcome["ok"]


def error(scenario: dict, name: str) -> dict:
    """The AppwriteException's {code, type, message, response} for step `name`."""
    outcome = scenario["steps"][name]
    assert "error" in outcome, f"{name} did not raise: {outcome}"
    e = outcome["error"]
    assert isinstance(e["response"], dict), e  # parsed from a JSON error body
    assert e["response"]["code"] == e["code"], e
    assert e["response"]["message"] == e["message"], e
    return e


def ids(listing: dict) -> list[str]:
    return [f["$id"] for f in listing["functions"]]


def test_list_runtimes(scenario):
    result = ok(scenario, "listRuntimes")
    assert result["total"] == len(result["runtimes"]) >= 1
    for runtime in result["runtimes"]:
        assert set(runtime) >= {"$id", "name", "version", "base", "image", "logo", "supports"}, runtime


def test_create_with_every_option_and_get(scenario):
    tag = scenario["tag"]
    runtime = ok(scenario, "listRuntimes")["runtimes"][0]["$id"]
    full = ok(scenario, "createFull")
    assert set(full) == FUNCTION_FIELDS
    assert full["$id"] == f"{tag}full"
    assert full["name"] == f"{tag} Full"
    assert full["execute"] == ["role:all", "team:abc"]
    assert full["runtime"] == runtime
    assert full["vars"] == {"API_KEY": "secret", "MODE": "test"}
    assert full["events"] == EVENTS
    assert full["schedule"] == "*/5 * * * *"
    assert full["timeout"] == 30
    assert full["status"] == "disabled"
    assert full["deployment"] == ""
    for field in ("dateCreated", "dateUpdated", "scheduleNext", "schedulePrevious", "timeout"):
        assert type(full[field]) is int, (field, full[field])  # JSON numbers, not strings
    assert full["scheduleNext"] > 0
    assert ok(scenario, "getFull") == full


def test_create_minimal_form_gets_defaults(scenario):
    minimal = ok(scenario, "createMinimal")
    assert minimal["$id"] == f"{scenario['tag']}min"
    assert (minimal["execute"], minimal["vars"], minimal["events"], minimal["schedule"], minimal["timeout"]) == (
        [], {}, [], "", 15)
    assert (minimal["scheduleNext"], minimal["status"], minimal["deployment"]) == (0, "disabled", "")
    assert ok(scenario, "getMinimal") == minimal


def test_create_with_unique_id(scenario):
    first, second = ok(scenario, "createUnique1"), ok(scenario, "createUnique2")
    assert "unique()" not in (first["$id"], second["$id"])
    assert first["$id"] != second["$id"]
    assert 1 <= len(first["$id"]) <= 36
    assert (first["vars"], first["timeout"]) == ({"A": "1"}, 5)
    assert ok(scenario, "getUnique1") == first


def test_list_search(scenario):
    tag = scenario["tag"]
    # The space is sent as `+`.
    listing = ok(scenario, "listSearchSpace")
    assert f"{tag}a" in ids(listing)
    assert f"{tag}c" not in ids(listing)
    assert listing["total"] == len(listing["functions"])
    assert ids(ok(scenario, "listSearchId")) == [f"{tag}c"]
    assert ok(scenario, "listSearchNothing") == {"total": 0, "functions": []}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("all", [0, 1, 2, 3, 4]),
        ("limit2", [0, 1]),
        ("limit2offset2", [2, 3]),
        ("offset4", [4]),
        ("cursorP1", [2, 3, 4]),
        ("cursorP1limit1", [2]),
        ("cursorP3after", [4]),
        ("cursorP3before", [0, 1, 2]),
        ("desc", [4, 3, 2, 1, 0]),
        ("descLimit2", [4, 3]),
        ("descCursorP2", [1, 0]),
        ("descCursorP2before", [4, 3]),
    ],
)
def test_list_paging(scenario, name, expected):
    listing = ok(scenario, f"list_{name}")
    assert listing["total"] == 5  # total ignores limit, offset and cursor
    assert ids(listing) == [f"{scenario['tag']}p{i}" for i in expected]


def test_update_is_a_full_replace(scenario):
    created = ok(scenario, "createFull")
    replaced = ok(scenario, "updateReplace")
    assert set(replaced) == FUNCTION_FIELDS
    assert (replaced["$id"], replaced["name"], replaced["execute"]) == (created["$id"], "After", ["role:member"])
    # Omitted optional fields went back to their defaults.
    assert (replaced["vars"], replaced["events"], replaced["schedule"], replaced["timeout"]) == ({}, [], "", 15)
    assert replaced["scheduleNext"] == 0
    assert replaced["runtime"] == created["runtime"]
    assert replaced["dateCreated"] == created["dateCreated"]
    assert replaced["dateUpdated"] >= created["dateUpdated"]
    assert ok(scenario, "getAfterReplace") == replaced

    again = ok(scenario, "updateAll")
    assert (again["name"], again["execute"], again["vars"], again["events"]) == ("Again", [], {"X": "y"}, ["functions.create"])
    assert (again["schedule"], again["timeout"]) == ("30 2 * * *", 900)
    assert again["scheduleNext"] > 0
    assert ok(scenario, "getAfterUpdateAll") == again


def test_delete(scenario):
    assert ok(scenario, "delete") == ""  # 204: axios gives the empty body
    for name in ("getDeleted", "deleteAgain"):
        e = error(scenario, name)
        assert (e["code"], e["type"]) == (404, "function_not_found"), name


@pytest.mark.parametrize(
    "name, code, error_type",
    [
        ("errGetMissing", 404, "function_not_found"),
        ("errUpdateMissing", 404, "function_not_found"),
        ("errDeleteMissing", 404, "function_not_found"),
        ("errDuplicate", 409, "function_already_exists"),
        ("errInvalidId", 400, "general_argument_invalid"),
        ("errLongId", 400, "general_argument_invalid"),
        ("errRuntime", 400, "general_argument_invalid"),
        ("errTimeout", 400, "general_argument_invalid"),
        ("errCron", 400, "general_argument_invalid"),
        ("errEvent", 400, "general_argument_invalid"),
        ("errUpdateTimeout", 400, "general_argument_invalid"),
        ("errListLimit", 400, "general_argument_invalid"),
        ("errListCursor", 400, "general_cursor_not_found"),
        ("errListDirection", 400, "general_argument_invalid"),
        ("errListOrder", 400, "general_argument_invalid"),
        ("errUnknownKey", 401, "user_unauthorized"),
    ],
)
def test_errors(scenario, name, code, error_type):
    e = error(scenario, name)
    assert (e["code"], e["type"]) == (code, error_type), e
    assert e["message"]


def test_failed_update_changes_nothing(scenario):
    assert ok(scenario, "getAfterBadUpdate") == ok(scenario, "getAfterUpdateAll")


def test_key_without_write_scope(scenario):
    current = ok(scenario, "getAfterUpdateAll")
    assert ok(scenario, "scopedGet") == current
    assert ids(ok(scenario, "scopedList")) == [current["$id"]]
    for name in ("scopedCreate", "scopedUpdate", "scopedDelete"):
        e = error(scenario, name)
        assert (e["code"], e["type"]) == (401, "general_unauthorized_scope"), (name, e)
    assert ok(scenario, "getAfterScoped") == current


def test_cleanup(scenario):
    assert ok(scenario, "cleanupFailures") == {}


def test_get_with_chunked_null_body(service):
    """Node 5.1.0 sends its `null` GET body with a Content-Length; the same
    body chunked (Transfer-Encoding, which Envoy strips before the Lua
    filter sees the headers) must be ignored too."""
    headers = {**service.headers(), "content-type": "application/json"}
    for path in ("/functions/runtimes", "/functions?search=a+b&limit=1"):
        response = requests.get(service.url + path, data=iter([b"null"]), headers=headers, timeout=10)
        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
    response = requests.get(service.url + "/functions/nosuchfn", data=iter([b"null"]), headers=headers, timeout=10)
    assert (response.status_code, response.json()["type"]) == (404, "function_not_found")
    response = requests.delete(service.url + "/functions/nosuchfn", data=iter([b"{}"]), headers=headers, timeout=10)
    assert (response.status_code, response.json()["type"]) == (404, "function_not_found")
