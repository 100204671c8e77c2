"""Builds in real, offline build containers (network "none")."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from codepkg import wheel

from server.engine import Builder, ContainerLimits
from server.limits import OUTPUT_TAIL
from server.engine.sandbox import CODE_MOUNT

# Session fixtures shared with the image tests (the images are built once).
from imagekit import RUNTIMES_DIR, built_images, catalog, docker_client, runtime_images  # noqa: F401  (fixtures)


def make_archive(path: Path, files: dict[str, str | bytes], prefix: str = "") -> Path:
    """A deployment .tar.gz; `prefix="./"` gives members as `tar -C dir -czf x .` writes them."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(prefix + name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def builder(docker_client) -> Builder:  # noqa: F811
    return Builder(docker_client, RUNTIMES_DIR, ContainerLimits(), timeout=120)


@pytest.fixture
def build(builder, catalog, built_images, tmp_path):  # noqa: F811
    """build(runtime_id, files, entrypoint) → (BuildResult, output dir)."""
    counter = iter(range(1000))

    def run(runtime_id: str, files: dict, entrypoint: str, *, using: Builder | None = None, env: dict | None = None, prefix: str = ""):
        n = next(counter)
        source = make_archive(tmp_path / f"code-{n}.tar.gz", files, prefix)
        output = tmp_path / f"build-{n}"
        result = (using or builder).build(catalog[runtime_id], built_images[runtime_id], source, entrypoint, output, env or {})
        return result, output

    return run


def node_package(**fields) -> str:
    return json.dumps({"name": "fn", "version": "1.0.0", **fields})


def test_python_requirements_install_a_local_wheel_offline(build, docker_client, built_images, tmp_path):  # noqa: F811
    wheel_name, wheel_bytes = wheel("hello_dep", "1.0", "VALUE = 'from the wheel'\n")
    files = {
        "main.py": "import hello_dep\n",
        "requirements.txt": f"./wheels/{wheel_name}\n",
        f"wheels/{wheel_name}": wheel_bytes,
    }
    result, output = build("python-3.11", files, "main.py", prefix="./")
    assert result.ok, result.stderr
    assert (output / "main.py").is_file()
    assert (output / ".deps" / "hello_dep" / "__init__.py").is_file()
    assert "Successfully installed hello-dep-1.0" in result.stdout

    # The output is runnable as is: the runtime puts .deps on sys.path.
    printed = docker_client.containers.run(
        built_images["python-3.11"], ["python3", "-c", "import sys; sys.path.insert(0, '.deps'); import hello_dep; print(hello_dep.VALUE)"],
        working_dir=CODE_MOUNT, volumes={str(output): {"bind": CODE_MOUNT, "mode": "ro"}},
        user="10001:10001", network_mode="none", read_only=True, remove=True,
    )
    assert printed.decode().strip() == "from the wheel"


def test_python_without_requirements_just_unpacks(build):
    result, output = build("python-3.11", {"src/main.py": "print(1)\n"}, "src/main.py")
    assert result.ok, result.stderr
    assert (output / "src" / "main.py").read_text() == "print(1)\n"
    assert not (output / ".deps").exists()


def test_unknown_requirement_fails_offline_with_pips_error(build):
    files = {"main.py": "", "requirements.txt": "surely-no-such-package-xyz==1.0\n"}
    result, output = build("python-3.11", files, "main.py")
    assert not result.ok
    assert "No matching distribution found for surely-no-such-package-xyz" in result.stderr
    assert result.stderr.rstrip().endswith("build failed with exit code 1")
    assert result.duration < 30, "offline builds must not retry the index for long"
    assert not output.exists()


def test_node_package_without_dependencies_builds(build):
    files = {"index.js": "module.exports = () => 1;\n", "package.json": node_package()}
    result, output = build("node-18.0", files, "index.js")
    assert result.ok, result.stderr
    assert (output / "index.js").is_file()


def test_node_local_dependency_lands_in_node_modules(build):
    files = {
        "index.js": "module.exports = require('leftpad');\n",
        "package.json": node_package(dependencies={"leftpad": "file:./vendor/leftpad"}),
        "vendor/leftpad/package.json": json.dumps({"name": "leftpad", "version": "1.0.0", "main": "index.js"}),
        "vendor/leftpad/index.js": "module.exports = (s, n) => s.padStart(n);\n",
    }
    result, output = build("node-18.0", files, "index.js")
    assert result.ok, result.stderr
    assert (output / "node_modules" / "leftpad" / "package.json").is_file()


def test_build_runs_hardened_with_separate_streams_and_the_given_env(build):
    # npm echoes the script itself to stdout, so the stderr marker is assembled by printf.
    script = (
        'echo "uid=$(id -u) greeting=$GREETING OUT-MARK"; printf "ERR-%s\\n" MARK >&2; '
        'touch /etc/probe 2>/dev/null || echo "root fs is read-only"; '
        'grep -E "^(CapEff|NoNewPrivs)" /proc/self/status'
    )
    files = {"index.js": "", "package.json": node_package(scripts={"install": script})}
    result, _ = build("node-18.0", files, "index.js", env={"GREETING": "hello"})
    assert result.ok, result.stderr
    assert "uid=10001 greeting=hello OUT-MARK" in result.stdout
    assert "root fs is read-only" in result.stdout
    assert "CapEff:\t0000000000000000" in result.stdout
    assert "NoNewPrivs:\t1" in result.stdout
    assert "ERR-MARK" in result.stderr and "ERR-MARK" not in result.stdout


def test_build_exceeding_its_timeout_is_killed(build, docker_client):  # noqa: F811
    quick = Builder(docker_client, RUNTIMES_DIR, ContainerLimits(), timeout=3)
    files = {"index.js": "", "package.json": node_package(scripts={"install": "sleep 60"})}
    result, output = build("node-18.0", files, "index.js", using=quick)
    assert not result.ok
    assert "build timed out after 3 s" in result.stderr
    assert result.duration < 15
    assert not output.exists()


def test_build_out_of_memory_is_reported(build, docker_client):  # noqa: F811
    small = Builder(docker_client, RUNTIMES_DIR, ContainerLimits(memory_mb=96), timeout=60)
    hog = "node -e \"const a = []; for (;;) a.push(Buffer.alloc(1 << 24, 1))\""
    files = {"index.js": "", "package.json": node_package(scripts={"install": hog})}
    result, output = build("node-18.0", files, "index.js", using=small)
    assert not result.ok
    assert "ran out of memory (limit 96 MB)" in result.stderr
    assert not output.exists()


def test_missing_entrypoint_fails(build):
    result, output = build("python-3.11", {"main.py": ""}, "app/handler.py")
    assert not result.ok
    assert "entrypoint 'app/handler.py' was not found" in result.stderr
    assert not output.exists()


@pytest.mark.parametrize("entrypoint", ["../main.py", "/main.py", ""])
def test_entrypoint_outside_the_code_is_rejected(build, entrypoint):
    result, _ = build("python-3.11", {"main.py": ""}, entrypoint)
    assert not result.ok
    assert "must be a relative path" in result.stderr


def test_output_keeps_only_the_tail(build):
    script = "yes 0123456789 | head -c 100000; echo END-OF-OUTPUT"
    files = {"index.js": "", "package.json": node_package(scripts={"install": script})}
    result, _ = build("node-18.0", files, "index.js")
    assert result.ok, result.stderr
    assert len(result.stdout) == OUTPUT_TAIL
    assert "END-OF-OUTPUT" in result.stdout


def test_unreadable_source_archive_still_builds(builder, catalog, built_images, tmp_path):  # noqa: F811
    source = make_archive(tmp_path / "private.tar.gz", {"main.py": ""})
    source.chmod(0o600)  # the sandbox user could not read it through the mount
    result = builder.build(catalog["python-3.11"], built_images["python-3.11"], source, "main.py", tmp_path / "out", {})
    assert result.ok, result.stderr


def test_two_builds_in_parallel_both_succeed(build):
    wheel_name, wheel_bytes = wheel("par_dep", "2.0", "X = 2\n")
    python_files = {"main.py": "", "requirements.txt": f"./{wheel_name}\n", wheel_name: wheel_bytes}
    node_files = {"index.js": "", "package.json": node_package()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(build, "python-3.11", python_files, "main.py"),
            pool.submit(build, "python-3.11", python_files, "main.py"),
            pool.submit(build, "node-18.0", node_files, "index.js"),
        ]
        results = [f.result(timeout=180) for f in futures]
    for result, output in results:
        assert result.ok, result.stderr
    assert (results[0][1] / ".deps" / "par_dep").is_dir() and (results[1][1] / ".deps" / "par_dep").is_dir()


def test_build_containers_are_removed(build, docker_client):  # noqa: F811
    build("python-3.11", {"main.py": ""}, "missing.py")
    assert docker_client.containers.list(all=True, filters={"label": "functions.role=build"}) == []


CRASHING_BUILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import docker
from server.domain.runtimes import load_catalog
from server.engine import Builder, ContainerLimits
from server.settings import Settings
work_dir, staging, source, output, owner, image = sys.argv[2:8]
runtime = {r.id: r for r in load_catalog(Settings().runtime_catalog)}["node-18.0"]
builder = Builder(docker.from_env(), Path(sys.argv[1]) / "runtimes", ContainerLimits(), timeout=300,
                  owner=owner, work_dir=Path(work_dir), instance="crashed-run", staging_dir=Path(staging))
builder.build(runtime, image, Path(source), "index.js", Path(output), {})
"""


def test_build_containers_and_staging_of_a_killed_service_are_swept(docker_client, catalog, built_images, tmp_path):  # noqa: F811
    """A service killed with -9 during a build leaves its build container
    running and the staging copy of the source behind: the pool's start-up sweep
    removes both (and leaves the builds of the service now starting alone)."""
    import signal
    import subprocess
    import sys

    from poolkit import pool_options
    from server.engine import ContainerPool, DockerDriver
    from server.engine.sandbox import OWNER_LABEL, ROLE_LABEL

    work_dir, staging = tmp_path / "c", tmp_path / "staging"
    work_dir.mkdir()
    driver = DockerDriver(docker_client, RUNTIMES_DIR, work_dir, limits=ContainerLimits(), tmp_mb=16, network="none")
    pool = ContainerPool(driver, lambda runtime: built_images[runtime.id], pool_options(prewarm=0, staging_dir=staging))
    source = make_archive(tmp_path / "code.tar.gz", {"index.js": "", "package.json": node_package(scripts={"install": "sleep 300"})})
    source.chmod(0o600)  # unreadable by the sandbox user: the builder stages a copy
    repo = str(Path(RUNTIMES_DIR).resolve().parent)
    child = subprocess.Popen([sys.executable, "-c", CRASHING_BUILD, repo, str(work_dir), str(staging), str(source),
                              str(tmp_path / "out"), pool.owner, built_images["node-18.0"]])
    filters = {"label": [f"{ROLE_LABEL}=build", f"{OWNER_LABEL}={pool.owner}"]}
    try:
        deadline = time.monotonic() + 60
        while not docker_client.api.containers(filters={**filters, "status": "running"}):
            assert child.poll() is None and time.monotonic() < deadline, "the build container did not start"
            time.sleep(0.1)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    (leftover,) = docker_client.api.containers(all=True, filters=filters)
    labels = leftover["Labels"]
    assert labels["functions.work-dir"] == str(work_dir.resolve()) and labels["functions.instance"] == "crashed-run"
    assert [p.name for p in (staging / "crashed-run").iterdir()][0].startswith("build-source-")
    # A build of the service now starting (its own instance) is left alone by the start-up sweep.
    (staging / pool.instance).mkdir()
    (staging / pool.instance / "in-use").write_text("x")

    async def start_and_stop():
        await pool.start()
        after_start = docker_client.api.containers(all=True, filters=filters)
        staged = sorted(p.name for p in staging.iterdir())
        await pool.stop()
        return after_start, staged

    after_start, staged = asyncio.run(start_and_stop())
    assert after_start == [] and staged == [pool.instance]
    assert list(staging.iterdir()) == []  # the sweep at stop takes this instance's staging too


def test_interrupt_cuts_off_the_running_builds(catalog, built_images, docker_client, tmp_path):  # noqa: F811
    """The build queue's stop: every build under way ends as if its container
    had been removed from outside (BuildInterrupted), and the container is gone."""
    from server.engine.errors import BuildInterrupted

    owner = f"interrupt-{os.getpid()}"  # this test's build containers only
    builder = Builder(docker_client, RUNTIMES_DIR, ContainerLimits(), timeout=120, owner=owner)
    source = make_archive(tmp_path / "code.tar.gz", {"index.js": "", "package.json": node_package(scripts={"install": "sleep 300"})})
    mine = {"label": ["functions.role=build", f"functions.pool={owner}"]}
    running = {**mine, "status": "running"}

    def build(n: int):
        return builder.build(catalog["node-18.0"], built_images["node-18.0"], source, "index.js", tmp_path / f"out-{n}", {})

    with ThreadPoolExecutor(2) as threads:
        builds = [threads.submit(build, n) for n in range(2)]
        deadline = time.monotonic() + 60
        while len(docker_client.containers.list(filters=running)) < 2:
            assert time.monotonic() < deadline and not any(b.done() for b in builds), "the builds did not start"
            time.sleep(0.1)
        builder.interrupt()
        for b in builds:
            with pytest.raises(BuildInterrupted):
                b.result(timeout=60)
    assert docker_client.containers.list(all=True, filters=mine) == []
    assert builder.build(catalog["node-18.0"], built_images["node-18.0"],
                         make_archive(tmp_path / "ok.tar.gz", {"index.js": ""}), "index.js", tmp_path / "ok", {}).ok
