"""A crash loses no work (reliability probe F3): the server is killed with
SIGKILL mid-work and started again on the same data directory."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import docker
import requests

from codepkg import PY_HELLO, targz
from harness import poll
from restkit import (
    PY_SLEEP,
    deploy,
    deployment_status,
    execute,
    execution_status,
    new_function,
    upload,
    wait_build,
    wait_execution,
    wait_processing,
)


def kill_server(svc) -> None:
    """SIGKILL the server process alone (not its process group): whatever it
    started must go by itself."""
    os.kill(svc.process.pid, signal.SIGKILL)
    svc.process.wait(10)


def port_is_bound(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_kill_during_executions_requeues_unstarted_and_retries_started_async_ones(fresh_service, unique_id):
    """Claimed but unstarted executions go back to the queue; the started
    async one runs again (a fault of the service, FUNCTIONS_ASYNC_RETRIES);
    the started sync one fails: its caller got an error already."""
    svc = fresh_service(FUNCTIONS_ASYNC_WORKERS="4", FUNCTIONS_MAX_CONTAINERS_PER_FUNCTION="1")
    fid = deploy(svc, unique_id(), {"main.py": PY_SLEEP}, timeout=60)
    sync_fid = deploy(svc, unique_id(), {"main.py": PY_SLEEP}, timeout=60)
    running = execute(svc, fid, data="sleep", is_async=True).json()
    wait_processing(svc, fid, running["$id"])
    # Three more are claimed by idle workers and wait for the one container;
    # two stay in the queue.
    queued = [execute(svc, fid, data=f"w{i}", is_async=True).json() for i in range(5)]
    poll(lambda: sum(execution_status(svc, fid, q["$id"])["status"] == "processing" for q in queued),
         lambda n: n == 3, timeout=10)
    # A sync caller whose function is running when the server dies.
    threading.Thread(target=lambda: _ignore_errors(execute, svc, sync_fid, "sleep"), daemon=True).start()
    listed = poll(lambda: requests.get(f"{svc.url}/functions/{sync_fid}/executions", headers=svc.headers()).json(),
                  lambda page: page["total"] == 1 and page["executions"][0]["status"] == "processing", timeout=15)[0]
    sync_id = listed["executions"][0]["$id"]
    time.sleep(0.5)

    kill_server(svc)
    # The gateway dies with its parent: nothing stays bound to the port.
    poll(lambda: port_is_bound(svc.port), lambda bound: not bound, timeout=5)

    svc.start()
    for q in queued:
        final, _ = wait_execution(svc, fid, q["$id"], timeout=90)
        assert final["status"] == "completed" and final["stdout"] == "awake", final
    sync_final = execution_status(svc, sync_fid, sync_id)
    assert sync_final["status"] == "failed" and "interrupted" in sync_final["stderr"]
    assert sync_final["attempts"] == 1
    ran_again, _ = wait_execution(svc, fid, running["$id"], timeout=90)
    assert ran_again["status"] == "completed" and ran_again["stdout"] == "awake" and ran_again["attempts"] == 2, ran_again


def test_kill_during_a_build_sweeps_its_container_and_rebuilds(fresh_service, unique_id):
    # A build slowed to a crawl (5 % of a CPU unpacking 5,000 files) so it is surely running when killed.
    svc = fresh_service(FUNCTIONS_BUILD_CPUS="0.05")
    fid = new_function(svc, unique_id())
    files = {"main.py": PY_HELLO, **{f"lib/m{i}.py": f"X = {i}\n" for i in range(5_000)}}
    dep = upload(svc, fid, targz(files)).json()
    client = docker.from_env()
    containers_dir = str(svc.data_dir.resolve() / "c")  # each replica's pool works in c/<replica>

    def build_containers():
        # The low-level list: the high-level one inspects every container and
        # fails when one of another test vanishes meanwhile.
        found = client.api.containers(all=True, filters={"label": "functions.role=build"})
        return [c["Id"] for c in found
                if os.path.dirname((c.get("Labels") or {}).get("functions.work-dir", "")) == containers_dir]

    poll(build_containers, lambda found: len(found) == 1, timeout=60)
    assert deployment_status(svc, fid, dep["$id"])["status"] == "building"
    kill_server(svc)
    assert build_containers(), "the orphan is still there before the restart"

    svc.env["FUNCTIONS_BUILD_CPUS"] = "1.0"  # the re-run may go at full speed
    svc.start()
    final, _ = wait_build(svc, fid, dep["$id"], timeout=180)
    assert final["status"] == "ready", final["buildStderr"]
    # The orphan was swept; only the re-run's container ever existed after it, and it is gone too.
    assert build_containers() == []
    staging = svc.data_dir / "staging"
    assert [p for p in staging.rglob("*") if not p.is_dir()] == []  # the killed build's copy is gone
    assert not [p for p in os.listdir("/tmp") if p.startswith("build-source-")
                and os.stat(os.path.join("/tmp", p)).st_mtime > time.time() - 600]


def _ignore_errors(fn, *args):
    try:
        fn(*args)
    except requests.RequestException:
        pass
