"""Executions over REST through Envoy, in real runtime containers."""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest
import requests

from harness import error_of, poll
from restkit import PY_SLEEP, deploy, execute, execution_status, new_function, wait_execution, wait_processing

PY_ECHO = """
import os, sys
def main(req, res):
    print("log line from python")
    print("to stderr", file=sys.stderr)
    return res.json({"payload": req.payload, "env": req.env, "headers": req.headers,
                     "osenv": os.environ.get("GREETING", "")})
"""
PY_FAIL = "def main(req, res):\n    raise ValueError('boom from user code')\n"
PY_HOG = "def main(req, res):\n    if req.payload == 'hog':\n        b = []\n        while True:\n            b.append(bytearray(16 << 20))\n    return res.send('fine')\n"
PY_STATUS = "def main(req, res):\n    return res.send('teapot', 418)\n"
NODE_ECHO = """
module.exports = async (req, res) => {
  console.log('log line from node');
  console.error('node to stderr');
  res.json({payload: req.payload, env: req.env});
};
"""


@pytest.fixture(scope="module")
def echo_py(service):
    import uuid
    return deploy(service, "echo" + uuid.uuid4().hex[:8], {"main.py": PY_ECHO}, vars={"GREETING": "hi", "APPWRITE_FUNCTION_ID": "spoof"})


def test_sync_execution_echoes_payload_and_env(service, echo_py):
    r = execute(service, echo_py, data='{"name":"x"}')
    assert r.status_code == 201, r.text
    ex = r.json()
    assert list(ex)[:10] == ["$id", "$read", "functionId", "dateCreated", "trigger", "status", "statusCode", "stdout", "stderr", "time"]
    assert ex["status"] == "completed" and ex["statusCode"] == 200 and ex["trigger"] == "http" and ex["$read"] == []
    assert 0 < ex["time"] < 10 and isinstance(ex["time"], float)
    body = json.loads(ex["stdout"])
    assert body["payload"] == '{"name":"x"}'
    env = body["env"]
    assert env["GREETING"] == "hi" and body["osenv"] == "hi"
    assert env["APPWRITE_FUNCTION_ID"] == echo_py  # system variables win over vars
    fn = requests.get(f"{service.url}/functions/{echo_py}", headers=service.headers()).json()
    assert env["APPWRITE_FUNCTION_DEPLOYMENT"] == fn["deployment"] and env["APPWRITE_FUNCTION_NAME"] == fn["name"]
    assert env["APPWRITE_FUNCTION_TRIGGER"] == "http" and env["APPWRITE_FUNCTION_DATA"] == '{"name":"x"}'
    assert env["APPWRITE_FUNCTION_RUNTIME_NAME"] == "Python" and env["APPWRITE_FUNCTION_RUNTIME_VERSION"] == "3.11"
    assert env["APPWRITE_FUNCTION_PROJECT_ID"] == "default" and env["APPWRITE_FUNCTION_USER_ID"] == "" and env["APPWRITE_FUNCTION_JWT"] == ""
    assert {"APPWRITE_FUNCTION_EVENT", "APPWRITE_FUNCTION_EVENT_DATA"} <= set(env)
    assert "log line from python" in ex["logs"] and "to stderr" in ex["errors"]
    assert ex["stderr"] == ""
    assert requests.get(f"{service.url}/functions/{echo_py}/executions/{ex['$id']}", headers=service.headers()).json() == ex


def test_async_execution_goes_waiting_to_completed(service, echo_py):
    r = execute(service, echo_py, data="async data", is_async=True)
    assert r.status_code == 201
    ex = r.json()
    assert ex["status"] == "waiting" and ex["statusCode"] == 0 and ex["time"] == 0 and ex["stdout"] == ""
    final, seen = wait_execution(service, echo_py, ex["$id"])
    assert final["status"] == "completed" and json.loads(final["stdout"])["payload"] == "async data"
    lifecycle = ["waiting", "processing", "completed"]
    assert set(seen) <= set(lifecycle) and seen == sorted(seen, key=lifecycle.index), seen  # never backwards


def test_async_is_the_default(service, echo_py):
    r = requests.post(f"{service.url}/functions/{echo_py}/executions", json={}, headers=service.headers())
    assert r.status_code == 201 and r.json()["status"] == "waiting"
    final, _ = wait_execution(service, echo_py, r.json()["$id"])
    assert json.loads(final["stdout"])["payload"] == ""


def test_node_function(service):
    import uuid
    fid = deploy(service, "node" + uuid.uuid4().hex[:8], {"index.js": NODE_ECHO}, entrypoint="index.js", runtime="node-18.0",
                 vars={"A": "b"})
    ex = execute(service, fid, data="from test").json()
    assert ex["status"] == "completed", ex
    body = json.loads(ex["stdout"])
    assert body["payload"] == "from test" and body["env"]["A"] == "b" and body["env"]["APPWRITE_FUNCTION_RUNTIME_NAME"] == "Node.js"
    assert "log line from node" in ex["logs"] and "node to stderr" in ex["errors"]


def test_exception_fails_with_500_and_error(service, unique_id):
    fid = deploy(service, unique_id(), {"main.py": PY_FAIL})
    ex = execute(service, fid).json()
    assert ex["status"] == "failed" and ex["statusCode"] == 500
    assert "boom from user code" in ex["stderr"] and "ValueError" in ex["stderr"]


def test_function_status_code_is_kept(service, unique_id):
    fid = deploy(service, unique_id(), {"main.py": PY_STATUS})
    ex = execute(service, fid).json()
    assert ex["statusCode"] == 418 and ex["status"] == "failed" and ex["stdout"] == "teapot"


def test_timeout_is_honest_and_the_next_call_works(service, unique_id):
    fid = deploy(service, unique_id(), {"main.py": PY_SLEEP}, timeout=2)
    started = time.monotonic()
    ex = execute(service, fid, data="sleep").json()
    elapsed = time.monotonic() - started
    assert ex["status"] == "failed" and ex["statusCode"] == 124 and ex["stderr"] == "Execution timed out."
    assert 2 <= ex["time"] < 3 and elapsed < 3.5
    again = execute(service, fid, data="quick").json()
    assert again["status"] == "completed" and again["stdout"] == "awake"


def test_memory_hog_fails_with_a_clear_message(service, unique_id):
    fid = deploy(service, unique_id(), {"main.py": PY_HOG}, timeout=20)
    ex = execute(service, fid, data="hog").json()
    assert ex["status"] == "failed" and "memory" in ex["stderr"].lower(), ex
    assert execute(service, fid, data="ok").json()["stdout"] == "fine"


def test_data_longer_than_8192_is_400(service, echo_py):
    r = execute(service, echo_py, data="x" * 8193)
    assert r.status_code == 400 and "data" in error_of(r)["message"]
    assert execute(service, echo_py, data="x" * 8192).json()["status"] == "completed"


def test_no_active_deployment_and_unready_build(service, unique_id):
    fid = new_function(service, unique_id())
    r = execute(service, fid)
    assert r.status_code == 404 and error_of(r)["type"] == "deployment_not_found"
    r = execute(service, "no-such-function")
    assert r.status_code == 404 and error_of(r)["type"] == "function_not_found"


def test_many_concurrent_executions(service, echo_py):
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: execute(service, echo_py, data=f"n{i}").json(), range(48)))
    assert all(r["status"] == "completed" for r in results), [r["stderr"] for r in results if r["status"] != "completed"]
    assert sorted(json.loads(r["stdout"])["payload"] for r in results) == sorted(f"n{i}" for i in range(48))


def test_list_executions_newest_first(service, unique_id):
    fid = deploy(service, unique_id(), {"main.py": PY_STATUS})
    ids = [execute(service, fid).json()["$id"] for _ in range(4)]
    listed = requests.get(f"{service.url}/functions/{fid}/executions", headers=service.headers()).json()
    assert listed["total"] == 4 and [e["$id"] for e in listed["executions"]] == ids[::-1]
    page = requests.get(f"{service.url}/functions/{fid}/executions", headers=service.headers(),
                        params={"limit": 1, "cursor": ids[2]}).json()
    assert [e["$id"] for e in page["executions"]] == [ids[1]]
    page = requests.get(f"{service.url}/functions/{fid}/executions", headers=service.headers(), params={"search": ids[0]}).json()
    assert [e["$id"] for e in page["executions"]] == [ids[0]]
    r = requests.get(f"{service.url}/functions/{fid}/executions", headers=service.headers(), params={"cursor": "nope"})
    assert r.status_code == 400 and error_of(r)["message"] == "Execution 'nope' for the 'cursor' value not found."


def test_restart_with_executions_waiting_and_running(fresh_service, unique_id):
    """Without retries, an execution a stop cut off once it started ends failed
    (with them, it runs again: test_crash_recovery; one claimed but not yet
    started is queued again either way)."""
    svc = fresh_service(FUNCTIONS_ASYNC_WORKERS="1", FUNCTIONS_ASYNC_RETRIES="0")
    fid = deploy(svc, unique_id(), {"main.py": PY_SLEEP}, timeout=60)
    running = execute(svc, fid, data="sleep", is_async=True).json()
    # Started: the function has its request (`attempts` counts it), not only claimed.
    poll(lambda: execution_status(svc, fid, running["$id"]), lambda e: e["attempts"] == 1, 30)
    waiting = [execute(svc, fid, data=f"w{i}", is_async=True).json() for i in range(3)]
    assert all(w["status"] == "waiting" for w in waiting)
    assert svc.stop() == 0
    svc.start()
    cut_off, _ = wait_execution(svc, fid, running["$id"])
    # Failed by the stopping service itself, or at the restart if that write did not make it.
    assert cut_off["status"] == "failed" and ("interrupted" in cut_off["stderr"] or "shutting down" in cut_off["stderr"])
    for w in waiting:
        final, _ = wait_execution(svc, fid, w["$id"])
        assert final["status"] == "completed" and final["stdout"] == "awake"


def test_overload_answers_429_instead_of_queueing_without_bound(fresh_service, unique_id):
    svc = fresh_service(FUNCTIONS_ASYNC_WORKERS="1", FUNCTIONS_MAX_WAITING="2")
    fid = deploy(svc, unique_id(), {"main.py": PY_SLEEP}, timeout=5)
    first = execute(svc, fid, data="sleep", is_async=True).json()
    wait_processing(svc, fid, first["$id"])
    assert [execute(svc, fid, data="x", is_async=True).status_code for _ in range(3)] == [201, 201, 429]
    r = execute(svc, fid, data="x", is_async=True)
    assert r.status_code == 429 and error_of(r)["type"] == "general_rate_limit_exceeded"


def test_a_caller_hanging_up_does_not_lose_the_execution_or_break_the_service(service, unique_id):
    code = "import time\ndef main(req, res):\n    time.sleep(float(req.payload or 0))\n    return res.send('slept')\n"
    fid = deploy(service, unique_id(), {"main.py": code})
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{service.url}/functions/{fid}/executions", json={"data": "1.5", "async": False},
                      headers=service.headers(), timeout=0.5)
    time.sleep(2)
    assert execute(service, fid, data="0").json()["stdout"] == "slept"
    listed = requests.get(f"{service.url}/functions/{fid}/executions", headers=service.headers()).json()
    assert listed["total"] == 2 and all(e["status"] == "completed" for e in listed["executions"])
