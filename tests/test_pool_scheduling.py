"""The pool's scheduling, without Docker: ContainerPool with the
LocalProcessDriver, which runs the real runtime servers (runtimes/python and
runtimes/node) as local processes; and the pure decisions of
server/engine/pool/scheduling.py.

Caps, waiters, eviction, stem cells, forget, keep-alive, warm-up, timeouts,
crashes and the on_start hook. Assertions are about order and counts, not
wall-clock times (the machine is noisy). What only Docker can show
(hardening, limits, OOM, labels, mounts) is in test_engine_pool.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from poolkit import Deployments, PoolRunner, pool_options
from server.domain.runtimes import load_catalog
from server.engine import ContainerPool, LocalProcessDriver, PoolBusy, PoolClosed
from server.engine.pool import State, scheduling
from server.engine.pool.container import Container
from server.settings import REPO_ROOT, Settings

RUNTIMES_DIR = REPO_ROOT / "runtimes"
IMAGE = "local"  # what ensure_image says: the local driver has no images

PY_APP = '''
import os, signal, sys, time

def main(req, res):
    action = req.headers.get("x-action", "")
    if action == "sleep":
        time.sleep(float(req.payload))
    elif action == "exit":
        os._exit(3)
    elif action == "kill-runtime":  # the runtime server itself dies mid-execution
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(10)
    elif action == "runtime-env":
        with open(f"/proc/{os.getppid()}/environ", "rb") as fh:
            return res.json(sorted(item.split(b"=", 1)[0].decode() for item in fh.read().split(b"\\0") if item))
    elif action == "print":
        print("to stdout", req.payload)
        print("to stderr", file=sys.stderr)
    return res.json({"runtime": os.getppid()})
'''

NODE_APP = r'''
module.exports = async (req, res) => {
  const action = req.headers['x-action'] || '';
  if (action === 'spin') { for (;;) {} }
  res.json({ runtime: process.ppid });
};
'''


@pytest.fixture(scope="module")
def runtimes() -> dict:
    return {r.id: r for r in load_catalog(Settings().runtime_catalog)}


@pytest.fixture(scope="module")
def deployment(runtimes):
    made = Deployments(runtimes, lambda runtime: IMAGE, {"python": PY_APP, "node": NODE_APP})
    yield made
    made.remove()


@pytest.fixture
def make_pool():
    runners = []

    def make(**options) -> PoolRunner:
        runners.append(PoolRunner(lambda work_dir: LocalProcessDriver(RUNTIMES_DIR, work_dir), lambda runtime: IMAGE, **options))
        return runners[-1]

    yield make
    for runner in runners:
        runner.stop()


def runtime_of(result) -> int:
    """The runtime server (its PID) that ran an execution: one per container."""
    assert result.status_code == 200, result
    return json.loads(result.body)["runtime"]


def sleeping(runner: PoolRunner, target, seconds: float):
    return runner.pool.invoke(target, str(seconds), {}, {"x-action": "sleep"}, 10)


# -- stem cells and warm reuse ----------------------------------------------------


@pytest.mark.parametrize("runtime_id", ["python-3.11", "node-18.0"])
def test_first_invoke_takes_a_stem_cell_and_replenishes(make_pool, deployment, runtimes, runtime_id):
    runner = make_pool(runtimes=[runtimes[runtime_id]])
    assert runner.pool.stats()["prewarmed"] == {runtime_id: 1}  # start() waited for it
    (stem,) = [r["name"] for r in runner.rows() if r["state"] == "prewarmed"]
    target = deployment(runtime_id)
    assert runner.invoke(target).status_code == 200
    assert [r["name"] for r in runner.rows(target)] == [stem]  # the stem cell now belongs to the deployment
    runner.wait_until(lambda: runner.pool.stats()["prewarmed"].get(runtime_id) == 1)  # a new stem cell
    assert [r["name"] for r in runner.rows() if r["state"] == "prewarmed"] != [stem]


def test_a_stem_cell_of_another_image_is_discarded(make_pool, deployment, runtimes):
    runner = make_pool(runtimes=[runtimes["python-3.11"]])
    (stem,) = [r["name"] for r in runner.rows() if r["state"] == "prewarmed"]
    target = deployment(image="another-image")
    assert runner.invoke(target).status_code == 200
    assert stem not in [r["name"] for r in runner.rows()]  # a cold start instead
    assert len(runner.rows(target)) == 1


def test_warm_reuse_is_the_same_container_and_makes_no_driver_call(make_pool, deployment):
    runner = make_pool()
    target = deployment()
    first = runtime_of(runner.invoke(target))
    calls = []
    for name in ("launch", "give_code", "remove", "status", "logs_tail", "diagnose", "owned", "lock_socket_dir", "code_path"):
        method = getattr(runner.driver, name)
        setattr(runner.driver, name, lambda *args, _name=name, _method=method: calls.append(_name) or _method(*args))
    for _ in range(20):
        assert runtime_of(runner.invoke(target)) == first
    assert calls == []
    (row,) = runner.rows(target)
    assert row["state"] == "idle" and row["uses"] == 21


def test_warm_preassigns_and_forget_removes_idle_containers_now(make_pool, deployment):
    runner = make_pool()
    target = deployment()
    assert runner.run(runner.pool.warm(target)) is None
    (row,) = runner.rows(target)
    assert row["state"] == "idle" and row["uses"] == 0
    assert runner.run(runner.pool.warm(target)) is None and len(runner.rows(target)) == 1  # it has one already
    assert runner.invoke(target).status_code == 200
    assert runner.rows(target)[0]["name"] == row["name"] and runner.rows(target)[0]["uses"] == 1
    assert runner.run(runner.pool.forget(target.project, target.deployment_id)) == 1
    assert runner.pool.containers() == [] and runner.driver.owned() == []
    assert not (runner.work_dir / row["name"]).exists()
    assert runner.run(runner.pool.forget(target.project, target.deployment_id)) == 0
    broken = deployment(source="raise RuntimeError('at import')\n")
    assert "at import" in runner.run(runner.pool.warm(broken))
    assert runner.rows(broken) == []


def test_forget_removes_a_busy_container_when_its_execution_ends(make_pool, deployment):
    runner = make_pool()
    target = deployment()
    assert runner.invoke(target).status_code == 200

    async def scenario():
        running = asyncio.ensure_future(sleeping(runner, target, 0.3))
        await asyncio.sleep(0.05)
        assert [r["state"] for r in runner.rows(target)] == ["busy"]
        assert await runner.pool.forget(target.project, target.deployment_id) == 1
        assert [r["state"] for r in runner.rows(target)] == ["busy"]  # not cut off
        return await running

    assert runner.run(scenario()).status_code == 200
    assert runner.rows(target) == []  # removed as it came back
    runner.wait_until(lambda: runner.pool.stats()["total"] == 0)
    assert runner.invoke(target).status_code == 200  # a forgotten deployment may come back: a fresh container


def test_load_failure_is_500_leaves_nothing_and_a_fixed_deployment_works(make_pool, deployment):
    runner = make_pool()
    broken = deployment(source="def main(req, res)\n    return res.send('x')\n")
    for _ in range(2):
        result = runner.invoke(broken)
        assert result.status_code == 500 and "SyntaxError" in result.error, result
        assert runner.rows(broken) == []
    result = runner.invoke(deployment(source="x = 1\n"))
    assert result.status_code == 500 and "main" in result.error, result
    fixed = deployment(source="def main(req, res):\n    return res.send('fixed')\n")
    assert runner.invoke(fixed).body == "fixed"


# -- timeouts and crashes -----------------------------------------------------------


@pytest.mark.parametrize("runtime_id,action", [("python-3.11", "sleep"), ("node-18.0", "spin")])
def test_timeout_is_124_and_the_next_call_gets_a_new_container(make_pool, deployment, runtime_id, action):
    runner = make_pool()
    target = deployment(runtime_id)
    before = runtime_of(runner.invoke(target))
    started = time.monotonic()
    result = runner.invoke(target, action, "30", timeout=1)
    assert result.status_code == 124 and result.timed_out and result.error == "Execution timed out.", result
    assert 1.0 <= time.monotonic() - started < 20  # the time limit, not the function's 30 s
    assert runtime_of(runner.invoke(target)) != before
    runner.wait_until(lambda: runner.states()["removing"] == 0)
    assert len(runner.rows(target)) == 1 and len(runner.driver.owned()) == 1  # the timed-out one was killed


def test_a_crash_mid_execution_gives_a_clear_error_and_the_pool_recovers(make_pool, deployment):
    runner = make_pool()
    target = deployment()
    before = runtime_of(runner.invoke(target))
    result = runner.invoke(target, "exit")  # the function's process exits: the runtime says so, and quits
    assert result.status_code == 500 and not result.out_of_memory, result
    assert "exited unexpectedly (exit code 3)" in result.error, result
    after = runtime_of(runner.invoke(target))
    assert after != before
    result = runner.invoke(target, "kill-runtime")  # the runtime server dies: the driver finds out why
    assert result.status_code == 500 and not result.out_of_memory, result
    assert result.error.startswith("Execution failed: the runtime exited unexpectedly (exit code 137)"), result
    assert runtime_of(runner.invoke(target)) not in (before, after)
    runner.wait_until(lambda: runner.states()["removing"] == 0)
    assert len(runner.rows(target)) == 1


def test_output_env_and_headers_reach_the_function(make_pool, deployment):
    runner = make_pool()
    target = deployment()
    printed = runner.invoke(target, "print", "hi")
    assert printed.status_code == 200
    assert "to stdout hi" in printed.logs and "to stderr" in printed.errors
    with pytest.raises(TypeError):  # not JSON-serializable: nothing is sent, the container stays
        runner.run(runner.pool.invoke(target, "", {"K": object()}, {}, 10))
    assert [r["state"] for r in runner.rows(target)] == ["idle"]


def test_local_runtimes_do_not_get_the_pid_namespace_flag(make_pool, deployment):
    runner = make_pool()
    result = runner.invoke(deployment(), "runtime-env")
    assert result.status_code == 200, result
    names = json.loads(result.body)
    assert "FUNCTIONS_RUNTIME_SOCKET" in names and "FUNCTIONS_RUNTIME_PID_NAMESPACE" not in names


# -- concurrency and caps -----------------------------------------------------------


def test_concurrent_invocations_share_at_most_max_per_deployment(make_pool, deployment):
    runner = make_pool(max_per_deployment=4)
    target = deployment()
    peak = 0

    async def sample(stop: asyncio.Event):
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, runner.pool.stats()["deployments"].get("/".join(target.key), 0))
            await asyncio.sleep(0.005)

    async def scenario():
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(sample(stop))
        results = await asyncio.gather(*(sleeping(runner, target, 0.2) for _ in range(16)))
        stop.set()
        await sampler
        return results

    results = runner.run(scenario())
    assert len({runtime_of(r) for r in results}) == 4 and peak == 4, peak
    assert runner.states()["idle"] == 4
    assert sum(r["uses"] for r in runner.rows(target)) == 16


def test_waiters_are_handed_the_released_container_in_order(make_pool, deployment):
    runner = make_pool(max_per_deployment=1)
    target = deployment()
    runtime = runtime_of(runner.invoke(target))
    finished = []

    async def call(n: int):
        result = await sleeping(runner, target, 0.3)
        finished.append(n)
        return result

    async def scenario():
        calls = []
        for n in range(4):
            calls.append(asyncio.ensure_future(call(n)))
            await asyncio.sleep(0.02)
        assert runner.pool.stats()["waiting"] == 3
        return await asyncio.gather(*calls)

    assert [runtime_of(r) for r in runner.run(scenario())] == [runtime] * 4
    assert finished == [0, 1, 2, 3]
    (row,) = runner.rows(target)
    assert row["uses"] == 5 and runner.pool.stats()["waiting"] == 0


def test_pool_busy_when_the_wait_queue_is_full(make_pool, deployment):
    runner = make_pool(max_per_deployment=1, max_waiters=2, acquire_timeout=10)
    target = deployment()
    assert runner.invoke(target).status_code == 200

    async def scenario():
        calls = [asyncio.ensure_future(sleeping(runner, target, 0.3)) for _ in range(3)]
        await asyncio.sleep(0.05)  # one runs, two wait
        with pytest.raises(PoolBusy, match="2 requests are waiting"):
            await runner.pool.invoke(target, "", {}, {}, 10)
        return await asyncio.gather(*calls)

    assert [r.status_code for r in runner.run(scenario())] == [200, 200, 200]
    assert len(runner.rows(target)) == 1


def test_a_wait_past_acquire_timeout_is_pool_busy(make_pool, deployment):
    runner = make_pool(max_per_deployment=1, acquire_timeout=0.2)
    target = deployment()
    assert runner.invoke(target).status_code == 200

    async def scenario():
        running = asyncio.ensure_future(sleeping(runner, target, 1.0))
        await asyncio.sleep(0.05)
        with pytest.raises(PoolBusy, match="within 0.2 s"):
            await runner.pool.invoke(target, "", {}, {}, 10)
        return await running

    assert runner.run(scenario()).status_code == 200
    assert runner.pool.stats()["waiting"] == 0


def test_global_cap_evicts_the_least_recently_used(make_pool, deployment):
    runner = make_pool(prewarm=0, max_containers=2)
    first, second, third = (deployment() for _ in range(3))
    assert runner.invoke(first).status_code == 200
    assert runner.invoke(second).status_code == 200
    assert runner.invoke(first).status_code == 200  # now `second` is the least recently used
    assert runner.invoke(third).status_code == 200
    assert len(runner.rows(first)) == 1 and runner.rows(second) == [] and len(runner.rows(third)) == 1
    runner.wait_until(lambda: runner.pool.stats()["total"] == 2)
    assert len(runner.driver.owned()) == 2


def test_at_the_cap_a_stem_cell_is_evicted_and_none_replaces_it(make_pool, deployment, runtimes):
    runner = make_pool(max_containers=1, runtimes=[runtimes["python-3.11"]])
    assert runner.pool.stats()["prewarmed"] == {"python-3.11": 1}
    target = deployment("node-18.0")  # no stem cell of its runtime, and no room: the python one goes
    assert runner.invoke(target).status_code == 200
    runner.wait_until(lambda: runner.pool.stats()["total"] == 1)
    assert [r["deployment"] for r in runner.rows()] == [target.key]
    runner.pool.reap()  # stem cells never evict anything
    assert runner.pool.stats()["total"] == 1 and runner.pool.stats()["prewarmed"] == {"python-3.11": 0}


def test_at_the_global_cap_a_new_deployment_waits_for_a_slot(make_pool, deployment):
    runner = make_pool(prewarm=0, max_containers=1, acquire_timeout=10)
    busy, waiting = deployment(), deployment()
    assert runner.invoke(busy).status_code == 200

    async def scenario():
        running = asyncio.ensure_future(sleeping(runner, busy, 0.3))
        await asyncio.sleep(0.05)
        assert runner.pool.stats()["waiting"] == 0
        second = asyncio.ensure_future(runner.pool.invoke(waiting, "", {}, {}, 10))
        await asyncio.sleep(0.05)
        assert runner.pool.stats()["waiting"] == 1  # for any slot: `busy` is evicted once idle
        return await running, await second

    first, second = runner.run(scenario())
    assert first.status_code == 200 and second.status_code == 200
    assert runner.rows(busy) == [] and len(runner.rows(waiting)) == 1


# -- keep-alive (reap) --------------------------------------------------------------


def test_reap_removes_idle_containers_past_keep_alive(make_pool, deployment):
    runner = make_pool(prewarm=0, keep_alive=1.0)
    target = deployment()
    assert runner.invoke(target).status_code == 200
    runner.pool.reap()
    assert len(runner.rows(target)) == 1  # used just now
    runner.run(asyncio.sleep(1.1))
    runner.pool.reap()
    assert runner.rows(target) == []
    runner.wait_until(lambda: runner.pool.stats()["total"] == 0)
    assert runner.driver.owned() == []


def test_reap_removes_exited_containers_and_tops_up_stem_cells(make_pool, deployment, runtimes):
    runner = make_pool(runtimes=[runtimes["python-3.11"]])
    target = deployment()
    idle = runtime_of(runner.invoke(target))
    runner.wait_until(lambda: runner.pool.stats()["prewarmed"].get("python-3.11") == 1)
    stem = next(r["name"] for r in runner.rows() if r["state"] == "prewarmed")
    os.kill(idle, signal.SIGKILL)  # the idle container's runtime server dies
    runner.driver.remove(stem)  # and so does the stem cell's

    def reaped() -> bool:  # once the loop has seen both connections close
        runner.pool.reap()
        return runner.rows(target) == [] and stem not in [r["name"] for r in runner.rows()]

    runner.wait_until(reaped)
    runner.wait_until(lambda: runner.pool.stats()["prewarmed"].get("python-3.11") == 1)  # a new stem cell
    assert runtime_of(runner.invoke(target)) != idle


def test_reap_interval_follows_keep_alive(make_pool):
    assert make_pool(keep_alive=300).pool.reap_interval == 30.0
    assert make_pool(keep_alive=8).pool.reap_interval == 2.0
    assert make_pool(keep_alive=1).pool.reap_interval == 0.5


# -- on_start, sweeps, stop -----------------------------------------------------------


def test_on_start_runs_after_loading_and_a_failing_one_releases_the_container(make_pool, deployment, runtimes):
    runner = make_pool(runtimes=[runtimes["python-3.11"]])
    target = deployment()
    seen = []

    async def on_start():
        seen.append([r["state"] for r in runner.rows(target)])

    result = runner.run(runner.pool.invoke(target, "", {}, {}, 10, on_start=on_start))
    assert result.status_code == 200 and seen == [["busy"]], (result, seen)

    async def failing():
        raise RuntimeError("could not mark the execution started")

    with pytest.raises(RuntimeError, match="could not mark"):
        runner.run(runner.pool.invoke(target, "", {}, {}, 10, on_start=failing))
    (row,) = runner.rows(target)
    assert row["state"] == "idle" and row["uses"] == 2  # released, not discarded
    assert runner.invoke(target).status_code == 200 and runner.rows(target)[0]["name"] == row["name"]
    fresh = deployment()  # the slow path (a stem cell) too
    with pytest.raises(RuntimeError):
        runner.run(runner.pool.invoke(fresh, "", {}, {}, 10, on_start=failing))
    assert [r["state"] for r in runner.rows(fresh)] == ["idle"]


def test_sweeps_remove_stale_host_dirs_and_staging_copies(make_pool, tmp_path):
    staging = tmp_path / "staging"
    instance = {}

    def driver_with_leftovers(work_dir: Path) -> LocalProcessDriver:
        """What a killed run left: a host dir, and staged sources (besides this run's own)."""
        driver = LocalProcessDriver(RUNTIMES_DIR, work_dir)
        instance["own"] = driver.instance
        (work_dir / "fn-stale-000" / "code").mkdir(parents=True)
        for name in ("killed-run", driver.instance):
            (staging / name).mkdir(parents=True)
            (staging / name / "build-source-x").write_text("x")
        return driver

    runner = PoolRunner(driver_with_leftovers, lambda runtime: IMAGE, staging_dir=staging)
    try:
        assert list(runner.work_dir.iterdir()) == []
        assert [p.name for p in staging.iterdir()] == [instance["own"]]  # this run's builds may be under way
    finally:
        runner.stop()
    assert list(staging.iterdir()) == []


def test_stop_removes_everything_and_refuses_work(make_pool, deployment, runtimes):
    runner = make_pool(runtimes=[runtimes["python-3.11"], runtimes["node-18.0"]])
    target = deployment()
    assert runner.invoke(target).status_code == 200

    async def scenario():
        running = asyncio.ensure_future(sleeping(runner, target, 5))
        await asyncio.sleep(0.05)
        await runner.pool.stop()
        return await running

    assert runner.run(scenario()).status_code == 500  # cut off: the service is shutting down
    assert runner.pool.containers() == [] and runner.driver.owned() == []
    assert list(runner.work_dir.iterdir()) == []
    with pytest.raises(PoolClosed, match="not running"):
        runner.invoke(target)


def test_a_work_dir_too_long_for_socket_paths_is_refused(tmp_path):
    driver = LocalProcessDriver(RUNTIMES_DIR, tmp_path / ("x" * 100))
    with pytest.raises(ValueError, match="too long for UNIX socket paths"):
        ContainerPool(driver, lambda runtime: IMAGE, pool_options())


# -- the decisions, as pure functions -------------------------------------------------


def box(**attrs) -> SimpleNamespace:
    return SimpleNamespace(**attrs)


def alive(c) -> bool:
    return c.alive


def test_choose_idle_takes_the_top_of_the_stack_and_skips_dead_ones():
    bottom, middle, top = box(alive=True), box(alive=False), box(alive=False)
    assert scheduling.choose_idle([bottom, middle, top], alive) == (bottom, [top, middle])
    assert scheduling.choose_idle([middle, top], alive) == (None, [top, middle])
    fresh = box(alive=True)
    assert scheduling.choose_idle([bottom, fresh], alive) == (fresh, [])
    assert scheduling.choose_idle([], alive) == (None, [])


def test_choose_stem_wants_the_newest_live_one_of_the_image():
    old, new, other, dead = (box(image="a", alive=True), box(image="a", alive=True),
                             box(image="b", alive=True), box(image="a", alive=False))
    assert scheduling.choose_stem([old, new, other, dead], "a", alive) == (new, [])
    assert scheduling.choose_stem([other, dead], "a", alive) == (None, [other, dead])
    assert scheduling.choose_stem([], "a", alive) == (None, [])


def test_may_grow_up_to_max_per_deployment():
    assert scheduling.may_grow(0, 1) and scheduling.may_grow(3, 4)
    assert not scheduling.may_grow(4, 4)


def test_make_room_evicts_the_lru_idle_container_then_a_stem_cell():
    idle = [box(last_used=5), box(last_used=2), box(last_used=9)]
    stems = [box(last_used=1)]
    assert scheduling.make_room(3, 4, idle, stems) == (True, None)
    assert scheduling.make_room(4, 4, idle, stems) == (True, idle[1])
    assert scheduling.make_room(4, 4, [], stems) == (True, stems[0])
    assert scheduling.make_room(4, 4, [], []) == (False, None)


def test_wait_for_one_of_the_deployments_containers_or_any_slot():
    assert scheduling.wait_for(2, 0, 5, 3, 10) is scheduling.WaitFor.DEPLOYMENT
    assert scheduling.wait_for(0, 0, 2, 3, 10) is scheduling.WaitFor.SLOT
    with pytest.raises(PoolBusy, match="all 2 containers of the deployment are busy and 3 requests are waiting"):
        scheduling.wait_for(2, 3, 0, 3, 10)
    with pytest.raises(PoolBusy, match="all 10 containers are busy and 3 requests are waiting"):
        scheduling.wait_for(0, 0, 3, 3, 10)


def test_discard_on_release():
    assert scheduling.discard_on_release(False, False, True) is None
    assert scheduling.discard_on_release(False, False, False) == "runtime closed or compromised"
    assert scheduling.discard_on_release(True, False, True) == "pool stopping"
    assert scheduling.discard_on_release(True, True, False) == "deployment forgotten"


def test_stems_to_start_never_takes_more_than_the_free_slots():
    assert scheduling.stems_to_start(0, 2, 0, 10) == 2
    assert scheduling.stems_to_start(1, 2, 0, 10) == 1
    assert scheduling.stems_to_start(0, 2, 9, 10) == 1
    assert scheduling.stems_to_start(0, 2, 10, 10) == 0
    assert scheduling.stems_to_start(3, 2, 0, 10) == 0


def test_to_reap_expired_idle_and_exited_containers():
    now, keep_alive = 100.0, 10.0
    expired = box(state=State.IDLE, last_used=89.0, alive=True)
    recent = box(state=State.IDLE, last_used=95.0, alive=True)
    exited = box(state=State.IDLE, last_used=95.0, alive=False)
    stem_ok = box(state=State.PREWARMED, last_used=0.0, alive=True)
    stem_dead = box(state=State.PREWARMED, last_used=0.0, alive=False)
    busy = box(state=State.BUSY, last_used=0.0, alive=False)
    assert scheduling.to_reap([expired, recent, exited, stem_ok, stem_dead, busy], now, keep_alive, alive) == [
        (expired, "keep-alive expired"), (exited, "runtime exited while idle"), (stem_dead, "stem cell exited")]


def test_container_moves_only_as_transitions_and_its_state_allow():
    runtime = next(iter(load_catalog(Settings().runtime_catalog)))
    c = Container("fn-x", runtime, IMAGE, Path("/nonexistent"))
    with pytest.raises(RuntimeError, match="invalid container transition starting -> idle"):
        c.move(State.IDLE)
    with pytest.raises(RuntimeError, match="before its runtime answered"):
        c.move(State.PREWARMED)
    c.conn = object()
    with pytest.raises(RuntimeError, match="without a deployment"):
        c.move(State.LOADING)
    deployment = object()
    assert c.move(State.LOADING, deployment) is State.STARTING and c.deployment is deployment
    with pytest.raises(RuntimeError, match="already belongs"):
        c.move(State.IDLE, object())
    assert c.move(State.REMOVING) is State.LOADING
    with pytest.raises(RuntimeError, match="invalid container transition removing -> idle"):
        c.move(State.IDLE)


class SlowStartDriver(LocalProcessDriver):
    """Starting a container takes `delay` seconds (as a cold `docker run` under load)."""

    delay = 2.0

    def launch(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().launch(*args, **kwargs)


def test_a_caller_takes_a_container_released_before_a_new_one_starts(deployment):
    """No stem cell and a slow start: the second caller is handed the first
    caller's container when it is released (long before the new one is up),
    and the new one still joins the deployment, idle."""
    runner = PoolRunner(lambda work_dir: SlowStartDriver(RUNTIMES_DIR, work_dir), lambda runtime: IMAGE, prewarm=0,
                        runtimes=())
    try:
        target = deployment()
        first = runtime_of(runner.invoke(target, timeout=20))  # a cold start: ~2 s

        async def scenario():
            busy = asyncio.ensure_future(sleeping(runner, target, 0.3))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            second = await runner.pool.invoke(target, "", {}, {}, 20)
            return await busy, second, time.monotonic() - started

        busy, second, waited = runner.run(scenario())
        assert runtime_of(busy) == first and runtime_of(second) == first  # handed over, not started
        assert waited < SlowStartDriver.delay  # it did not wait for the new container
        runner.wait_until(lambda: runner.states()["idle"] == 2 and runner.states()["loading"] == 0, timeout=15)
        assert len({r["name"] for r in runner.rows(target)}) == 2
    finally:
        runner.stop()
