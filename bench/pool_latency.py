"""Benchmark: the warm container pool (server/engine/pool.py) on real Docker.

Prints, per runtime:
  - warm invoke through the pool (sequential) vs. the runtime server's own
    round trip on a second, direct connection to the same container: the
    difference is what the pool adds;
  - the first invoke of a new deployment served by a stem cell (hard-link +
    load + execute), and the same without stem cells (cold: docker run first);
  - `docker run --rm` of the same image (CLI and SDK, hardened) for comparison.
  - throughput with 8 concurrent callers on one deployment.

    .venv/bin/python bench/pool_latency.py [--warm 1000] [--deployments 20] [--cold 10]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.domain.runtimes import load_catalog  # noqa: E402
from server.engine import ContainerLimits, RuntimeImages  # noqa: E402
from server.engine.drivers import DockerDriver  # noqa: E402
from server.engine.drivers.hostdir import socket_path  # noqa: E402
from server.engine.invoker import RuntimeConnection  # noqa: E402
from server.engine.pool import ContainerPool, DeploymentTarget, PoolOptions  # noqa: E402
from server.engine.sandbox import hardened_kwargs  # noqa: E402
from server.settings import Settings  # noqa: E402

CODE = {
    "python": ("main.py", "def main(req, res):\n    return res.json({'ok': True, 'payload': req.payload})\n"),
    "node": ("index.js", "module.exports = async (req, res) => res.json({ ok: true, payload: req.payload });\n"),
}
LIMITS = ContainerLimits(memory_mb=256, cpus=1.0, pids=128)


def ms(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"median {statistics.median(values) * 1000:7.3f} ms  p99 {p99 * 1000:7.3f} ms  (n={len(values)})"


class Deployments:
    def __init__(self, images: RuntimeImages):
        self.images = images
        self.root = Path(tempfile.mkdtemp(prefix="bench-code-"))
        self.count = 0

    def new(self, runtime) -> DeploymentTarget:
        entry, source = CODE[runtime.language]
        self.count += 1
        code = self.root / f"d{self.count}"
        code.mkdir()
        (code / entry).write_text(source)
        return DeploymentTarget("bench", code.name, runtime, self.images.ensure(runtime), code, entry)


def make_pool(images, **options) -> ContainerPool:
    driver = DockerDriver(docker.from_env(), REPO / "runtimes", Path(tempfile.mkdtemp(prefix="pool-")),
                          limits=LIMITS, tmp_mb=64, network="none")
    if "runtimes" in options:
        options["runtimes"] = tuple(options["runtimes"])
    return ContainerPool(driver, images.ensure, dataclasses.replace(PoolOptions.from_settings(Settings()), **options))


async def stop(pool: ContainerPool) -> None:
    await pool.stop()
    shutil.rmtree(pool.driver.work_dir, ignore_errors=True)


async def warm_and_first(runtime, images, deployments, args) -> None:
    pool = make_pool(images, runtimes=[runtime], prewarm=1)
    await pool.start()
    try:
        target = deployments.new(runtime)
        await pool.invoke(target, "x", {}, {}, 10)
        for _ in range(50):  # warm-up
            await pool.invoke(target, "x", {}, {}, 10)
        (container,) = [c for c in pool.containers() if c["deployment"] == target.key]
        direct = await RuntimeConnection.open(str(socket_path(pool.driver.work_dir / container["name"])))
        through_pool, raw = [], []
        for _ in range(args.warm):  # interleaved, so both see the same machine noise
            started = time.perf_counter()
            result = await pool.invoke(target, "x", {"K": "v"}, {"h": "1"}, 10)
            through_pool.append(time.perf_counter() - started)
            assert result.status_code == 200, result
            started = time.perf_counter()
            await direct.execute("x", {"K": "v"}, {"h": "1"}, 10)
            raw.append(time.perf_counter() - started)
        direct.close()
        print(f"  warm invoke via pool      {ms(through_pool)}")
        print(f"  runtime round trip (raw)  {ms(raw)}")
        print(f"  pool overhead (medians)   {(statistics.median(through_pool) - statistics.median(raw)) * 1e6:7.1f} µs")

        firsts = []
        for _ in range(args.deployments):
            for _ in range(400):  # a fresh stem cell (bounded wait: 400 × 25 ms)
                if pool.stats()["prewarmed"].get(runtime.id):
                    break
                await asyncio.sleep(0.025)
            target = deployments.new(runtime)
            started = time.perf_counter()
            result = await pool.invoke(target, "x", {}, {}, 10)
            firsts.append(time.perf_counter() - started)
            assert result.status_code == 200, result
            await pool.forget(target.project, target.deployment_id)
        print(f"  first invoke, stem cell   {ms(firsts)}")

        calls = args.warm * 2
        target = deployments.new(runtime)
        await pool.invoke(target, "x", {}, {}, 10)

        async def caller(n):
            for _ in range(n):
                await pool.invoke(target, "x", {}, {}, 10)

        started = time.perf_counter()
        await asyncio.gather(*(caller(calls // 8) for _ in range(8)))
        elapsed = time.perf_counter() - started
        containers = pool.stats()["deployments"].get("/".join(target.key))
        print(f"  8 concurrent callers      {calls / elapsed:7.0f} invocations/s on {containers} containers")
    finally:
        await stop(pool)


async def cold_first(runtime, images, deployments, args) -> None:
    pool = make_pool(images, runtimes=[], prewarm=0)
    await pool.start()
    try:
        colds = []
        for _ in range(args.cold):
            target = deployments.new(runtime)
            started = time.perf_counter()
            result = await pool.invoke(target, "x", {}, {}, 10)
            colds.append(time.perf_counter() - started)
            assert result.status_code == 200, result
            await pool.forget(target.project, target.deployment_id)
        print(f"  first invoke, cold start  {ms(colds)}")
    finally:
        await stop(pool)


def docker_run(runtime, image: str, args) -> None:
    command = ["python3", "-c", "pass"] if runtime.language == "python" else ["node", "-e", "0"]
    cli = []
    for _ in range(args.cold):
        started = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", "--network", "none", image, *command], check=True, capture_output=True)
        cli.append(time.perf_counter() - started)
    client = docker.from_env()
    sdk = []
    for _ in range(args.cold):
        started = time.perf_counter()
        client.containers.run(image, command, remove=True, **hardened_kwargs("none", 16), **LIMITS.docker_kwargs())
        sdk.append(time.perf_counter() - started)
    print(f"  docker run --rm (CLI)     {ms(cli)}")
    print(f"  docker run --rm (SDK, hardened) {ms(sdk)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm", type=int, default=1000)
    parser.add_argument("--deployments", type=int, default=20)
    parser.add_argument("--cold", type=int, default=10)
    parser.add_argument("--runtime", action="append", help="runtime IDs (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    images = RuntimeImages(docker.from_env(), REPO / "runtimes")
    deployments = Deployments(images)
    try:
        for runtime in load_catalog(Settings().runtime_catalog):
            if args.runtime and runtime.id not in args.runtime:
                continue
            print(f"{runtime.id} ({runtime.image})")
            asyncio.run(warm_and_first(runtime, images, deployments, args))
            asyncio.run(cold_first(runtime, images, deployments, args))
            docker_run(runtime, images.ensure(runtime), args)
    finally:
        shutil.rmtree(deployments.root, ignore_errors=True)


if __name__ == "__main__":
    main()
