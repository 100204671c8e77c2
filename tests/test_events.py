"""Events fire subscribed functions (server/domain/events.py): the
service's own events with Appwrite 0.13's payloads, PublishEvent over REST
and gRPC with its idempotency key, many subscribers, broken ones, and the
loop limit. Through Envoy and real Docker on SQLite; each test has a
project of its own (events reach the functions of their project only)."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests

from codepkg import targz
from harness import error_of, poll
from restkit import deploy, execute, jwt_for, new_function, new_project, upload, wait_build, wait_execution

RECORDER = {"main.py": (
    "import os\n"
    "def main(req, res):\n"
    "    return res.json({k: os.environ.get(k, '') for k in ('APPWRITE_FUNCTION_EVENT', 'APPWRITE_FUNCTION_EVENT_DATA',\n"
    "                     'APPWRITE_FUNCTION_USER_ID', 'APPWRITE_FUNCTION_TRIGGER')})\n")}
FAILING = {"main.py": "def main(req, res):\n    raise RuntimeError('broken subscriber')\n"}
FN_EVENTS = ["functions.create", "functions.update", "functions.delete", "functions.deployments.create",
             "functions.deployments.update", "functions.deployments.delete"]


def subscribe(p, fid: str, events: list[str], files=RECORDER) -> str:
    deploy(p, fid, files)
    fn = requests.get(f"{p.url}/functions/{fid}", headers=p.headers()).json()
    r = requests.put(f"{p.url}/functions/{fid}", headers=p.headers(),
                     json={"name": fn["name"], "execute": fn["execute"], "events": events})
    assert r.status_code == 200, r.text
    return fid


def executions(p, fid: str) -> list[dict]:
    r = requests.get(f"{p.url}/functions/{fid}/executions", headers=p.headers(), params={"limit": 100})
    assert r.status_code == 200, r.text
    return r.json()["executions"]


def finished(p, fid: str, count: int, timeout: float = 60) -> list[dict]:
    runs, _ = poll(lambda: executions(p, fid), lambda rs: len(rs) >= count and all(
        e["status"] in ("completed", "failed") for e in rs), timeout=timeout, interval=0.2)
    return runs


def recorded(run: dict) -> dict:
    assert run["status"] == "completed", run
    return json.loads(run["stdout"])


def publish(p, body: dict, key: str | None = None) -> requests.Response:
    return requests.post(f"{p.url}/events", headers=p.headers(key=key), json=body)


def test_function_and_deployment_events_run_subscribers_with_the_resource_as_payload(service):
    p = new_project(service)
    recorder = subscribe(p, "recorder", FN_EVENTS)
    target = f"t{uuid.uuid4().hex[:8]}"
    new_function(p, target, project=p.project, key=p.key)
    fn = requests.get(f"{p.url}/functions/{target}", headers=p.headers()).json()
    assert requests.put(f"{p.url}/functions/{target}", headers=p.headers(),
                        json={"name": "renamed", "execute": fn["execute"]}).status_code == 200
    first = upload(p, target, targz(RECORDER), activate="false").json()
    assert wait_build(p, target, first["$id"])[0]["status"] == "ready"
    second = upload(p, target, targz(RECORDER), activate="false").json()
    assert wait_build(p, target, second["$id"])[0]["status"] == "ready"
    assert requests.patch(f"{p.url}/functions/{target}/deployments/{first['$id']}", headers=p.headers()).status_code == 200
    assert requests.delete(f"{p.url}/functions/{target}/deployments/{second['$id']}", headers=p.headers()).status_code == 204
    assert requests.delete(f"{p.url}/functions/{target}", headers=p.headers()).status_code == 204

    # Seven events of the target (two deployments made), and the recorder's
    # own subscribing PUT (functions.update of itself).
    runs = finished(p, recorder, 8)
    assert len(runs) == 8 and all(run["trigger"] == "event" for run in runs)
    by_event: dict[str, list[dict]] = {}
    for env in map(recorded, runs):
        data = json.loads(env["APPWRITE_FUNCTION_EVENT_DATA"])
        if data["$id"] != recorder:
            by_event.setdefault(env["APPWRITE_FUNCTION_EVENT"], []).append(data)
    assert sorted(by_event) == sorted(FN_EVENTS)
    assert [d["$id"] for d in by_event["functions.create"]] == [target]
    assert by_event["functions.create"][0]["name"] == target and by_event["functions.create"][0]["runtime"] == "python-3.11"
    assert by_event["functions.update"][0]["name"] == "renamed"
    assert sorted(d["$id"] for d in by_event["functions.deployments.create"]) == sorted([first["$id"], second["$id"]])
    assert all(d["resourceId"] == target for d in by_event["functions.deployments.create"])
    (activated,) = by_event["functions.deployments.update"]
    assert activated["$id"] == target and activated["deployment"] == first["$id"]  # the route's answer: the function
    (deleted,) = by_event["functions.deployments.delete"]
    assert deleted["$id"] == second["$id"] and deleted["status"] == "ready"
    (gone,) = by_event["functions.delete"]
    assert gone["$id"] == target and gone["name"] == "renamed"
    assert all(recorded(run)["APPWRITE_FUNCTION_USER_ID"] == "" for run in runs)  # API keys have no user


def test_execution_events_carry_the_user_and_a_function_triggering_itself_stops_at_depth_16(service):
    """The recorder subscribes to executions' events, its own included: each
    of its runs triggers it again, by create and by update, until the chain
    is 16 events deep. The chain runs it once per depth and event name: 32
    runs, and 2 refused at depth 17, failed with the reason."""
    p = new_project(service)
    target = deploy(p, f"t{uuid.uuid4().hex[:8]}", RECORDER)
    recorder = subscribe(p, "recorder", ["functions.executions.create", "functions.executions.update"])
    headers = {"X-Appwrite-Project": p.project, "X-Appwrite-JWT": jwt_for(service, "alice", project=p.project)}
    r = execute(p, target, data="hi", is_async=True, headers=headers)
    assert r.status_code == 201, r.text
    root = r.json()
    assert wait_execution(p, target, root["$id"])[0]["status"] == "completed"

    runs = finished(p, recorder, 34, timeout=120)
    time.sleep(3)
    runs = executions(p, recorder)
    assert len(runs) == 34, [(e["status"], e["stderr"][:60]) for e in runs]
    refused = [e for e in runs if e["status"] == "failed"]
    assert len(refused) == 2 and all("limit is 16" in e["stderr"] and e["statusCode"] == 0 for e in refused)
    ran = [recorded(e) for e in runs if e["status"] == "completed"]
    assert all(e["APPWRITE_FUNCTION_USER_ID"] == "alice" and e["APPWRITE_FUNCTION_TRIGGER"] == "event" for e in ran)
    about_root = {e["APPWRITE_FUNCTION_EVENT"]: json.loads(e["APPWRITE_FUNCTION_EVENT_DATA"]) for e in ran
                  if json.loads(e["APPWRITE_FUNCTION_EVENT_DATA"])["$id"] == root["$id"]}
    assert sorted(about_root) == ["functions.executions.create", "functions.executions.update"]
    assert about_root["functions.executions.create"]["status"] == "waiting"
    assert about_root["functions.executions.update"]["status"] == "completed"
    assert about_root["functions.executions.update"]["functionId"] == target
    assert about_root["functions.executions.update"]["stdout"] == root_stdout(p, target, root["$id"])


def root_stdout(p, fid: str, eid: str) -> str:
    return requests.get(f"{p.url}/functions/{fid}/executions/{eid}", headers=p.headers()).json()["stdout"]


def test_a_published_event_runs_each_subscriber_once_even_when_published_again(service):
    p = new_project(service)
    good = [subscribe(p, f"good{i}", ["users.create"]) for i in range(2)]
    failing = subscribe(p, "failing", ["users.create"], files=FAILING)
    broken = new_function(p, "nodeploy", project=p.project, key=p.key)  # subscribed, nothing to run
    fn = requests.get(f"{p.url}/functions/{broken}", headers=p.headers()).json()
    requests.put(f"{p.url}/functions/{broken}", headers=p.headers(),
                 json={"name": fn["name"], "execute": fn["execute"], "events": ["users.create"]}).raise_for_status()
    other = subscribe(p, "other", ["users.delete"])

    body = {"event": "users.create", "data": json.dumps({"$id": "u1", "name": "Ünïcode"}), "userId": "u1",
            "source": "//users-service", "id": "evt-1"}
    r = publish(p, body)
    assert r.status_code == 201, r.text
    event = r.json()
    assert event["event"] == "users.create" and event["matched"] == 3 and event["duplicate"] is False
    assert event["sourceId"] == "evt-1" and event["source"] == "//users-service" and event["$id"]
    again = publish(p, body)
    assert again.status_code == 201 and again.json()["duplicate"] is True and again.json()["$id"] == event["$id"]

    for fid in good:
        (run,) = finished(p, fid, 1)
        env = recorded(run)
        assert env == {"APPWRITE_FUNCTION_EVENT": "users.create", "APPWRITE_FUNCTION_EVENT_DATA": body["data"],
                       "APPWRITE_FUNCTION_USER_ID": "u1", "APPWRITE_FUNCTION_TRIGGER": "event"}
        assert run["$read"] == ["user:u1"]
    (failed,) = finished(p, failing, 1)
    assert failed["status"] == "failed" and "broken subscriber" in failed["stderr"] and failed["attempts"] == 1
    time.sleep(1)
    assert executions(p, broken) == [] and executions(p, other) == []
    assert all(len(executions(p, fid)) == 1 for fid in good + [failing])  # the retry ran nothing again


def test_publish_checks_its_input_and_the_key_scope(service):
    p = new_project(service)
    base = {"event": "users.create", "source": "//svc", "id": "x1"}
    cases = [({**base, "event": "users.exploded"}, "event"), ({**base, "event": ""}, "event"),
             ({**base, "data": "{not json"}, "data"), ({**base, "source": ""}, "source"), ({**base, "id": ""}, "id"),
             ({**base, "data": json.dumps({"x": "y" * 70000})}, "data"), ({**base, "depth": 17}, "depth")]
    for body, param in cases:
        r = publish(p, body)
        assert r.status_code == 400, (body, r.text)
        assert error_of(r)["type"] == "general_argument_invalid" and param in error_of(r)["message"]
    narrow = service.create_key(p.project, "functions.read,functions.write")
    r = publish(p, base, key=narrow)
    assert r.status_code == 401 and "events.write" in error_of(r)["message"]
    assert requests.post(f"{p.url}/events", headers={"X-Appwrite-Project": p.project}, json=base).status_code == 401


def test_publish_over_grpc_is_idempotent_too(service):
    from functions.v1 import event_pb2, event_pb2_grpc

    p = new_project(service)
    fid = subscribe(p, "sub", ["database.documents.create"])
    stub = event_pb2_grpc.EventServiceStub(service.channel())
    request = event_pb2.PublishEventRequest(event="database.documents.create", data='{"$id":"d1"}', source="//db",
                                            id="doc-d1")
    first = stub.PublishEvent(request, metadata=p.metadata(), timeout=30)
    second = stub.PublishEvent(request, metadata=p.metadata(), timeout=30)
    assert first.matched == 1 and not first.duplicate and second.duplicate and second.id == first.id
    with pytest.raises(grpc.RpcError) as denied:
        stub.PublishEvent(request, metadata=(("x-appwrite-project", p.project),), timeout=30)
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    (run,) = finished(p, fid, 1)
    assert recorded(run)["APPWRITE_FUNCTION_EVENT_DATA"] == '{"$id":"d1"}'


def test_a_hundred_subscribers_all_run(service):
    p = new_project(service)
    with ThreadPoolExecutor(8) as pool:
        fids = list(pool.map(lambda i: subscribe(p, f"s{i:03d}", ["teams.create"]), range(100)))
    r = publish(p, {"event": "teams.create", "data": '{"$id":"t1"}', "source": "//teams", "id": "t1"})
    assert r.status_code == 201 and r.json()["matched"] == 100, r.text

    def runs_of_all():
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda fid: executions(p, fid), fids))

    every, _ = poll(runs_of_all, lambda all_runs: all(len(rs) == 1 and rs[0]["status"] == "completed" for rs in all_runs),
                    timeout=180, interval=1)
    assert all(recorded(rs[0])["APPWRITE_FUNCTION_EVENT"] == "teams.create" for rs in every)
