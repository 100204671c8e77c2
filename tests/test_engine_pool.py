"""The warm container pool (server/engine/pool/) with the Docker driver,
against real Docker and the real runtime images: what only Docker can show.
The runtimes in their images, stem cells given code while running,
hardening, limits and OOM, label ownership, sweeps of orphans and mounts,
sockets reachable by the service only, and the PID namespace flag.

The scheduling (caps, waiters, eviction, forget, keep-alive, timeouts,
crashes) is tested without Docker in test_pool_scheduling.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import docker
import pytest

from dockerkit import docker_driver, docker_pool, env  # noqa: F401  (`env` is a fixture)
from poolkit import PoolRunner, pool_options
from server.engine import ContainerLimits, ContainerPool
from server.engine.pool import OWNER_LABEL


@pytest.fixture(scope="module")
def shared(env):
    """One pool for the tests that need no special settings; stem cells for python-3.11 and node-18.0."""
    runner = docker_pool(env["images"], env["runtimes"], runtimes=[env["runtimes"][r] for r in ("python-3.11", "node-18.0")])
    yield runner
    runner.stop()


@pytest.fixture
def make_pool(env):
    runners = []

    def make(**options) -> PoolRunner:
        runners.append(docker_pool(env["images"], env["runtimes"], **options))
        return runners[-1]

    yield make
    for runner in runners:
        runner.stop()


def owned(pool: ContainerPool) -> set[str]:
    found = docker.from_env().api.containers(all=True, filters={"label": f"{OWNER_LABEL}={pool.owner}"})
    return {c["Names"][0].lstrip("/") for c in found}


# -- the runtimes in their images ---------------------------------------------------


@pytest.mark.parametrize("runtime_id", ["python-3.11", "node-18.0"])
def test_a_running_stem_cell_gets_its_deployments_code(shared, env, runtime_id):
    """The code appears inside a container started before it was assigned
    (a mount with rslave propagation as root, else files linked into its
    bind-mounted code dir)."""
    shared.wait_until(lambda: shared.pool.stats()["prewarmed"].get(runtime_id) == 1)
    stem = next(r["name"] for r in shared.rows() if r["state"] == "prewarmed" and r["runtime"] == runtime_id)
    target = env["deployment"](runtime_id)
    result = shared.invoke(target)
    assert result.status_code == 200, result
    assert [r["name"] for r in shared.rows(target)] == [stem]  # a stem cell was taken: no cold start
    shared.wait_until(lambda: shared.pool.stats()["prewarmed"].get(runtime_id) == 1)  # a new stem cell


@pytest.mark.parametrize("runtime_id", ["python-3.11", "node-18.0"])
def test_payload_env_headers_and_output(shared, env, runtime_id):
    target = env["deployment"](runtime_id)
    result = shared.run(shared.pool.invoke(target, "päyload", {"POOL_VAR": "v1", "OTHER": "x"}, {"x-action": "echo", "x-h": "1"}, 10))
    assert result.status_code == 200 and not result.error, result
    body = json.loads(result.body)
    assert body["payload"] == "päyload"
    assert body["env"] == {"POOL_VAR": "v1", "OTHER": "x"} and body["environ"] == "v1"
    assert body["headers"]["x-h"] == "1"
    printed = shared.invoke(target, "print", "hi")
    assert printed.body == "printed"
    assert "to stdout hi" in printed.logs and "to stderr" in printed.errors


@pytest.mark.parametrize("runtime_id", ["python-3.11", "node-18.0"])
def test_exception_is_500_with_traceback_and_the_container_stays(shared, env, runtime_id):
    target = env["deployment"](runtime_id)
    host = json.loads(shared.invoke(target).body)["host"]
    result = shared.invoke(target, "raise")
    assert result.status_code == 500 and "boom" in result.error, result
    assert ("ValueError" in result.error and "Traceback" in result.error) if runtime_id.startswith("python") else "Error: boom" in result.error
    assert json.loads(shared.invoke(target).body)["host"] == host


@pytest.mark.parametrize("runtime_id,action", [("python-3.11", "sleep"), ("node-18.0", "spin")])
def test_a_timed_out_container_is_killed(shared, env, runtime_id, action):
    target = env["deployment"](runtime_id)
    assert shared.invoke(target).status_code == 200
    (row,) = shared.rows(target)
    result = shared.invoke(target, action, "30", timeout=1)
    assert result.status_code == 124 and result.timed_out, result
    shared.wait_until(lambda: row["name"] not in owned(shared.pool), timeout=30)
    assert shared.invoke(target).status_code == 200


# -- limits -------------------------------------------------------------------------


def test_memory_hog_is_reported_as_out_of_memory(make_pool, env):
    runner = make_pool(limits=ContainerLimits(memory_mb=64, cpus=1.0, pids=64), tmp_mb=8)
    target = env["deployment"]()
    assert runner.invoke(target).status_code == 200
    result = runner.invoke(target, "hog", timeout=20)
    assert result.status_code == 500 and result.out_of_memory, result
    assert result.error == "Execution failed: the function exceeded its memory limit of 64 MB."
    assert runner.invoke(target).status_code == 200  # a new container
    runner.wait_until(lambda: runner.states()["removing"] == 0)
    assert len(runner.rows(target)) == 1


# -- isolation, cleanup, hardening ---------------------------------------------------


def test_pools_only_remove_their_own_containers(make_pool, env):
    a, b = make_pool(), make_pool()
    target = env["deployment"]()
    assert a.invoke(target).status_code == 200 and b.invoke(target).status_code == 200
    for runner in (a, b):  # the stem cells that replaced the ones taken
        runner.wait_until(lambda: runner.pool.stats()["prewarmed"].get("python-3.11") == 1)
    a_names, b_names = owned(a.pool), owned(b.pool)
    assert len(a_names) == 2 and len(b_names) == 2 and not a_names & b_names  # a stem cell and the deployment's
    a.run(a.pool.stop())
    assert owned(a.pool) == set() and owned(b.pool) == b_names
    assert list(a.work_dir.iterdir()) == []
    assert b.invoke(target).status_code == 200
    # A new pool on b's work dir (b "crashed") removes b's leftovers at start, and only those.
    successor = ContainerPool(docker_driver(b.work_dir), env["images"].ensure, pool_options(runtimes=[env["runtimes"]["python-3.11"]]))
    assert successor.owner == b.pool.owner
    b.run(successor.start())
    assert not owned(b.pool) & b_names and len(owned(b.pool)) == 1  # only the successor's stem cell
    b.run(successor.stop())
    assert owned(b.pool) == set()


def test_containers_are_hardened(shared, env):
    target = env["deployment"]()
    result = shared.invoke(target, "probe")
    assert result.status_code == 200, result
    probe = json.loads(result.body)
    assert probe["uid"] != 0 and probe["gid"] != 0
    assert probe["root_writable"] is False and probe["code_writable"] is False
    assert probe["tmp_writable"] is True
    assert probe["interfaces"] == ["lo"]
    assert int(probe["cap_eff"], 16) == 0 and probe["no_new_privs"] == "1"
    assert probe["cwd"] == "/opt/functions/code" and probe["sock_dir"] == ["runtime.sock"]
    assert probe["sock_dir_writable"] is False  # only until the runtime listened: no way to fill the host disk
    (row,) = shared.rows(target)
    attrs = docker.from_env().api.inspect_container(row["driver_id"])
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] and host["Init"]
    assert host["Memory"] == 128 << 20 and host["MemorySwap"] == 128 << 20 and host["PidsLimit"] == 64
    assert attrs["Config"]["Labels"]["functions.role"] == "runtime"
    assert not attrs["NetworkSettings"]["Networks"].get("bridge")


def test_containers_of_a_vanished_service_are_swept(make_pool):
    """A pool whose work_dir was deleted (its service killed, its data gone)
    leaves containers behind; the next pool to start removes them."""
    client = docker.from_env()
    gone_dir, alive_dir = Path(tempfile.mkdtemp(prefix="gone-")), Path(tempfile.mkdtemp(prefix="alive-"))
    made = {}
    for label, work_dir in (("gone", gone_dir), ("alive", alive_dir)):
        made[label] = client.containers.create(
            "functions-runtime/python:3.11", ["sleep", "60"],
            labels={"functions.role": "runtime", "functions.pool": f"other-{label}", "functions.work-dir": str(work_dir)},
        )
    shutil.rmtree(gone_dir)
    try:
        make_pool(prewarm=0)
        ids = {c["Id"] for c in client.api.containers(all=True)}  # no inspect: others' containers may vanish meanwhile
        assert made["gone"].id not in ids and made["alive"].id in ids
    finally:
        for container in made.values():
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        shutil.rmtree(alive_dir, ignore_errors=True)


# -- code mounts, socket permissions, the PID namespace flag ----------------------------


def mount_points(under: Path) -> list[str]:
    prefix = str(under.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh if line.split()[4].startswith(prefix)]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the service mounts code and hands out socket dirs only as root")


@needs_root
def test_code_is_mounted_read_only_whatever_the_number_of_files(make_pool, env):
    runner = make_pool()
    target = env["deployment"]()
    for i in range(20_000):  # link_tree took ~2 s for this
        (target.code_dir / f"f{i:05d}.txt").write_bytes(b"x")
    runner.wait_until(lambda: runner.pool.stats()["prewarmed"].get("python-3.11") == 1)
    stem = next(r["name"] for r in runner.rows() if r["state"] == "prewarmed")
    result = runner.invoke(target, "probe")
    assert result.status_code == 200, result
    assert json.loads(result.body)["code_writable"] is False
    (row,) = runner.rows(target)
    assert row["name"] == stem  # the running stem cell saw the mount: no cold start, no per-file work
    code_dir = runner.work_dir / row["name"] / "code"
    assert str(code_dir.resolve()) in mount_points(runner.work_dir)
    assert os.stat(code_dir / "main.py").st_ino == os.stat(target.code_dir / "main.py").st_ino
    runner.run(runner.pool.forget(target.project, target.deployment_id))
    assert mount_points(runner.work_dir) == [] and not code_dir.exists()
    assert row["name"] not in owned(runner.pool)
    assert len(list(target.code_dir.iterdir())) == 20_001  # unmounted before the host dir was deleted


@needs_root
def test_the_sweep_after_a_crash_unmounts_and_keeps_the_build_output(make_pool, env):
    crashed = make_pool(prewarm=0)  # no stem cell starting while the successor sweeps
    target = env["deployment"]()
    assert crashed.invoke(target).status_code == 200
    assert mount_points(crashed.work_dir)
    # The service "was killed": its containers and mounts stay; the next one on the same work_dir sweeps.
    successor = ContainerPool(docker_driver(crashed.work_dir), env["images"].ensure, pool_options(prewarm=0))
    crashed.run(successor.start())
    try:
        assert owned(successor) == set()
        assert [p for p in mount_points(crashed.work_dir) if p.endswith("/code")] == []
        assert sorted(p.name for p in target.code_dir.iterdir()) == ["main.py"]
    finally:
        crashed.run(successor.stop())
    assert mount_points(crashed.work_dir) == []


@needs_root
def test_runtime_sockets_are_reachable_by_the_service_only(shared, env):
    target = env["deployment"]()
    assert shared.invoke(target).status_code == 200
    (row,) = shared.rows(target)
    host_dir = shared.work_dir / row["name"]
    sock_dir, sock = host_dir / "sock", host_dir / "sock" / "runtime.sock"
    assert os.stat(host_dir).st_mode & 0o777 == 0o700
    st = os.stat(sock_dir)
    assert st.st_mode & 0o007 == 0 and st.st_uid == 0, oct(st.st_mode)  # the sandbox user can no longer write in it
    probe = json.loads(shared.invoke(target, "probe").body)
    assert probe["sock_dir"] == ["runtime.sock"] and probe["sock_dir_writable"] is False
    connect = ["/usr/bin/python3", "-c", "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"]
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    as_root = subprocess.run([*connect, str(sock)], capture_output=True, text=True, timeout=30)
    assert as_root.returncode == 0, as_root.stderr
    as_nobody = subprocess.run([*nobody, *connect, str(sock)], capture_output=True, text=True, timeout=30)
    assert as_nobody.returncode == 1 and "PermissionError" in as_nobody.stderr, (as_nobody.returncode, as_nobody.stderr)
    # The control: nobody can connect to a socket that is open to everyone (the check above is not vacuous).
    open_dir = Path(tempfile.mkdtemp(prefix="open-sock-"))
    try:
        open_dir.chmod(0o755)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(open_dir / "s"))
        os.chmod(open_dir / "s", 0o666)
        listener.listen(1)
        control = subprocess.run([*nobody, *connect, str(open_dir / "s")], capture_output=True, text=True, timeout=30)
        listener.close()
        assert control.returncode == 0, control.stderr
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)
    assert shared.invoke(target).status_code == 200  # the probes did not disturb the runtime


def test_runtime_containers_get_the_pid_namespace_flag(shared, env):
    target = env["deployment"]()
    assert shared.invoke(target).status_code == 200
    (row,) = shared.rows(target)
    attrs = docker.from_env().api.inspect_container(row["driver_id"])
    assert "FUNCTIONS_RUNTIME_PID_NAMESPACE=1" in attrs["Config"]["Env"]
    assert attrs["HostConfig"]["PidMode"] in ("", "private")
