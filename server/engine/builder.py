"""Builds a deployment in one throwaway, hardened container of its runtime image.

The container runs the language's build command (`runtimes/<language>/build.sh`;
`runtimes/` is bind-mounted read-only at `RUNTIME_MOUNT`), which unpacks the archive into `CODE_MOUNT` (the build's
output directory on the host) and installs the dependencies there. Nothing
else of the image is relied on, so operator images such as `python:3.12-slim`
work too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import docker
import requests
from docker.types import LogConfig

from server.domain.runtimes import Runtime
from server.engine.errors import BuildInterrupted
from server.engine.lines import LineSplitter
from server.engine.sandbox import (
    CODE_MOUNT,
    INSTANCE_LABEL,
    OWNER_LABEL,
    ROLE_LABEL,
    RUNTIME_LABEL,
    RUNTIME_MOUNT,
    SANDBOX_ENV,
    SOURCE_MOUNT,
    WORK_DIR_LABEL,
    ContainerLimits,
    hardened_kwargs,
    sandbox_ids,
)
from server.limits import OUTPUT_TAIL

OnOutput = Callable[[str, list[str]], None]  # (stream, lines)

log = logging.getLogger(__name__)



@dataclass
class BuildResult:
    ok: bool
    stdout: str  # the last OUTPUT_TAIL characters
    stderr: str  # the last OUTPUT_TAIL characters; ends with the reason of a failure
    duration: float  # seconds


class Builder:
    """`owner`, `work_dir` and `instance` label build containers like the pool's
    runtime containers (ContainerPool.owner, its work_dir and instance), so the
    pool's sweep removes them after a crash. `staging_dir` holds the readable
    copies of source archives (`<staging_dir>/<instance>/build-source-*`); the
    pool's start-up sweep empties it.

    `build` runs on any number of threads at once; `interrupt` (any thread)
    cuts off the builds running at that moment."""

    def __init__(self, client: docker.DockerClient, runtimes_dir: Path, limits: ContainerLimits, timeout: int, network: str = "none",
                 *, owner: str = "", work_dir: Path | None = None, instance: str = "", staging_dir: Path | None = None):
        self.client = client
        self.runtimes_dir = Path(runtimes_dir).resolve()
        self.limits = limits
        self.timeout = timeout
        self.network = network
        self.owner = owner
        self.work_dir = str(Path(work_dir).resolve()) if work_dir else ""
        self.instance = instance
        self.staging_dir = Path(staging_dir).resolve() / (instance or "shared") if staging_dir else None
        self._running: set = set()  # the build containers of builds under way (docker Container models)
        self._running_lock = threading.Lock()

    def interrupt(self) -> None:
        """Force-remove the container of every build running right now (from any
        thread; blocking). Each such build ends as when its container is removed
        from outside: `build` raises BuildInterrupted. A build whose container is
        not created yet runs on."""
        with self._running_lock:
            running = list(self._running)
        for container in running:
            try:
                _remove_quietly(container)
            except (docker.errors.DockerException, requests.RequestException) as exc:
                log.warning("removing a build container failed", extra={"container": container.id, "error": str(exc)})

    def build(self, runtime: Runtime, image: str, source: Path, entrypoint: str, output_dir: Path, env: dict[str, str],
              on_output: OnOutput | None = None) -> BuildResult:
        """Unpack `source` (.tar.gz) into `output_dir` and install its dependencies.

        `output_dir` is replaced; on failure it is removed. Blocking.
        `on_output(stream, lines)` gets the build's output as it is printed
        (from another thread).
        """
        started = time.monotonic()
        output_dir = Path(output_dir).resolve()
        stdout = stderr = ""
        failure = _entrypoint_problem(entrypoint)
        if failure is None:
            try:
                stdout, stderr, failure = self._run(runtime, image, Path(source).resolve(), output_dir, entrypoint, env, on_output)
            except (docker.errors.DockerException, requests.RequestException) as exc:
                log.exception("build container failed", extra={"runtime": runtime.id, "image": image})
                failure = f"build could not run: {_docker_error(exc, image)}"
        failure = failure or _missing_entrypoint(output_dir, entrypoint)
        if failure is not None:
            stderr = _append_line(stderr, failure)
            shutil.rmtree(output_dir, ignore_errors=True)
        result = BuildResult(failure is None, _tail(stdout), _tail(stderr), time.monotonic() - started)
        log.info(
            "build finished" if result.ok else "build failed",
            extra={"runtime": runtime.id, "image": image, "duration": round(result.duration, 3), "reason": failure},
        )
        return result

    def _run(self, runtime: Runtime, image: str, source: Path, output_dir: Path, entrypoint: str, env: dict[str, str],
             on_output: OnOutput | None = None) -> tuple[str, str, str | None]:
        """Runs build.sh; returns stdout, stderr and the reason of a failure (None on success).

        The timeout counts from the container's start.
        """
        scripts = self.runtimes_dir
        if not runtime.build:
            return "", "", f"no build command for language {runtime.language!r} ({scripts}/{runtime.language}/language.toml)"
        _prepare_output(output_dir)
        hardened = hardened_kwargs(self.network, tmp_mb=self.limits.memory_mb)
        environment = {
            **env,
            # Offline builds should fail fast instead of retrying the package index.
            **({"FUNCTIONS_BUILD_OFFLINE": "1"} if self.network == "none" else {}),
            **SANDBOX_ENV,
            "FUNCTIONS_SOURCE": SOURCE_MOUNT,
            "FUNCTIONS_CODE": CODE_MOUNT,
            "FUNCTIONS_ENTRYPOINT": entrypoint,  # relative to FUNCTIONS_CODE (compiled languages need it)
        }
        with _readable_copy(source, self.staging_dir) as readable_source:
            container = self.client.containers.create(
                image,
                command=list(runtime.build),
                working_dir=CODE_MOUNT,
                environment=environment,
                labels={ROLE_LABEL: "build", RUNTIME_LABEL: runtime.id, OWNER_LABEL: self.owner,
                        WORK_DIR_LABEL: self.work_dir, INSTANCE_LABEL: self.instance},
                volumes={
                    str(readable_source): {"bind": SOURCE_MOUNT, "mode": "ro"},
                    str(output_dir): {"bind": CODE_MOUNT, "mode": "rw"},
                    str(scripts): {"bind": RUNTIME_MOUNT, "mode": "ro"},
                },
                # Bounded on disk; only the tail is kept anyway.
                log_config=LogConfig(type=LogConfig.types.JSON, config={"max-size": "1m", "max-file": "2"}),
                **hardened,
                **self.limits.docker_kwargs(),
            )
            with self._running_lock:
                self._running.add(container)
            try:
                return self._start_and_wait(container, on_output)
            except docker.errors.NotFound as exc:  # removed under our feet (interrupt, or the sweep at stop)
                raise BuildInterrupted(f"the build container was removed while the build ran: {exc}") from exc
            finally:
                with self._running_lock:
                    self._running.discard(container)
                _remove_quietly(container)

    def _start_and_wait(self, container, on_output: OnOutput | None = None) -> tuple[str, str, str | None]:
        container.start()
        follower = None
        if on_output is not None:
            follower = threading.Thread(target=self._follow, args=(container.id, on_output), daemon=True,
                                        name=f"build-output-{container.id[:12]}")
            follower.start()
        try:
            return self._wait(container)
        finally:
            if follower is not None:
                follower.join(timeout=10)  # its stream ends with the container

    def _follow(self, container_id: str, on_output: OnOutput) -> None:
        """Hand the build's output on as it comes (a thread per build)."""
        splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        try:
            stream = self.client.api.attach(container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True)
            for out, err in stream:
                for name, data in (("stdout", out), ("stderr", err)):
                    if data:
                        lines = splitters[name].feed(data)
                        if lines:
                            on_output(name, lines)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            log.info("build output stream ended", extra={"container": container_id, "reason": str(exc)})
        except Exception:  # a subscriber's trouble never fails the build
            log.exception("build output stream failed")
        for name, splitter in splitters.items():
            rest = splitter.close()
            if rest:
                on_output(name, rest)

    def _wait(self, container) -> tuple[str, str, str | None]:
        try:
            exit_code = container.wait(timeout=self.timeout)["StatusCode"]
            timed_out = False
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            timed_out = True
            with contextlib.suppress(docker.errors.APIError):  # it may have exited meanwhile
                container.kill()
            container.wait(timeout=30)
        container.reload()
        if container.status in ("removing", "dead"):
            raise BuildInterrupted("the build container was removed while the build ran")
        stdout = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        stderr = container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
        if timed_out:
            return stdout, stderr, f"build timed out after {self.timeout} s"
        if container.attrs["State"].get("OOMKilled"):
            return stdout, stderr, f"build ran out of memory (limit {self.limits.memory_mb} MB) and was killed"
        if exit_code != 0:
            return stdout, stderr, f"build failed with exit code {exit_code}"
        return stdout, stderr, None


def _remove_quietly(container) -> None:
    """Remove the build container; gone, or being removed by the sweep, is fine."""
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409 or "already in progress" not in str(exc):
            raise


def _prepare_output(output_dir: Path) -> None:
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, mode=0o755)
    if os.geteuid() == 0:
        os.chown(output_dir, *sandbox_ids())


@contextlib.contextmanager
def _readable_copy(source: Path, staging_dir: Path | None = None) -> Iterator[Path]:
    """`source`, or a copy the sandbox user can read when it could not read it.

    The copy lives in a fresh 0700 directory under `staging_dir` (the pool's
    start-up sweep empties it after a crash), removed on every other path here.
    Only Docker (root) and the sandbox user ever read it: it is bind-mounted as
    a file, so the 0700 directories above it do not matter to the container.
    """
    st = source.stat()
    uid, gid = sandbox_ids()
    if st.st_mode & stat.S_IROTH or (st.st_uid == uid and st.st_mode & stat.S_IRUSR):
        yield source
        return
    if staging_dir is not None:
        staging_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="build-source-", dir=staging_dir))
    try:
        copy = staging / "source.tar.gz"
        shutil.copyfile(source, copy)
        if os.geteuid() == 0:
            os.chown(copy, uid, gid)
            copy.chmod(0o400)
        else:
            copy.chmod(0o644)
        yield copy
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _entrypoint_problem(entrypoint: str) -> str | None:
    path = PurePosixPath(entrypoint)
    if not entrypoint or path.is_absolute() or ".." in path.parts or path == PurePosixPath("."):
        return f"entrypoint {entrypoint!r} must be a relative path to a file in the code"
    return None


def _missing_entrypoint(output_dir: Path, entrypoint: str) -> str | None:
    target = (output_dir / entrypoint).resolve()
    if not target.is_relative_to(output_dir) or not target.is_file():
        return f"entrypoint {entrypoint!r} was not found in the code"
    return None


def _docker_error(exc: Exception, image: str) -> str:
    if isinstance(exc, docker.errors.ImageNotFound):
        return f"image {image} is not available"
    return str(exc)


def _append_line(text: str, line: str) -> str:
    separator = "\n" if text and not text.endswith("\n") else ""
    return f"{text}{separator}{line}\n"


def _tail(text: str) -> str:
    return text[-OUTPUT_TAIL:]
