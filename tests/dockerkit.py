"""Docker pools of the pool and isolation tests (test_engine_pool,
test_runtime_isolation): the Docker driver, a started pool, the `env`
fixture (runtimes, images, deployments) and the functions they run."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from poolkit import Deployments, PoolRunner
from server.domain.runtimes import load_catalog
from server.engine import ContainerLimits, DockerDriver, RuntimeImages
from server.settings import REPO_ROOT, Settings

RUNTIMES_DIR = REPO_ROOT / "runtimes"

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


def docker_driver(work_dir: Path, limits: ContainerLimits = ContainerLimits(memory_mb=128, cpus=1.0, pids=64),
                  tmp_mb: int = 16) -> DockerDriver:
    return DockerDriver(docker.from_env(), RUNTIMES_DIR, work_dir, limits=limits, tmp_mb=tmp_mb, network="none")


def docker_pool(images: RuntimeImages, catalog: dict, limits: ContainerLimits | None = None, tmp_mb: int | None = None,
                **options) -> PoolRunner:
    """A started pool of Docker containers (stem cells of python-3.11 unless `runtimes` says otherwise)."""
    options.setdefault("runtimes", [catalog["python-3.11"]])
    sizes = {k: v for k, v in (("limits", limits), ("tmp_mb", tmp_mb)) if v is not None}
    return PoolRunner(lambda work_dir: docker_driver(work_dir, **sizes), images.ensure, **options)


@pytest.fixture(scope="module")
def env(runtime_images):
    """Runtimes, images and a factory for deployments (code dirs written here)."""
    runtimes = {r.id: r for r in load_catalog(Settings().runtime_catalog)}
    images = RuntimeImages(docker.from_env(), RUNTIMES_DIR)
    deployments = Deployments(runtimes, images.ensure, {"python": PY_APP, "node": NODE_APP})
    yield {"runtimes": runtimes, "images": images, "deployment": deployments}
    deployments.remove()
