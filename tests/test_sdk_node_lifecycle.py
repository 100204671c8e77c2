"""node-appwrite 5.1.0 (form-data, chunked transfer, its chunk protocol) runs
deployments and executions unmodified."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from codepkg import targz

SCRIPT = Path(__file__).parent / "sdk" / "node_lifecycle.js"
CODE = "def main(req, res):\n    return res.json({'got': req.payload})\n"


def test_node_sdk_deploys_and_executes(service, tmp_path):
    small, big = tmp_path / "code.tar.gz", tmp_path / "big.tar.gz"
    small.write_bytes(targz({"main.py": CODE}))
    big.write_bytes(targz({"main.py": CODE, "blob.bin": os.urandom(6 * 1024 * 1024)}))
    fid = "node" + uuid.uuid4().hex[:10]
    run = subprocess.run(["node", str(SCRIPT), service.url, "default", service.bootstrap_key, fid, str(small), str(big)],
                         capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["small"]["status"] == "ready" and out["activeAfterSmall"] == out["small"]["$id"]
    assert out["bigUpload"]["chunksTotal"] == 2 and out["bigUpload"]["chunksUploaded"] == 2
    assert out["big"]["status"] == "ready" and out["big"]["size"] == big.stat().st_size
    assert [p["chunksUploaded"] for p in out["progress"]] == [1, 2]
    assert out["activated"]["deployment"] == out["big"]["$id"]
    assert out["sync"]["status"] == "completed" and json.loads(out["sync"]["stdout"]) == {"got": "from node"}
    assert out["queued"]["status"] == "waiting"
    assert out["async"]["status"] == "completed" and json.loads(out["async"]["stdout"]) == {"got": "later"}
    assert out["list"]["total"] == 2
    assert out["deleted"] == ""
