"""The official Python SDK of the Appwrite 0.13 era (appwrite==0.8.0) runs the
whole lifecycle unmodified: create, upload (small and chunked), build,
activate, execute sync and async, list, retry, delete."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from appwrite.client import Client
from appwrite.exception import AppwriteException
from appwrite.services.functions import Functions

from codepkg import targz

CODE = "import json\ndef main(req, res):\n    return res.json({'got': req.payload, 'fn': req.env['APPWRITE_FUNCTION_ID']})\n"


@pytest.fixture
def functions(service):
    client = Client().set_endpoint(service.url).set_project("default").set_key(service.bootstrap_key)
    return Functions(client)


def wait_ready(functions, fid, did, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dep = functions.get_deployment(fid, did)
        if dep["status"] in ("ready", "failed"):
            return dep
        time.sleep(0.2)
    raise AssertionError("build did not finish")


def test_full_lifecycle(functions, tmp_path):
    fid = "sdk" + uuid.uuid4().hex[:10]
    created = functions.create(fid, "SDK lifecycle", ["role:all"], "python-3.11", vars={"K": "V"}, timeout=10)
    assert created["$id"] == fid

    small = tmp_path / "code.tar.gz"
    small.write_bytes(targz({"main.py": CODE}))
    dep = functions.create_deployment(fid, "main.py", str(small), True)
    assert dep["resourceId"] == fid and dep["activate"] is True
    dep = wait_ready(functions, fid, dep["$id"])
    assert dep["status"] == "ready", dep["buildStderr"]
    assert functions.get(fid)["deployment"] == dep["$id"]

    # A chunked upload (> 5 MiB), activated by hand afterwards.
    big = tmp_path / "big.tar.gz"
    big.write_bytes(targz({"main.py": CODE, "blob.bin": os.urandom(7 * 1024 * 1024)}))
    chunks = []
    big_dep = functions.create_deployment(fid, "main.py", str(big), False, on_progress=chunks.append)
    assert [c["chunksUploaded"] for c in chunks] == [1, 2] and chunks[-1]["chunksTotal"] == 2
    big_dep = wait_ready(functions, fid, big_dep["$id"])
    assert big_dep["status"] == "ready" and big_dep["size"] == big.stat().st_size
    assert functions.update_deployment(fid, big_dep["$id"])["deployment"] == big_dep["$id"]

    listed = functions.list_deployments(fid)
    assert listed["total"] == 2 and {d["status"] for d in listed["deployments"]} == {"ready"}

    sync = functions.create_execution(fid, data='{"x":1}', xasync=False)
    assert sync["status"] == "completed" and json.loads(sync["stdout"]) == {"got": '{"x":1}', "fn": fid}

    queued = functions.create_execution(fid, data="later")
    assert queued["status"] == "waiting"
    deadline = time.monotonic() + 60
    while (ex := functions.get_execution(fid, queued["$id"]))["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert ex["status"] == "completed" and json.loads(ex["stdout"])["got"] == "later"

    executions = functions.list_executions(fid, limit=10)
    assert executions["total"] == 2 and executions["executions"][0]["$id"] == queued["$id"]

    with pytest.raises(AppwriteException) as caught:
        functions.retry_build(fid, big_dep["$id"], big_dep["buildId"])
    assert caught.value.code == 400 and caught.value.type == "build_in_progress"

    assert functions.delete_deployment(fid, dep["$id"]) == b""
    assert functions.delete(fid) == b""
    with pytest.raises(AppwriteException) as caught:
        functions.get(fid)
    assert caught.value.code == 404
