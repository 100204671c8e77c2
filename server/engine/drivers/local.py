"""The local driver: runtime servers as plain subprocesses of this process,
for development and tests (the pool's scheduling runs in seconds, without
Docker). See server.engine.drivers.base for the contract.

NO isolation at all: a function runs as the service's user, with its files,
its network and no resource limits. Never use it for code you do not trust.

A "container" is one runtime server (`runtimes/python/server.py` or
`runtimes/node/server.js`) in a session of its own, so `remove` kills the
server together with its worker and whatever the function started. It gets
no FUNCTIONS_RUNTIME_PID_NAMESPACE (it shares the host's PID namespace: it
must never kill processes it did not start). Its code dir is a symbolic link
to the build output, its output goes to `output.log` in its host directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from server.domain.runtimes import Runtime
from server.engine.drivers import hostdir
from server.engine.drivers.base import CRASH_WAIT, crash_message, new_instance, owner_of
from server.engine.invoker import RuntimeGone

SERVERS = {"python": "server.py", "node": "server.js"}
OUTPUT_NAME = "output.log"


def default_interpreters() -> dict[str, str]:
    """This Python for the Python runtime, `node` from PATH for Node."""
    return {"python": sys.executable, "node": shutil.which("node") or "node"}


@dataclass
class _Process:
    popen: subprocess.Popen
    output_path: Path
    output: IO[bytes]


class LocalProcessDriver:
    """Runtime servers as subprocesses (development and tests only: no isolation).

    Args:
        runtimes_dir: holds `<language>/server.*`.
        work_dir: the pool's; host directories are made in it.
        interpreters: language -> executable (default: `default_interpreters()`).
    """

    limits = None  # nothing is enforced
    errors = (subprocess.SubprocessError,)

    def __init__(self, runtimes_dir: Path, work_dir: Path, interpreters: dict[str, str] | None = None):
        self._runtimes_dir = Path(runtimes_dir).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.owner = owner_of(self.work_dir)
        self.instance = new_instance()
        self._interpreters = interpreters or default_interpreters()
        self._processes: dict[str, _Process] = {}  # by container ID (its name), until removed
        self._lock = threading.Lock()  # driver threads launch and remove at once

    def setup(self) -> None:
        """Nothing to prepare: no mounts, no engine."""

    def teardown(self) -> None:
        """Nothing to undo."""

    def code_path(self, host_dir: Path) -> str:
        return str(hostdir.code_dir(host_dir))

    def give_code(self, source: Path, host_dir: Path) -> None:
        """A symbolic link to the build output: no per-file work (and not read-only)."""
        hostdir.check_code(source)
        os.symlink(Path(source).resolve(), hostdir.code_dir(host_dir), target_is_directory=True)

    def lock_socket_dir(self, host_dir: Path) -> None:
        """Nothing to take away: the runtime runs as the service's own user anyway."""

    def launch(self, name: str, host_dir: Path, runtime: Runtime, image: str, project: str = "", deployment: str = "") -> str:
        """Start the runtime server with `host_dir` as its working directory; `image` is ignored."""
        server = self._runtimes_dir / runtime.language / SERVERS.get(runtime.language, "")
        if runtime.language not in SERVERS or not server.is_file():
            raise RuntimeGone(f"no runtime server for language {runtime.language!r}")
        hostdir.create(host_dir, with_code_dir=False)  # give_code links code/ in
        output_path = host_dir / OUTPUT_NAME
        output = open(output_path, "wb")
        try:
            popen = subprocess.Popen(
                [self._interpreters[runtime.language], str(server)],
                cwd=host_dir, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                # Only what a runtime needs: the service's own environment (its secrets) stays out.
                env={"PATH": os.environ.get("PATH", os.defpath), "FUNCTIONS_RUNTIME_SOCKET": str(hostdir.socket_path(host_dir))},
                start_new_session=True,  # its own process group: `remove` kills all of it
            )
        except BaseException:
            output.close()
            raise
        with self._lock:
            self._processes[name] = _Process(popen, output_path, output)
        return name

    def remove(self, container_id: str, host_dir: Path | None = None) -> None:
        with self._lock:
            process = self._processes.pop(container_id, None)
        if process is not None:
            try:
                os.killpg(process.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the group is gone already
            process.popen.wait()
            process.output.close()
        if host_dir is not None:
            hostdir.release_dir(host_dir)

    def owned(self, own_builds: bool = True, owner: str | None = None) -> list[str]:
        """The servers this driver started and has not removed (there are no
        builds; the servers of a killed service, or of another owner, are not
        found: they die with nothing to connect them to it)."""
        if owner is not None and owner != self.owner:
            return []
        with self._lock:
            return list(self._processes)

    def _process(self, container_id: str) -> _Process | None:
        with self._lock:
            return self._processes.get(container_id)

    def status(self, container_id: str) -> str:
        process = self._process(container_id)
        if process is None:
            return "gone"
        code = process.popen.poll()
        return "running" if code is None else f"exited (exit code {_exit_code(code)})"

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        """The server's own stdout/stderr."""
        process = self._process(container_id)
        if process is None:
            return ""
        try:
            text = process.output_path.read_bytes()[-64 * 1024:].decode("utf-8", "replace")
        except OSError:
            return ""
        text = "\n".join(text.strip().splitlines()[-lines:])
        return f"; its output:\n{text[-2000:]}" if text else ""

    def diagnose(self, container_id: str, since: float, protocol_error: bool, detail: str) -> tuple[bool, str]:
        """Never out of memory: there is no limit to exceed."""
        process = self._process(container_id)
        if process is None:
            raise RuntimeGone(f"no such runtime process: {container_id}")
        code = process.popen.poll()
        if not protocol_error and code is None:
            try:
                code = process.popen.wait(CRASH_WAIT)
            except subprocess.TimeoutExpired:
                pass  # still running: report what is known
        return False, crash_message(protocol_error=protocol_error, detail=detail, running=code is None,
                                    exit_code=None if code is None else _exit_code(code), output=self.logs_tail(container_id))


def _exit_code(returncode: int) -> int:
    """As a shell (and Docker) reports it: 128 + N for a death by signal N."""
    return returncode if returncode >= 0 else 128 - returncode
