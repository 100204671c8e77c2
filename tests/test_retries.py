"""Async executions cut off by the service run again (FUNCTIONS_ASYNC_RETRIES);
errors of the function never do. Real Docker: the runtime's container is
killed under a running execution."""

from __future__ import annotations

import time

import docker

from harness import poll
from restkit import deploy, execute, execution_status, wait_execution, wait_processing
from server.engine.drivers.docker import ROLE_LABEL, WORK_DIR_LABEL

PY_NAP = "import time\ndef main(req, res):\n    time.sleep(float(req.payload))\n    return res.send('rested')\n"
PY_EXIT = "import os\ndef main(req, res):\n    os._exit(3)\n"


def kill_runtime_containers(svc) -> int:
    """Kill this service's runtime containers (the one running an execution among them)."""
    client = docker.from_env()
    work_dir = str((svc.data_dir / "c").resolve())
    killed = 0
    for c in client.containers.list(filters={"label": f"{ROLE_LABEL}=runtime"}):
        if c.labels.get(WORK_DIR_LABEL, "").startswith(work_dir):
            c.kill()
            killed += 1
    return killed


def test_a_killed_container_runs_the_execution_again(fresh_service, unique_id):
    svc = fresh_service()
    fid = deploy(svc, unique_id(), {"main.py": PY_NAP}, timeout=30)
    ex = execute(svc, fid, data="3", is_async=True).json()
    wait_processing(svc, fid, ex["$id"])
    poll(lambda: execution_status(svc, fid, ex["$id"]), lambda e: e["attempts"] == 1, timeout=10)
    time.sleep(0.5)
    assert kill_runtime_containers(svc) >= 1
    final, _ = wait_execution(svc, fid, ex["$id"], timeout=60)
    assert final["status"] == "completed" and final["stdout"] == "rested" and final["attempts"] == 2, final


def test_retries_end_with_the_last_attempt_failed(fresh_service, unique_id):
    svc = fresh_service(FUNCTIONS_ASYNC_RETRIES="1")
    fid = deploy(svc, unique_id(), {"main.py": PY_NAP}, timeout=30)
    ex = execute(svc, fid, data="5", is_async=True).json()
    for attempt in (1, 2):
        poll(lambda: execution_status(svc, fid, ex["$id"]),
             lambda e: e["status"] == "processing" and e["attempts"] == attempt, timeout=30)
        time.sleep(0.5)
        assert kill_runtime_containers(svc) >= 1
    final, _ = wait_execution(svc, fid, ex["$id"], timeout=60)
    assert final["status"] == "failed" and final["attempts"] == 2, final
    assert "gave up after 2 attempts" in final["stderr"]
    sync = execute(svc, fid, data="0").json()
    assert sync["status"] == "completed" and sync["attempts"] == 1


def test_errors_of_the_function_are_not_retried(service, unique_id):
    """Its exception, its timeout, and its own process exiting (os._exit: the
    runtime survives and reports it)."""
    fid = deploy(service, unique_id(), {"main.py": PY_NAP}, timeout=1)
    timed_out = execute(service, fid, data="5", is_async=True).json()
    raised = execute(service, fid, data="not a number", is_async=True).json()
    exiting = deploy(service, unique_id(), {"main.py": PY_EXIT})
    exited = execute(service, exiting, is_async=True).json()
    assert wait_execution(service, exiting, exited["$id"])[0]["attempts"] == 1
    for ex in (timed_out, raised):
        final, _ = wait_execution(service, fid, ex["$id"], timeout=60)
        assert final["status"] == "failed" and final["attempts"] == 1, final
    assert execution_status(service, fid, timed_out["$id"])["statusCode"] == 124
