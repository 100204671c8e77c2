"""Benchmark: first execution of a deployment with many small files (F6).

One deployment of `--files` small files (default 100,000) in 100 directories;
for each way of giving a stem cell its code, `--runs` new deployments of that
code (each takes a fresh stem cell: nothing is cached), timed from `invoke` to
its result:

  - mount: the build output bind-mounted read-only onto the container's code
    dir (rslave propagation into the running stem cell; needs root);
  - link_tree: the files hard-linked one by one (the fallback, and the old way).

Both in the same run, on the same machine state. Prints the figures.

    .venv/bin/python bench/cold_start_files.py [--files 100000] [--runs 3] [--runtime python-3.11]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shutil
import statistics
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
from server.engine.pool import ContainerPool, DeploymentTarget, PoolOptions  # noqa: E402
from server.settings import Settings  # noqa: E402

CODE = {
    "python": ("main.py", "import os\ndef main(req, res):\n    return res.json({'entries': len(os.listdir('.'))})\n"),
    "node": ("index.js", "const fs = require('fs');\nmodule.exports = async (req, res) => res.json({ entries: fs.readdirSync('.').length });\n"),
}
STEM_WAIT = 400  # × 25 ms for a fresh stem cell


def make_code(root: Path, language: str, files: int) -> Path:
    code = root / "code"
    code.mkdir(mode=0o755)
    entry, source = CODE[language]
    (code / entry).write_text(source)
    per_dir = max(files // 100, 1)
    for i in range(files):
        sub = code / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            sub.mkdir()
        (sub / f"f{i:06d}.txt").write_bytes(b"x" * 16)
    return code


async def first_executions(images, runtime, code: Path, runs: int, mounts: bool) -> tuple[list[float], bool]:
    work_dir = Path(tempfile.mkdtemp(prefix="cold-"))
    driver = DockerDriver(docker.from_env(), REPO / "runtimes", work_dir,
                          limits=ContainerLimits(memory_mb=256, cpus=1.0, pids=128), tmp_mb=64, network="none")
    options = dataclasses.replace(PoolOptions.from_settings(Settings()), runtimes=(runtime,), prewarm=1, start_timeout=120)
    pool = ContainerPool(driver, images.ensure, options)
    if not mounts:
        driver.setup = lambda: None  # no read-only mounts: the link_tree fallback
    await pool.start()
    timings = []
    try:
        entry = CODE[runtime.language][0]
        for n in range(runs):
            for _ in range(STEM_WAIT):
                if pool.stats()["prewarmed"].get(runtime.id):
                    break
                await asyncio.sleep(0.025)
            target = DeploymentTarget("bench", f"many-{n}", runtime, images.ensure(runtime), code, entry)
            started = time.perf_counter()
            result = await pool.invoke(target, "", {}, {}, 120)
            timings.append(time.perf_counter() - started)
            assert result.status_code == 200, result
            await pool.forget(target.project, target.deployment_id)
        return timings, driver.mounting
    finally:
        await pool.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


def fmt(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:9.1f} ms  min {min(values) * 1000:9.1f}  max {max(values) * 1000:9.1f}  (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--runtime", default="python-3.11")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runtime = {r.id: r for r in load_catalog(Settings().runtime_catalog)}[args.runtime]
    images = RuntimeImages(docker.from_env(), REPO / "runtimes")
    root = Path(tempfile.mkdtemp(prefix="cold-code-"))
    try:
        started = time.perf_counter()
        code = make_code(root, runtime.language, args.files)
        print(f"{runtime.id}: deployment of {args.files} files written in {time.perf_counter() - started:.1f} s")
        for label, mounts in (("mount", True), ("link_tree", False)):
            timings, mounted = asyncio.run(first_executions(images, runtime, code, args.runs, mounts))
            note = "" if mounted == mounts else "  (mounting unavailable here: link_tree was used)"
            print(f"  first execution, {label:<9} {fmt(timings)}{note}")
        assert sum(1 for _ in code.rglob("*")) == args.files + 100 + 1 or args.files < 100, "the build output changed"
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.umask(0o022)
    main()
