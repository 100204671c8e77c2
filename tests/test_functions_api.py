"""Functions and runtimes over REST, through the real Envoy gateway."""

from __future__ import annotations

import re
import time

import pytest
import requests

from harness import error_of


def create(api, fid, **fields):
    body = {"functionId": fid, "name": fields.pop("name", "fn"), "runtime": fields.pop("runtime", "python-3.11")}
    body.update(fields)
    return api.post(f"{api.base}/functions", json=body)


def test_runtimes_list_the_catalog(api):
    r = api.get(f"{api.base}/functions/runtimes")
    assert r.status_code == 200
    body = r.json()
    ids = [rt["$id"] for rt in body["runtimes"]]
    assert body["total"] == len(ids)
    assert {"python-3.11", "node-18.0"} <= set(ids)
    python = next(rt for rt in body["runtimes"] if rt["$id"] == "python-3.11")
    assert set(python) == {"$id", "name", "version", "base", "image", "logo", "supports"}
    assert python["name"] == "Python" and python["version"] == "3.11" and python["supports"]


def test_create_returns_201_with_every_field(api, unique_id):
    fid = unique_id()
    before = int(time.time())
    r = create(api, fid, name="Hello", execute=["role:all"])
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/json")
    fn = r.json()
    assert list(fn) == [
        "$id", "execute", "name", "dateCreated", "dateUpdated", "status", "runtime", "deployment",
        "vars", "events", "schedule", "scheduleNext", "schedulePrevious", "timeout",
    ]
    assert fn["$id"] == fid and fn["name"] == "Hello" and fn["execute"] == ["role:all"]
    assert fn["vars"] == {} and fn["events"] == [] and fn["schedule"] == "" and fn["deployment"] == ""
    assert fn["timeout"] == 15 and fn["status"] == "disabled"
    assert fn["scheduleNext"] == 0 and fn["schedulePrevious"] == 0
    assert before <= fn["dateCreated"] == fn["dateUpdated"] <= int(time.time())
    assert api.get(f"{api.base}/functions/{fid}").json() == fn


def test_unique_id_is_generated(api):
    r = create(api, "unique()")
    assert r.status_code == 201
    assert re.fullmatch(r"[0-9a-f]{20}", r.json()["$id"])


def test_full_create_and_schedule_next(api, unique_id):
    fid = unique_id()
    r = create(api, fid, vars={"A": "1", "B": "two"}, events=["functions.create", "users.delete"],
               schedule="0 * * * *", timeout=900)
    assert r.status_code == 201, r.text
    fn = r.json()
    assert fn["vars"] == {"A": "1", "B": "two"} and fn["events"] == ["functions.create", "users.delete"]
    assert fn["timeout"] == 900
    now = time.time()
    assert now < fn["scheduleNext"] <= now + 3600 and fn["scheduleNext"] % 3600 == 0


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"functionId": "-bad"}, "functionId"),
        ({"functionId": "a" * 37}, "functionId"),
        ({"functionId": "has space"}, "functionId"),
        ({"name": ""}, "name"),
        ({"name": "n" * 129}, "name"),
        ({"runtime": "cobol-1.0"}, "runtime"),
        ({"runtime": ""}, "runtime"),
        ({"execute": ["x"] * 101}, "execute"),
        ({"execute": ["x" * 65]}, "execute"),
        ({"events": ["not.an.event"]}, "events"),
        ({"events": ["functions.create"] * 101}, "events"),
        ({"vars": {"K": "v" * 9000}}, "vars"),
        ({"schedule": "every minute"}, "schedule"),
        ({"schedule": "* * * * * *"}, "schedule"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 901}, "timeout"),
    ],
)
def test_create_rejects_bad_input(api, unique_id, fields, param):
    body = {"functionId": unique_id(), "name": "fn", "runtime": "python-3.11", **fields}
    r = api.post(f"{api.base}/functions", json=body)
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["type"] == "general_argument_invalid"
    assert param in err["message"]
    if "functionId" not in fields:
        assert api.get(f"{api.base}/functions/{body['functionId']}").status_code == 404


def test_unknown_runtime_message_lists_enabled_runtimes(api, unique_id):
    err = error_of(create(api, unique_id(), runtime="cobol-1.0"))
    assert err["message"].startswith("Invalid runtime: Value must be one of (")
    assert "python-3.11" in err["message"]


def test_missing_function_id_is_not_optional(api):
    r = api.post(f"{api.base}/functions", json={"name": "x", "runtime": "python-3.11"})
    assert error_of(r)["message"] == 'Param "functionId" is not optional.'


def test_wrong_json_types_and_malformed_json_are_400_in_appwrite_format(api, unique_id):
    r = api.post(f"{api.base}/functions", json={"functionId": unique_id(), "name": "x", "runtime": "python-3.11", "timeout": "abc"})
    assert r.status_code == 400 and error_of(r)["type"] == "general_argument_invalid"
    r = api.post(f"{api.base}/functions", json={"functionId": unique_id(), "name": "x", "runtime": "python-3.11", "vars": {"A": 1}})
    assert r.status_code == 400 and error_of(r)
    r = api.post(f"{api.base}/functions", data='{"functionId": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["code"] == 400


def test_duplicate_id_is_409(api, unique_id):
    fid = unique_id()
    assert create(api, fid).status_code == 201
    r = create(api, fid, name="other")
    assert r.status_code == 409
    assert error_of(r)["type"] == "function_already_exists"
    assert api.get(f"{api.base}/functions/{fid}").json()["name"] == "fn"


def test_unknown_function_is_404(api):
    for method in ("get", "delete"):
        r = getattr(api, method)(f"{api.base}/functions/nope-nothing")
        assert r.status_code == 404
        assert error_of(r)["type"] == "function_not_found"
    r = api.put(f"{api.base}/functions/nope-nothing", json={"name": "x"})
    assert r.status_code == 404 and error_of(r)["type"] == "function_not_found"


def test_put_replaces_the_whole_function(api, unique_id):
    fid = unique_id()
    create(api, fid, execute=["role:all"], vars={"A": "1"}, events=["users.create"], schedule="0 0 * * *", timeout=30)
    time.sleep(1.01)
    r = api.put(f"{api.base}/functions/{fid}", json={"name": "renamed", "execute": ["user:1"]})
    assert r.status_code == 200, r.text
    fn = r.json()
    assert fn["name"] == "renamed" and fn["execute"] == ["user:1"]
    assert fn["vars"] == {} and fn["events"] == [] and fn["schedule"] == "" and fn["timeout"] == 15
    assert fn["scheduleNext"] == 0 and fn["runtime"] == "python-3.11"
    assert fn["dateUpdated"] > fn["dateCreated"]
    r = api.put(f"{api.base}/functions/{fid}", json={"name": "x", "timeout": 0})
    assert r.status_code == 400 and api.get(f"{api.base}/functions/{fid}").json()["name"] == "renamed"


def test_put_cannot_retarget_another_function_through_the_body(api, unique_id):
    a, b = unique_id(), unique_id()
    create(api, a), create(api, b)
    r = api.put(f"{api.base}/functions/{a}", json={"name": "changed", "functionId": b})
    assert r.status_code == 200 and r.json()["$id"] == a
    r = api.put(f"{api.base}/functions/{a}", json={"name": "changed", "function_id": b})
    assert r.status_code == 400
    assert api.get(f"{api.base}/functions/{b}").json()["name"] == "fn"


def test_delete_is_204_with_empty_non_json_body(api, unique_id):
    fid = unique_id()
    create(api, fid)
    r = api.delete(f"{api.base}/functions/{fid}", json={})
    assert r.status_code == 204
    assert r.content == b""
    assert "content-type" in r.headers and not r.headers["content-type"].startswith("application/json")
    assert api.get(f"{api.base}/functions/{fid}").status_code == 404


def test_client_bodies_on_get_are_ignored(api, service, unique_id):
    fid = unique_id()
    create(api, fid)
    url = f"{api.base}/functions/{fid}"
    for body in ("{}", "null"):
        r = requests.get(url, data=body, headers={**service.headers(), "content-type": "application/json"})
        assert r.status_code == 200, (body, r.text)
        assert r.json()["$id"] == fid


@pytest.fixture(scope="module")
def listed(service):
    """A project of its own with 7 functions, created in order."""
    project = f"list{int(time.time() * 1000)}"
    service.create_project(project)
    key = service.create_key(project)
    session = requests.Session()
    session.headers.update(service.headers(project, key))
    session.base = service.url
    names = ["alpha one", "beta two", "gamma three", "delta four", "alpha five", "omega six", "Ünïcode seven"]
    ids = []
    for i, name in enumerate(names):
        r = create(session, f"f{i}", name=name, runtime="node-18.0" if i == 5 else "python-3.11")
        assert r.status_code == 201, r.text
        ids.append(f"f{i}")
    return session, ids


class TestLists:
    def page(self, session, **params):
        r = session.get(f"{session.base}/functions", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        return body["total"], [f["$id"] for f in body["functions"]]

    def test_defaults_creation_order(self, listed):
        session, ids = listed
        assert self.page(session) == (7, ids)

    def test_limit_offset_and_desc(self, listed):
        session, ids = listed
        assert self.page(session, limit=2) == (7, ids[:2])
        assert self.page(session, limit=2, offset=2) == (7, ids[2:4])
        assert self.page(session, orderType="DESC", limit=3) == (7, ids[::-1][:3])
        assert self.page(session, limit=0) == (7, [])

    def test_cursor_after_and_before(self, listed):
        session, ids = listed
        assert self.page(session, cursor=ids[2], limit=2) == (7, ids[3:5])
        assert self.page(session, cursor=ids[2], cursorDirection="after") == (7, ids[3:])
        assert self.page(session, cursor=ids[4], cursorDirection="before", limit=2) == (7, ids[2:4])
        assert self.page(session, cursor=ids[4], cursorDirection="before", orderType="DESC", limit=2) == (7, [ids[6], ids[5]])
        assert self.page(session, cursor=ids[2], orderType="DESC") == (7, [ids[1], ids[0]])

    def test_search_is_word_prefix_on_id_name_and_runtime(self, listed):
        session, ids = listed
        assert self.page(session, search="alpha") == (2, [ids[0], ids[4]])
        assert self.page(session, search="alp") == (2, [ids[0], ids[4]])
        assert self.page(session, search="lpha") == (0, [])
        assert self.page(session, search="alpha fi") == (1, [ids[4]])
        assert self.page(session, search="node") == (1, [ids[5]])
        assert self.page(session, search="f3") == (1, [ids[3]])
        assert self.page(session, search="ünï") == (1, [ids[6]])
        assert self.page(session, search="ALPHA", limit=1) == (2, [ids[0]])

    def test_plus_in_query_is_a_space(self, listed, service):
        session, ids = listed
        r = session.get(f"{session.base}/functions?search=alpha+five")
        assert [f["$id"] for f in r.json()["functions"]] == [ids[4]]

    def test_unknown_query_parameters_are_ignored(self, listed):
        session, ids = listed
        assert self.page(session, foo="bar", limit=1) == (7, ids[:1])

    @pytest.mark.parametrize(
        "params, fragment",
        [
            ({"limit": 101}, "limit"),
            ({"limit": -1}, "limit"),
            ({"offset": 5001}, "offset"),
            ({"cursorDirection": "sideways"}, "cursorDirection"),
            ({"orderType": "RANDOM"}, "orderType"),
            ({"search": "s" * 257}, "search"),
        ],
    )
    def test_bad_list_parameters(self, listed, params, fragment):
        session, _ = listed
        r = session.get(f"{session.base}/functions", params=params)
        assert r.status_code == 400 and fragment in error_of(r)["message"]

    def test_unknown_cursor_is_400(self, listed):
        session, _ = listed
        r = session.get(f"{session.base}/functions", params={"cursor": "missing"})
        assert r.status_code == 400
        err = error_of(r)
        assert err["type"] == "general_cursor_not_found"
        assert err["message"] == "Function 'missing' for the 'cursor' value not found."


def test_unknown_path_is_404_in_appwrite_format(service):
    r = requests.get(f"{service.url}/nothing/here", headers=service.headers())
    assert r.status_code == 404
    assert error_of(r)["type"] == "general_route_not_found"
