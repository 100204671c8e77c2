"""Isolation of executions inside real runtime containers, through the real pool
(reliability-probe.md F1 and F6): no process started by an execution survives
it, and a function that forks or writes on its inherited file descriptors can
never make another caller see its answer.

Killing stray processes needs FUNCTIONS_RUNTIME_PID_NAMESPACE=1 in the
container: the real Docker driver sets it, and these tests rely on that.
"""

from __future__ import annotations

import json
import time

import docker
import pytest

from dockerkit import docker_pool, env  # noqa: F401  (`env` is a fixture)

PY_APP = r'''
import os, subprocess, threading, time

def main(req, res):
    action = req.headers.get("x-action", "")
    if req.payload == "bg" and os.fork() == 0:  # reliability-probe.md F1, verbatim
        return res.json({"from": "child", "payload": req.payload})
    if action == "forkbomb":
        subprocess.Popen(["sh", "-c", "b() { b | b & }; b"])
        time.sleep(0.5)
        return res.send("bombed")
    if action == "amp":
        os.system("sleep 300 &")
        return res.send("started")
    if action == "daemon":
        def later():
            time.sleep(0.3)
            subprocess.Popen(["sleep", "300"])
        threading.Thread(target=later, daemon=True).start()
        return res.send("later")
    if action == "double-fork":
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(300)
            os._exit(0)
        return res.send("daemonized")
    return res.json({"from": "parent", "payload": req.payload})
'''

NODE_APP = r'''
const cp = require('child_process');
module.exports = async (req, res) => {
  const action = req.headers['x-action'] || '';
  if (req.payload === 'bg') {  // the Node analogue of F1: a child writes on the worker's fds after the reply
    cp.spawn('sh', ['-c', 'sleep 0.3; echo junk >&3; echo junk >&4'], { stdio: ['ignore', 'ignore', 'ignore', 3, 4], detached: true }).unref();
    return res.json({ from: 'parent', payload: req.payload });
  }
  if (action === 'forkbomb') {
    cp.spawn('sh', ['-c', 'b() { b | b & }; b'], { stdio: 'ignore', detached: true }).unref();
    await new Promise((r) => setTimeout(r, 500));
    return res.send('bombed');
  }
  if (action === 'amp') { cp.exec('sleep 300 &'); await new Promise((r) => setTimeout(r, 100)); return res.send('started'); }
  if (action === 'daemon') {
    setTimeout(() => cp.spawn('sleep', ['300'], { stdio: 'ignore', detached: true }).unref(), 300);
    return res.send('later');
  }
  res.json({ from: 'parent', payload: req.payload });
};
'''

RUNTIMES = ["python-3.11", "node-18.0"]


@pytest.fixture(scope="module")
def pool(env):  # noqa: F811
    runner = docker_pool(env["images"], env["runtimes"], runtimes=[env["runtimes"][r] for r in RUNTIMES], prewarm=0)
    yield runner
    runner.stop()


def deployment(env, runtime_id):  # noqa: F811
    return env["deployment"](runtime_id, PY_APP if runtime_id.startswith("python") else NODE_APP)


def processes(pool, target) -> list[str]:
    """The container's live processes. Zombies are left out: a killed process
    is dead at once, and tini (PID 1) reaps its entry a moment later."""
    (row,) = pool.rows(target)
    top = docker.from_env().api.top(row["name"], ps_args="-o pid,stat,comm")
    return [p[-1] for p in top["Processes"] if not p[1].startswith("Z")]


def wait_for_three(pool, target, timeout: float = 5.0) -> list[str]:
    """PID 1 (docker-init), the supervisor and the worker, and nothing else (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        found = processes(pool, target)
        if len(found) == 3 or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize("runtime_id", RUNTIMES)
def test_fork_bomb_is_gone_after_the_execution(pool, env, runtime_id):  # noqa: F811
    target = deployment(env, runtime_id)
    assert pool.invoke(target).status_code == 200
    assert len(processes(pool, target)) == 3
    (container,) = pool.rows(target)
    result = pool.invoke(target, "forkbomb", timeout=20)
    assert result.status_code == 200 and result.body == "bombed", result
    if pool.rows(target):
        found = processes(pool, target)  # killed before the answer
        assert len(found) == 3, found
    else:
        # The strays outran the reaper's ~3 s bound (a loaded machine): the
        # runtime declared itself compromised and the container goes instead.
        client = docker.from_env()
        pool.wait_until(lambda: not client.api.containers(all=True, filters={"name": container["name"]}), timeout=30)
    again = pool.invoke(target, payload="after")
    assert json.loads(again.body)["payload"] == "after", again


@pytest.mark.parametrize("runtime_id", RUNTIMES)
@pytest.mark.parametrize("action", ["amp", "daemon", "double-fork"])
def test_background_children_do_not_survive(pool, env, runtime_id, action):  # noqa: F811
    if action == "double-fork" and runtime_id.startswith("node"):
        pytest.skip("no fork() in Node")
    target = deployment(env, runtime_id)
    result = pool.invoke(target, action)
    assert result.status_code == 200, result
    if action == "daemon":  # started after the reply: the idle reap (every second) gets it
        time.sleep(0.6)
        found = wait_for_three(pool, target, timeout=3)
    else:
        found = processes(pool, target)
    assert len(found) == 3, found
    assert "sleep" not in found


@pytest.mark.parametrize("runtime_id", RUNTIMES)
def test_desync_reproduction_every_caller_gets_its_own_answer(pool, env, runtime_id):  # noqa: F811
    target = deployment(env, runtime_id)
    first = pool.invoke(target, payload="bg")
    assert first.status_code == 200 and json.loads(first.body) == {"from": "parent", "payload": "bg"}, first
    for payload in ("u2-data", "u3-data"):
        result = pool.invoke(target, payload=payload)
        assert result.status_code == 200 and json.loads(result.body) == {"from": "parent", "payload": payload}, result
    time.sleep(0.6)  # Node: the junk arrives now; the container ends and is replaced
    for payload in ("u4-data", "u5-data"):
        result = pool.invoke(target, payload=payload)
        assert result.status_code == 200 and json.loads(result.body) == {"from": "parent", "payload": payload}, result
