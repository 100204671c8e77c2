"""Live logs (server/domain/livelogs.py, logstreams.py): through real Envoy
as Server-Sent Events and through gRPC stubs, with real Docker."""

from __future__ import annotations

import json
import threading
import time
import uuid

import grpc
import pytest
import requests

from codepkg import targz, wheel
from harness import error_of, poll
from restkit import (deploy, execute, jwt_for, new_function, new_project, upload, wait_build,
                     wait_execution)

PY_TICKS = ("import sys, time\ndef main(req, res):\n"
            "    for i in range(7):\n"
            "        print('tick', i, flush=True)\n"
            "        time.sleep(0.3)\n"
            "    print('to stderr', file=sys.stderr)\n"
            "    return res.send('done')\n")
PY_KINDS = ("import os, subprocess, sys, time\ndef main(req, res):\n"
            "    if req.payload == 'raise':\n"
            "        print('about to fail')\n"
            "        raise ValueError('nope')\n"
            "    if req.payload == 'sleep':\n"
            "        print('sleeping', flush=True)\n"
            "        time.sleep(30)\n"
            "    if req.payload == 'flood':\n"
            "        print('ready', flush=True)\n"
            "        time.sleep(2)  # the subscriber got 'ready', and stalls before the flood\n"
            "        for i in range(40000):\n"
            "            print('line %05d' % i, 'x' * 1000)\n"
            "    if req.payload == 'child':\n"
            "        subprocess.run(['sh', '-c', 'echo from the child'])\n"
            "    if req.payload == 'bytes':\n"
            "        os.write(1, b'bad \\xff\\xfe bytes\\n')\n"
            "    print('payload', req.payload)\n"
            "    return res.send('ok')\n")


def sse(p, path: str, params=None, headers=None, timeout: float = 60):
    """(status, messages iterator) of an SSE stream; messages are the `data:` JSON objects."""
    r = requests.get(f"{p.url}{path}", headers=headers if headers is not None else p.headers(), params=params,
                     stream=True, timeout=timeout)

    def messages():
        try:
            for raw in r.iter_lines():
                if raw.startswith(b"data: "):
                    yield json.loads(raw[len(b"data: "):])
        finally:
            r.close()

    return r, messages()


def until_end(messages) -> list[dict]:
    got = []
    for message in messages:
        got.append(message)
        if message["type"] == "end":
            break
    return got


def lines(messages: list[dict]) -> list[str]:
    return [m["text"] for m in messages if m["type"] == "line"]


@pytest.fixture(scope="module")
def project(service):
    return new_project(service, "logs")


@pytest.fixture(scope="module")
def kinds(project):
    return deploy(project, f"kinds{uuid.uuid4().hex[:6]}", {"main.py": PY_KINDS}, timeout=12)


def test_lines_arrive_while_the_execution_runs_then_the_end(project):
    fid = deploy(project, f"ticks{uuid.uuid4().hex[:6]}", {"main.py": PY_TICKS})
    ex = execute(project, fid, is_async=True).json()
    r, messages = sse(project, f"/functions/{fid}/executions/{ex['$id']}/logs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    arrivals = []
    for message in messages:
        arrivals.append((time.monotonic(), message))
        if message["type"] == "end":
            break
    got = [m for _, m in arrivals]
    assert lines(got) == [f"tick {i}" for i in range(7)] + ["to stderr"]
    assert [m["seq"] for m in got if m["type"] == "line"] == list(range(1, 9))
    assert {m["stream"] for m in got if m["type"] == "line"} == {"stdout", "stderr"}
    assert all(m["executionId"] == ex["$id"] for m in got)
    first_line = next(t for t, m in arrivals if m["type"] == "line")
    assert arrivals[-1][0] - first_line > 1.2  # the first line came long before the end
    end = got[-1]
    assert end["status"] == "completed" and end["statusCode"] == 200 and end["time"] > 1.5
    final, _ = wait_execution(project, fid, ex["$id"])
    assert final["logs"] == "".join(f"tick {i}\n" for i in range(7))  # the stored execution as before


def test_replay_resume_and_follow_false(project, kinds):
    ex = execute(project, kinds, data="replayed").json()  # sync: finished before anyone listens
    _, messages = sse(project, f"/functions/{kinds}/executions/{ex['$id']}/logs", params={"follow": "false"})
    got = list(messages)
    assert lines(got) == ["payload replayed"] and got[-1]["type"] == "end" and got[-1]["status"] == "completed"
    ex = execute(project, kinds, data="x").json()
    _, messages = sse(project, f"/functions/{kinds}/executions/{ex['$id']}/logs", params={"sinceSeq": "1"})
    assert lines(until_end(messages)) == []
    _, messages = sse(project, f"/functions/{kinds}/executions/{ex['$id']}/logs", params={"sinceSeq": "0"})
    assert lines(until_end(messages)) == ["payload x"]


def test_a_child_process_and_bytes_that_are_not_utf8(project, kinds):
    for data, expected in (("child", ["from the child", "payload child"]),
                           ("bytes", ["bad \ufffd\ufffd bytes", "payload bytes"])):
        ex = execute(project, kinds, data=data).json()
        _, messages = sse(project, f"/functions/{kinds}/executions/{ex['$id']}/logs")
        assert lines(until_end(messages)) == expected


def test_the_end_says_how_it_ended(project, kinds):
    failed = execute(project, kinds, data="raise").json()
    _, messages = sse(project, f"/functions/{kinds}/executions/{failed['$id']}/logs")
    got = until_end(messages)
    assert lines(got) == ["about to fail"]  # what it printed; its traceback is the execution's stderr
    assert got[-1]["status"] == "failed" and got[-1]["statusCode"] == 500
    slow = execute(project, kinds, data="sleep", is_async=True).json()
    _, messages = sse(project, f"/functions/{kinds}/executions/{slow['$id']}/logs")
    got = until_end(messages)
    assert lines(got)[0] == "sleeping"
    assert got[-1]["status"] == "failed" and got[-1]["statusCode"] == 124


def test_the_function_tail_sees_sync_and_async_executions(project):
    fid = deploy(project, f"tail{uuid.uuid4().hex[:6]}", {"main.py": PY_KINDS})
    r, messages = sse(project, f"/functions/{fid}/logs")
    assert r.status_code == 200
    got: list[dict] = []
    def read() -> None:
        try:
            for message in messages:
                got.append(message)
        except (requests.RequestException, AttributeError, ValueError):
            pass  # the test closed the stream under it

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)
    sync = execute(project, fid, data="one").json()
    queued = execute(project, fid, data="two", is_async=True).json()
    wait_execution(project, fid, queued["$id"])
    poll(lambda: list(got), lambda g: {"payload one", "payload two"} <= set(lines(g)), timeout=10)
    r.close()
    tagged = {m["text"]: m["executionId"] for m in got if m["type"] == "line"}
    assert tagged["payload one"] == sync["$id"] and tagged["payload two"] == queued["$id"]


def test_a_quiet_stream_gets_heartbeats_through_envoy(project):
    """Nothing to say for 15 s: a heartbeat, so proxies keep the stream open
    (and Envoy's route timeout does not cut it)."""
    fid = new_function(project, f"quiet{uuid.uuid4().hex[:6]}", project=project.project)  # nothing will print
    started = time.monotonic()
    r, messages = sse(project, f"/functions/{fid}/logs", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert time.monotonic() - started < 5  # the stream is open before anything is said
    first = next(messages)
    waited = time.monotonic() - started
    r.close()
    assert first["type"] == "heartbeat", first
    assert 14 < waited < 20, waited


def test_build_logs_stream_with_the_final_status(project):
    fid = new_function(project, f"build{uuid.uuid4().hex[:6]}", project=project.project, key=project.key)
    name, data = wheel("greet", "1.0", "def hello():\n    return 'hi'\n")
    archive = targz({"main.py": "import greet\ndef main(req, res):\n    return res.send(greet.hello())\n",
                     "requirements.txt": f"./wheels/{name}\n", f"wheels/{name}": data})
    dep = upload(project, fid, archive).json()
    _, messages = sse(project, f"/functions/{fid}/deployments/{dep['$id']}/logs")
    got = until_end(messages)
    assert got[-1]["type"] == "end" and got[-1]["status"] == "ready" and got[-1]["deploymentId"] == dep["$id"]
    assert any("greet" in text for text in lines(got)), got
    _, messages = sse(project, f"/functions/{fid}/deployments/{dep['$id']}/logs", params={"follow": "false"})
    assert lines(list(messages)) == lines(got)  # replayed from the stored lines


def test_a_stalled_subscriber_is_told_what_it_missed(service, project, kinds):
    """40,000 lines of 1 KB (40 MB) while the reader sleeps: far more than the
    subscriber's buffer (1,000 messages) plus what grpc and the kernel hold
    for a reader that stopped, so lines are dropped and counted."""
    from functions.v1 import log_pb2, log_pb2_grpc

    total = 40002  # "ready", the flood, "payload flood"
    ex = execute(project, kinds, data="flood", is_async=True).json()
    # No BDP probing: the flow-control window stays 64 KiB, so a reader that stops stalls the server's writes.
    channel = grpc.insecure_channel(service.grpc_address, options=[("grpc.http2.bdp_probe", 0)])
    stub = log_pb2_grpc.LogServiceStub(channel)
    stream = stub.StreamExecutionLogs(log_pb2.StreamExecutionLogsRequest(function_id=kinds, execution_id=ex["$id"]),
                                      metadata=project.metadata(), timeout=60)
    first = next(stream)
    assert first.text == "ready"  # followed live from here on
    time.sleep(6)  # not reading, while the function prints everything and ends
    rest = list(stream)
    got = [first] + rest
    assert got[-1].type == "end" and got[-1].status == "completed"
    received = [m for m in got if m.type == "line"]
    dropped = sum(m.count for m in got if m.type == "dropped")
    assert dropped > 0, f"{len(received)} lines received, none dropped"
    assert len(received) + dropped == total  # every line received or counted
    assert [m.seq for m in received] == sorted(m.seq for m in received)
    # The store keeps the first 4 MiB of the log and counts the rest.
    replay = list(stub.StreamExecutionLogs(log_pb2.StreamExecutionLogsRequest(
        function_id=kinds, execution_id=ex["$id"], follow=False), metadata=project.metadata(), timeout=60))
    stored = [m for m in replay if m.type == "line"]
    assert 3000 < len(stored) < 4200 and [m.seq for m in stored] == sorted(m.seq for m in stored)
    assert [m.seq for m in stored[:3000]] == list(range(1, 3001))
    assert len(stored) + sum(m.count for m in replay if m.type == "dropped") == total
    channel.close()


def test_who_may_follow_an_execution(service, project, kinds):
    headers = {"X-Appwrite-Project": project.project, "X-Appwrite-JWT": jwt_for(service, "ann", project=project.project)}
    mine = execute(project, kinds, data="mine", headers=headers).json()
    path = f"/functions/{kinds}/executions/{mine['$id']}/logs"
    _, messages = sse(project, path, headers=headers)
    assert lines(until_end(messages)) == ["payload mine"]
    other = {"X-Appwrite-Project": project.project, "X-Appwrite-JWT": jwt_for(service, "bob", project=project.project)}
    r, _ = sse(project, path, headers=other)
    assert r.status_code == 404 and error_of(r)["type"] == "execution_not_found"
    narrow = service.create_key(project.project, "functions.read")
    r, _ = sse(project, path, headers=project.headers(key=narrow))
    assert r.status_code == 401 and "execution.read" in error_of(r)["message"]
    r, _ = sse(project, path, headers={"X-Appwrite-Project": project.project})
    assert r.status_code == 401
    r, _ = sse(project, path, headers=service.headers())  # the default project's key
    assert r.status_code == 404
    r, _ = sse(project, f"/functions/{kinds}/executions/nope/logs")
    assert r.status_code == 404 and error_of(r)["type"] == "execution_not_found"
    r, _ = sse(project, f"/functions/{kinds}/logs", headers=project.headers(key=service.create_key(project.project, "execution.read")))
    assert r.status_code == 401


def test_a_subscriber_on_one_replica_follows_an_execution_on_another(database_env, fresh_service):
    """From the store: polled on SQLite, woken by NOTIFY on PostgreSQL."""
    from functions.v1 import execution_pb2, execution_pb2_grpc, log_pb2, log_pb2_grpc
    from server.settings import Settings

    svc = fresh_service(FUNCTIONS_REPLICAS="2", **database_env)
    fid = deploy(svc, f"ticks{uuid.uuid4().hex[:6]}", {"main.py": PY_TICKS})
    metadata = (("x-appwrite-project", "default"), ("x-appwrite-key", svc.bootstrap_key))
    replica = [grpc.insecure_channel(Settings(grpc_address=svc.grpc_address).replica_address(i)) for i in (0, 1)]
    ex = execution_pb2_grpc.ExecutionServiceStub(replica[0]).CreateExecution(
        execution_pb2.CreateExecutionRequest(function_id=fid, **{"async": True}), metadata=metadata, timeout=30)
    stream = log_pb2_grpc.LogServiceStub(replica[1]).StreamExecutionLogs(
        log_pb2.StreamExecutionLogsRequest(function_id=fid, execution_id=ex.id), metadata=metadata, timeout=60)
    arrivals = [(time.monotonic(), m) for m in stream]
    got = [m for _, m in arrivals]
    assert [m.text for m in got if m.type == "line"] == [f"tick {i}" for i in range(7)] + ["to stderr"]
    assert got[-1].type == "end" and got[-1].status == "completed"
    first_line = next(t for t, m in arrivals if m.type == "line")
    assert arrivals[-1][0] - first_line > 0.8  # followed live from the store, not read at the end
    owner = requests.get(f"{svc.url}/functions/{fid}/executions/{ex.id}", headers=svc.headers()).json()
    assert owner["status"] == "completed"
    for channel in replica:
        channel.close()
