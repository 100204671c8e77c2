"""Local users cannot get around auth (reliability probe F2): as an
unprivileged local user (uid 65534 via setpriv), nothing under the data
directory is readable and no runtime socket accepts a connection."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from restkit import PY_SLEEP, deploy, execute


PROBE = r"""
import glob, json, os, socket, sys
data = sys.argv[1]
results = {}
def attempt(name, fn):
    try:
        fn()
        results[name] = "allowed"
    except PermissionError:
        results[name] = "denied"
    except OSError as e:
        results[name] = f"error {e.errno}"
for name in ("functions.db", "functions.db-wal", "bootstrap-key", "jwt-secret"):
    attempt(name, lambda name=name: open(os.path.join(data, name), "rb").read(1))
attempt("list packages", lambda: os.listdir(os.path.join(data, "packages")))
attempt("list data", lambda: os.listdir(data))
for path in json.loads(sys.argv[2]):
    def connect(path=path):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        try:
            s.connect(path)
            s.sendall(b'{"type":"ping"}\n')
            s.recv(100)
        finally:
            s.close()
    attempt(path, connect)
print(json.dumps(results))
"""


def as_nobody(*args: str) -> dict:
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", PROBE, *args],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_an_unprivileged_local_user_reaches_nothing(fresh_service, unique_id):
    svc = fresh_service()
    fid = deploy(svc, unique_id(), {"main.py": PY_SLEEP})
    assert execute(svc, fid, data="x").json()["status"] == "completed"  # a warm container with a live socket
    data = svc.data_dir.resolve()
    sockets = [str(p) for p in data.glob("c/*/*/sock/runtime.sock")]  # c/<replica>/<container>/
    assert sockets, "no runtime socket found"
    for path in sockets:
        mode = os.stat(path).st_mode
        assert stat.S_IMODE(mode) & 0o077 == 0, oct(mode)
        # root:sandbox 0750 once the runtime listens (sandbox:sandbox 0700 before): never others
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) & 0o007 == 0
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    for name in ("functions.db", "bootstrap-key", "jwt-secret"):
        assert stat.S_IMODE(os.stat(data / name).st_mode) & 0o077 == 0, name
    results = as_nobody(str(data), json.dumps(sockets))
    assert results and all(outcome == "denied" for outcome in results.values()), results
    # The service itself still works with its sockets.
    assert execute(svc, fid, data="y").json()["status"] == "completed"
