"""The warm container pool (server/engine/pool.py) against real Docker and the
real runtime images: stem cells, warm reuse, timeouts, OOM, crashes, caps,
reaping, hardening and cleanup.

pytest-asyncio is not used: a pool lives on one event loop, so each pool here
comes with its own loop (`PoolRunner`), and tests run coroutines on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import pytest

from server.domain.runtimes import load_catalog
from server.engine import ContainerLimits, RuntimeImages
from server.engine.pool import OWNER_LABEL, ContainerPool, DeploymentTarget, PoolBusy
from server.settings import REPO_ROOT, Settings

PY_APP = '''
import os, socket, sys, time

def main(req, res):
    action = req.headers.get("x-action", "")
    if action == "echo":
        return res.json({"payload": req.payload, "env": req.env, "headers": req.headers,
                         "environ": os.environ.get("POOL_VAR"), "host": socket.gethostname()})
    if action == "print":
        print("to stdout", req.payload)
        print("to stderr", file=sys.stderr)
        return res.send("printed")
    if action == "raise":
        raise ValueError("boom")
    if action == "sleep":
        time.sleep(float(req.payload))
        return res.json({"host": socket.gethostname()})
    if action == "hog":
        hog = []
        while True:
            hog.append(bytearray(8 << 20))
    if action == "exit":
        os._exit(3)
    if action == "probe":
        return res.json(probe())
    return res.json({"host": socket.gethostname()})


def writable(path):
    try:
        with open(os.path.join(path, ".probe"), "w") as fh:
            fh.write("x")
        os.unlink(os.path.join(path, ".probe"))
        return True
    except OSError:
        return False


def probe():
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return {
        "uid": os.getuid(), "gid": os.getgid(),
        "root_writable": writable("/") or writable("/etc") or writable("/opt"),
        "code_writable": writable(os.getcwd()),
        "tmp_writable": writable("/tmp"),
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "cap_eff": status["CapEff"].strip(),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "cwd": os.getcwd(),
        "sock_dir": sorted(os.listdir("/opt/functions/sock")),
        "sock_dir_writable": writable("/opt/functions/sock"),
    }
'''

NODE_APP = r'''
const os = require('os');
module.exports = async (req, res) => {
  const action = req.headers['x-action'] || '';
  if (action === 'echo') {
    return res.json({ payload: req.payload, env: req.env, headers: req.headers,
                      environ: process.env.POOL_VAR ?? null, host: os.hostname() });
  }
  if (action === 'print') { console.log('to stdout', req.payload); console.error('to stderr'); return res.send('printed'); }
  if (action === 'raise') { await null; throw new Error('boom'); }
  if (action === 'spin') { for (;;) {} }
  res.json({ host: os.hostname() });
};
'''


class PoolRunner:
    """A started pool with its own event loop (the pool is bound to the loop)."""

    def __init__(self, images: RuntimeImages, catalog: dict, **options):
        self.loop = asyncio.new_event_loop()
        self.images = images
        self.work_dir = Path(tempfile.mkdtemp(prefix="pool-"))
        options.setdefault("runtimes", [catalog["python-3.11"]])
        options.setdefault("limits", ContainerLimits(memory_mb=128, cpus=1.0, pids=64))
        options.setdefault("tmp_mb", 16)
        self.pool = ContainerPool(docker.from_env(), REPO_ROOT / "runtimes", self.work_dir, images.ensure, **options)
        self.run(self.pool.start())

    def run(self, coro, timeout: float = 60):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def stop(self) -> None:
        try:
            self.run(self.pool.stop())
        finally:
            self.loop.close()
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def invoke(self, target, action: str = "", payload: str = "", env=None, timeout: float = 10):
        return self.run(self.pool.invoke(target, payload, env or {}, {"x-action": action}, timeout))

    def states(self) -> dict:
        return self.pool.stats()["states"]

    def rows(self, target=None) -> list[dict]:
        """Containers not being removed, of one deployment (or all)."""
        return [r for r in self.pool.containers()
                if r["state"] != "removing" and (target is None or r["deployment"] == target.key)]

    def wait_until(self, predicate, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; stats: {self.pool.stats()}"
            self.run(asyncio.sleep(0.05))


_counter = iter(range(1_000_000))


@pytest.fixture(scope="module")
def env(runtime_images):
    """Runtimes, images and a factory for deployments (code dirs written here)."""
    runtimes = {r.id: r for r in load_catalog(Settings().runtime_catalog)}
    images = RuntimeImages(docker.from_env(), REPO_ROOT / "runtimes")
    code_root = Path(tempfile.mkdtemp(prefix="pool-code-"))

    def deployment(runtime_id: str = "python-3.11", source: str | None = None, project: str = "proj") -> DeploymentTarget:
        runtime = runtimes[runtime_id]
        entry = "main.py" if runtime.language == "python" else "index.js"
        code = code_root / f"dep{next(_counter)}"
        code.mkdir()
        (code / entry).write_text(source if source is not None else (PY_APP if runtime.language == "python" else NODE_APP))
        return DeploymentTarget(project, code.name, runtime, images.ensure(runtime), code, entry)

    yield {"runtimes": runtimes, "images": images, "deployment": deployment}
    shutil.rmtree(code_root, ignore_errors=True)


@pytest.fixture(scope="module")
def shared(env):
    """One pool for the tests that need no special settings; stem cells for both runtimes."""
    runner = PoolRunner(env["images"], env["runtimes"], runtimes=list(env["runtimes"].values()))
    yield runner
    runner.stop()


@pytest.fixture
def make_pool(env):
    runners = []

    def make(**options) -> PoolRunner:
        runners.append(PoolRunner(env["images"], env["runtimes"], **options))
        return runners[-1]

    yield make
    for runner in runners:
        runner.stop()


def owned(pool: ContainerPool) -> set[str]:
    found = docker.from_env().api.containers(all=True, filters={"label": f"{OWNER_LABEL}={pool.owner}"})
    return {c["Names"][0].lstrip("/") for c in found}


# -- stem cells and warm reuse ---------------------------------------------------


@pytest.mark.parametrize("runtime_id", ["python-3.11", "node-18.0"])
def test_first_invoke_takes_a_stem_cell_and_replenishes(shared, env, runtime_id):
    shared.wait_until(lambda: shared.pool.stats()["prewarmed"].get(runtime_id) == 1)
    stem = next(r["name"] for r in shared.rows() if r["state"] == "prewarmed" and r["runtime"] == runtime_id)
    target = env["deployment"](runtime_id)
    started = time.monotonic()
    result = shared.invoke(target)
    elapsed = time.monotonic() - started
    assert result.status_code == 200, result
    assert [r["name"] for r in shared.rows(target)] == [stem]  # the stem cell now belongs to the deployment
    assert elapsed < 0.15, elapsed  # no `docker run` (that is ~250 ms or more)
    shared.wait_until(lambda: shared.pool.stats()["prewarmed"].get(runtime_id) == 1)  # a new stem cell


def test_warm_reuse_is_the_same_container_and_fast(shared, env):
    target = env["deployment"]()
    first = json.loads(shared.invoke(target).body)["host"]
    timings = []
    for _ in range(20):
        started = time.monotonic()
        result = shared.invoke(target)
        timings.append(time.monotonic() - started)
        assert json.loads(result.body)["host"] == first
    assert sorted(timings)[10] < 0.005, timings
    (row,) = shared.rows(target)
    assert row["state"] == "idle" and row["uses"] == 21


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


def test_load_failure_is_500_and_a_fixed_deployment_works(shared, env):
    broken = env["deployment"](source="def main(req, res)\n    return res.send('x')\n")
    for _ in range(2):  # each attempt fails cleanly, nothing is left behind
        result = shared.invoke(broken)
        assert result.status_code == 500 and "SyntaxError" in result.error, result
        assert shared.rows(broken) == []
    missing = env["deployment"](source="x = 1\n")
    assert "main" in shared.invoke(missing).error
    fixed = env["deployment"](source="def main(req, res):\n    return res.send('fixed')\n")
    assert shared.invoke(fixed).body == "fixed"


def test_warm_preassigns_and_forget_removes(shared, env):
    target = env["deployment"]()
    assert shared.run(shared.pool.warm(target)) is None
    (row,) = shared.rows(target)
    assert row["state"] == "idle" and row["uses"] == 0
    started = time.monotonic()
    assert shared.invoke(target).status_code == 200
    assert time.monotonic() - started < 0.05
    assert shared.rows(target)[0]["name"] == row["name"]
    assert shared.run(shared.pool.forget(target.project, target.deployment_id)) == 1
    assert shared.rows(target) == []
    assert row["name"] not in owned(shared.pool)
    broken = env["deployment"](source="raise RuntimeError('at import')\n")
    assert "at import" in shared.run(shared.pool.warm(broken))


# -- timeouts, memory, crashes -----------------------------------------------------


@pytest.mark.parametrize("runtime_id,action", [("python-3.11", "sleep"), ("node-18.0", "spin")])
def test_timeout_is_124_on_time_and_the_next_call_works(shared, env, runtime_id, action):
    target = env["deployment"](runtime_id)
    host = json.loads(shared.invoke(target).body)["host"]
    started = time.monotonic()
    result = shared.invoke(target, action, "30", timeout=1)
    elapsed = time.monotonic() - started
    assert result.status_code == 124 and result.timed_out and result.error == "Execution timed out.", result
    assert 1.0 <= elapsed < 1.5, elapsed
    after = shared.invoke(target)
    assert after.status_code == 200, after
    assert json.loads(after.body)["host"] != host  # a new container


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


def test_crash_gives_a_clear_error_and_the_pool_recovers(shared, env):
    target = env["deployment"]()
    result = shared.invoke(target, "exit")
    assert result.status_code == 500 and not result.out_of_memory
    assert "exited unexpectedly (exit code 3)" in result.error, result
    assert shared.invoke(target).status_code == 200


# -- concurrency and caps -----------------------------------------------------------


def test_concurrent_invocations_share_at_most_max_per_deployment(make_pool, env):
    runner = make_pool(max_per_deployment=4)
    target = env["deployment"]()
    peak = 0

    async def sample(stop: asyncio.Event):
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, runner.pool.stats()["deployments"].get("/".join(target.key), 0))
            await asyncio.sleep(0.005)

    async def scenario():
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(sample(stop))
        calls = [runner.pool.invoke(target, "0.3", {}, {"x-action": "sleep"}, 10) for _ in range(16)]
        results = await asyncio.gather(*calls)
        stop.set()
        await sampler
        return results

    started = time.monotonic()
    results = runner.run(scenario())
    assert all(r.status_code == 200 for r in results), results
    hosts = {json.loads(r.body)["host"] for r in results}
    assert len(hosts) == 4 and peak == 4, (hosts, peak)
    assert time.monotonic() - started < 5
    assert runner.states()["idle"] == 4


def test_pool_busy_when_the_wait_queue_is_full(make_pool, env):
    runner = make_pool(max_per_deployment=1, max_waiters=2, acquire_timeout=5)
    target = env["deployment"]()
    assert runner.invoke(target).status_code == 200

    async def scenario():
        calls = [asyncio.ensure_future(runner.pool.invoke(target, "0.5", {}, {"x-action": "sleep"}, 10)) for _ in range(3)]
        await asyncio.sleep(0.05)  # one runs, two wait
        with pytest.raises(PoolBusy):
            await runner.pool.invoke(target, "", {}, {}, 10)
        return await asyncio.gather(*calls)

    assert [r.status_code for r in runner.run(scenario())] == [200, 200, 200]
    assert len(runner.rows(target)) == 1


def test_global_cap_evicts_lru_and_keep_alive_reaps(make_pool, env):
    runner = make_pool(prewarm=0, max_containers=2, keep_alive=1.0, reap_interval=0.2)
    first, second, third = (env["deployment"]() for _ in range(3))
    assert runner.invoke(first).status_code == 200
    assert runner.invoke(second).status_code == 200
    assert runner.invoke(third).status_code == 200  # evicts `first`, the least recently used
    assert runner.rows(first) == [] and len(runner.rows(second)) == 1 and len(runner.rows(third)) == 1
    runner.wait_until(lambda: runner.pool.stats()["total"] == 0, timeout=5)
    assert owned(runner.pool) == set()


def test_at_the_global_cap_a_new_deployment_waits_for_a_slot(make_pool, env):
    runner = make_pool(prewarm=0, max_containers=1, acquire_timeout=10)
    busy, waiting = env["deployment"](), env["deployment"]()
    assert runner.invoke(busy).status_code == 200

    async def scenario():
        running = asyncio.ensure_future(runner.pool.invoke(busy, "0.5", {}, {"x-action": "sleep"}, 10))
        await asyncio.sleep(0.05)
        second = await runner.pool.invoke(waiting, "", {}, {}, 10)  # the slot frees when `busy` is idle: evicted
        return await running, second

    first, second = runner.run(scenario())
    assert first.status_code == 200 and second.status_code == 200
    assert runner.rows(busy) == [] and len(runner.rows(waiting)) == 1


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
    successor = ContainerPool(docker.from_env(), REPO_ROOT / "runtimes", b.work_dir, env["images"].ensure,
                              runtimes=[env["runtimes"]["python-3.11"]])
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
    attrs = docker.from_env().api.inspect_container(row["docker_id"])
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


# -- code mounts, socket permissions, the PID namespace flag, on_start ---------------


def mount_points(under: Path) -> list[str]:
    prefix = str(under.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh if line.split()[4].startswith(prefix)]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the service mounts code and hands out socket dirs only as root")


@needs_root
def test_code_is_mounted_read_only_and_many_files_start_fast(make_pool, env):
    runner = make_pool()
    target = env["deployment"]()
    for i in range(20_000):  # link_tree took ~2 s for this
        (target.code_dir / f"f{i:05d}.txt").write_bytes(b"x")
    runner.wait_until(lambda: runner.pool.stats()["prewarmed"].get("python-3.11") == 1)
    started = time.monotonic()
    result = runner.invoke(target, "probe")
    elapsed = time.monotonic() - started
    assert result.status_code == 200, result
    assert json.loads(result.body)["code_writable"] is False
    assert elapsed < 0.5, elapsed
    (row,) = runner.rows(target)
    code_dir = runner.work_dir / row["name"] / "code"
    assert str(code_dir.resolve()) in mount_points(runner.work_dir)
    assert os.stat(code_dir / "main.py").st_ino == os.stat(target.code_dir / "main.py").st_ino
    runner.run(runner.pool.forget(target.project, target.deployment_id))
    assert mount_points(runner.work_dir) == [] and not code_dir.exists()
    assert len(list(target.code_dir.iterdir())) == 20_001  # unmounted before the host dir was deleted


@needs_root
def test_the_sweep_after_a_crash_unmounts_and_keeps_the_build_output(make_pool, env):
    crashed = make_pool()
    target = env["deployment"]()
    assert crashed.invoke(target).status_code == 200
    assert mount_points(crashed.work_dir)
    # The service "was killed": its containers and mounts stay; the next one on the same work_dir sweeps.
    successor = ContainerPool(docker.from_env(), REPO_ROOT / "runtimes", crashed.work_dir, env["images"].ensure, prewarm=0)
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
    attrs = docker.from_env().api.inspect_container(row["docker_id"])
    assert "FUNCTIONS_RUNTIME_PID_NAMESPACE=1" in attrs["Config"]["Env"]
    assert attrs["HostConfig"]["PidMode"] in ("", "private")


def test_on_start_runs_after_loading_and_a_failing_one_releases_the_container(shared, env):
    target = env["deployment"]()
    seen = []

    async def on_start():
        seen.append([r["state"] for r in shared.rows(target)])

    result = shared.run(shared.pool.invoke(target, "", {}, {}, 10, on_start=on_start))
    assert result.status_code == 200 and seen == [["busy"]], (result, seen)

    async def failing():
        raise RuntimeError("could not mark the execution started")

    with pytest.raises(RuntimeError, match="could not mark"):
        shared.run(shared.pool.invoke(target, "", {}, {}, 10, on_start=failing))
    (row,) = shared.rows(target)
    assert row["state"] == "idle" and row["uses"] == 2  # released, not discarded
    assert shared.invoke(target).status_code == 200 and shared.rows(target)[0]["name"] == row["name"]
    fresh = env["deployment"]()  # the slow path (a stem cell) too
    with pytest.raises(RuntimeError):
        shared.run(shared.pool.invoke(fresh, "", {}, {}, 10, on_start=failing))
    assert [r["state"] for r in shared.rows(fresh)] == ["idle"]
