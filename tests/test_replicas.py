"""Replicas: several server processes behind one Envoy, sharing only the
database (SQLite, and PostgreSQL), with real Docker and real kill -9."""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import docker
import grpc
import pytest

from codepkg import targz
from functions.v1 import deployment_pb2, deployment_pb2_grpc, execution_pb2, execution_pb2_grpc
from harness import poll
from restkit import deploy, execute, new_function, upload, wait_build, wait_execution
from server.settings import Settings

PY_WHO = "def main(req, res):\n    return res.send('v1:' + req.payload)\n"
PY_SLEEPY = ("import time\ndef main(req, res):\n    time.sleep(float(req.payload or '0'))\n"
             "    return res.send('slept ' + req.payload)\n")


def rows(svc, sql: str, params=()) -> list[tuple]:
    """Read the service's database directly (what the replicas wrote)."""
    url = svc.env.get("FUNCTIONS_DATABASE_URL", "")
    if url:
        import psycopg2

        with psycopg2.connect(url) as conn, conn.cursor() as cursor:
            cursor.execute(sql.replace("?", "%s"), params)
            return cursor.fetchall()
    with sqlite3.connect(svc.data_dir / "functions.db") as conn:
        return conn.execute(sql, params).fetchall()


def replica_address(svc, index: int) -> str:
    return Settings(grpc_address=svc.grpc_address).replica_address(index)


def metadata(svc, **extra) -> tuple:
    return (("x-appwrite-project", "default"), ("x-appwrite-key", svc.bootstrap_key), *extra.items())


def replica_pid(index: int, svc) -> int:
    out = subprocess.run(["pgrep", "-f", f"server serve --replica {index} "], capture_output=True, text=True).stdout.split()
    for pid in map(int, out):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"FUNCTIONS_DATA_DIR={svc.data_dir}".encode() in env:
            return pid
    raise AssertionError(f"replica {index} of {svc.data_dir} not running")


def test_replicas_serve_executions_with_function_affinity(database_env, fresh_service):
    svc = fresh_service(FUNCTIONS_REPLICAS="3", **database_env)
    fids = [deploy(svc, f"aff{uuid.uuid4().hex[:8]}", {"main.py": PY_WHO}) for _ in range(8)]
    for fid in fids:
        for i in range(3):
            r = execute(svc, fid, data=str(i))
            assert r.status_code == 201 and r.json()["stdout"] == f"v1:{i}", r.text
    owners = {fid: {o for (o,) in rows(svc, "SELECT owner FROM execution WHERE function = ?", (fid,))} for fid in fids}
    assert all(len(o) == 1 for o in owners.values()), owners  # one function, one replica (its warm containers)
    assert len(set().union(*owners.values())) >= 2, owners  # eight functions spread over the replicas
    # Every replica serves (straight to each, past Envoy).
    for index in range(3):
        with grpc.insecure_channel(replica_address(svc, index)) as channel:
            stub = execution_pb2_grpc.ExecutionServiceStub(channel)
            ex = stub.CreateExecution(execution_pb2.CreateExecutionRequest(function_id=fids[0], data="direct", **{"async": False}),
                                      metadata=metadata(svc))
            assert ex.status == "completed" and ex.stdout == "v1:direct"
    served = {o for (o,) in rows(svc, "SELECT DISTINCT owner FROM execution")}
    assert len(served) == 3, served


def test_an_activation_through_one_replica_is_seen_by_another_at_once(database_env, fresh_service):
    svc = fresh_service(FUNCTIONS_REPLICAS="3", **database_env)
    fid = deploy(svc, f"gen{uuid.uuid4().hex[:8]}", {"main.py": PY_WHO})
    v2 = upload(svc, fid, targz({"main.py": PY_WHO.replace("v1:", "v2:")}), activate="false").json()
    assert wait_build(svc, fid, v2["$id"])[0]["status"] == "ready"
    with grpc.insecure_channel(replica_address(svc, 0)) as a, grpc.insecure_channel(replica_address(svc, 2)) as b:
        run_on_b = execution_pb2_grpc.ExecutionServiceStub(b)
        request = execution_pb2.CreateExecutionRequest(function_id=fid, data="x", **{"async": False})
        assert run_on_b.CreateExecution(request, metadata=metadata(svc)).stdout == "v1:x"  # B caches the plan
        deployment_pb2_grpc.DeploymentServiceStub(a).ActivateDeployment(
            deployment_pb2.ActivateDeploymentRequest(function_id=fid, deployment_id=v2["$id"]), metadata=metadata(svc))
        assert run_on_b.CreateExecution(request, metadata=metadata(svc)).stdout == "v2:x"


def test_a_chunked_upload_spread_over_replicas_is_assembled_once(database_env, fresh_service):
    from google.api import httpbody_pb2

    svc = fresh_service(FUNCTIONS_REPLICAS="3", **database_env)
    fid = new_function(svc, f"chk{uuid.uuid4().hex[:8]}")
    data = targz({"main.py": PY_WHO, "blob.bin": os.urandom(3 * 1024 * 1024)})
    size, piece = len(data), 1024 * 1024
    ranges = [(start, min(start + piece, size)) for start in range(0, size, piece)]

    def send(index: int, start: int, end: int, upload_id: str = ""):
        extra = {"content-range": f"bytes {start}-{end - 1}/{size}", **({"x-appwrite-id": upload_id} if upload_id else {})}
        with grpc.insecure_channel(replica_address(svc, index)) as channel:
            request = deployment_pb2.CreateDeploymentRequest(
                function_id=fid, entrypoint="main.py", activate=True,
                body=httpbody_pb2.HttpBody(content_type="application/gzip", data=data[start:end]))
            return deployment_pb2_grpc.DeploymentServiceStub(channel).CreateDeployment(iter([request]), metadata=metadata(svc, **extra))

    first = send(0, *ranges[0])
    # The rest at once, each chunk to another replica than the one before.
    jobs = [(i % 3, s, e) for i, (s, e) in enumerate(ranges[1:], start=1)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: send(*job, upload_id=first.id), jobs))
    assert {r.id for r in results} == {first.id}
    assert sum(r.chunks_uploaded == r.chunks_total for r in results) >= 1
    final, _ = wait_build(svc, fid, first.id)
    assert final["status"] == "ready" and final["size"] == size, final
    assert rows(svc, "SELECT COUNT(*) FROM build WHERE deployment = ?", (first.id,)) == [(1,)]  # assembled once
    assert execute(svc, fid, data="ok").json()["stdout"] == "v1:ok"


def test_a_killed_replica_loses_nothing_and_its_work_is_taken_over(database_env, fresh_service):
    """kill -9 of one replica under mixed sync/async load, its slot held so it
    cannot restart: within the lease the others finish or fail its work, and
    remove its containers."""
    svc = fresh_service(FUNCTIONS_REPLICAS="3", FUNCTIONS_LEASE_SECONDS="3", **database_env)
    fids = [deploy(svc, f"kill{uuid.uuid4().hex[:8]}", {"main.py": PY_SLEEPY}) for _ in range(6)]
    victim = 1
    victim_id = rows(svc, "SELECT id FROM replica WHERE id LIKE ?", (f"%-{victim}",))[0][0]
    created, sync_results = [], []

    def sync_call(fid):
        r = execute(svc, fid, data="1.5")
        return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        for fid in fids:
            for _ in range(3):
                r = execute(svc, fid, data="1.5", is_async=True)
                assert r.status_code == 201
                created.append((fid, r.json()["$id"]))
        sync_futures = [pool.submit(sync_call, fid) for fid in fids]
        time.sleep(1.0)  # executions are running everywhere
        lock = open(svc.data_dir / "run" / f"replica-{victim}.lock", "a")
        os.kill(replica_pid(victim, svc), signal.SIGKILL)
        poll(lambda: _try_lock(lock), lambda held: held, timeout=10)  # the restart cannot take the slot
        try:
            sync_results = [f.result(timeout=60) for f in sync_futures]
            finals = [wait_execution(svc, fid, eid, timeout=60)[0] for fid, eid in created]
            assert all(f["status"] in ("completed", "failed") for f in finals)
            # None lost: every async one ran to the end, or was started by the dead replica and failed saying so.
            for final in finals:
                assert final["status"] == "completed" or "interrupted" in final["stderr"], final
            assert sum(f["status"] == "completed" for f in finals) >= len(finals) - 3 * 2  # at most the victim's share
            # The sync callers of the victim got an error, everyone else their answer.
            assert all(code == 201 or code >= 500 for code, _ in sync_results), sync_results
            # Its lease ran out: its row is gone, nothing is still `processing` under its name, its containers are removed.
            poll(lambda: rows(svc, "SELECT COUNT(*) FROM replica WHERE id = ?", (victim_id,)), lambda r: r == [(0,)], timeout=15)
            assert rows(svc, "SELECT COUNT(*) FROM execution WHERE owner = ? AND status = 'processing'", (victim_id,)) == [(0,)]
            victim_dir = str(svc.data_dir.resolve() / "c" / str(victim))
            left = [c for c in docker.from_env().api.containers(all=True, filters={"label": "functions.role"})
                    if (c.get("Labels") or {}).get("functions.work-dir") == victim_dir]
            assert left == []
            # No execution ran twice: each finished exactly once, by one owner.
            assert rows(svc, "SELECT COUNT(*) FROM execution WHERE status IN ('waiting', 'processing')") == [(0,)]
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
    # The slot comes back and serves again.
    poll(lambda: rows(svc, "SELECT COUNT(*) FROM replica WHERE id = ? AND heartbeat > 0", (victim_id,)),
         lambda r: r == [(1,)], timeout=60)


def _try_lock(fh) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def test_replicas_share_one_rate_limit(fresh_service):
    svc = fresh_service(FUNCTIONS_REPLICAS="3", FUNCTIONS_EXECUTION_RATE_LIMIT="5")
    fid = deploy(svc, f"rl{uuid.uuid4().hex[:8]}", {"main.py": PY_WHO})
    codes = []
    for index in range(3):  # straight to each replica: 3 x 4 calls from one anonymous caller
        with grpc.insecure_channel(replica_address(svc, index)) as channel:
            stub = execution_pb2_grpc.ExecutionServiceStub(channel)
            for _ in range(4):
                try:
                    stub.CreateExecution(execution_pb2.CreateExecutionRequest(function_id=fid, **{"async": True}),
                                         metadata=(("x-appwrite-project", "default"),))
                    codes.append(201)
                except grpc.RpcError as error:
                    codes.append(error.code())
    assert codes.count(201) == 5 and codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 7, codes


def test_two_hosts_over_one_postgresql_run_each_others_deployments(pg_database, fresh_service):
    """Two "hosts": data directories (and pools) of their own, sharing only
    PostgreSQL, with code packages and build outputs in the database."""
    shared = dict(FUNCTIONS_DATABASE_URL=pg_database, FUNCTIONS_STORAGE="database", FUNCTIONS_REPLICAS="1",
                  FUNCTIONS_JWT_SECRET="one-secret-for-every-host")
    host_a, host_b = fresh_service(**shared), fresh_service(**shared)
    assert host_a.data_dir != host_b.data_dir
    built_on_a = deploy(host_a, f"ha{uuid.uuid4().hex[:8]}", {"main.py": PY_WHO})
    built_on_b = deploy(host_b, f"hb{uuid.uuid4().hex[:8]}", {"main.py": PY_WHO.replace("v1:", "b:"), "lib/x.py": "X = 1\n"})
    # Each runs the other's: the package and build output come from the database into its own cache.
    assert execute(host_b, built_on_a, data="1").json()["stdout"] == "v1:1"
    assert execute(host_a, built_on_b, data="2").json()["stdout"] == "b:2"
    assert (host_a.data_dir / "builds").exists() and any((host_a.data_dir / "builds").rglob("x.py"))
    # (Either host's build workers may have built either upload: the package came from the database then.)
    hosts = {r[0] for r in rows(host_a, "SELECT host FROM replica")}
    assert len(hosts) == 2, hosts
