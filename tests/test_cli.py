"""The official Appwrite CLI of the 0.13 era (appwrite-cli 0.16.0), unmodified:
configure, create a function, deploy a code directory, execute."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from harness import poll

CLI = Path(__file__).parent / "node_modules" / ".bin" / "appwrite"


@pytest.fixture
def cli(service, tmp_path):
    home = tmp_path / "home"
    home.mkdir()

    def run(*args: str) -> str:
        result = subprocess.run([str(CLI), *args], cwd=tmp_path, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "Error" not in result.stdout + result.stderr, result.stdout + result.stderr
        return result.stdout

    run("client", "--endpoint", service.url, "--projectId", "default", "--key", service.bootstrap_key)
    return run


def test_cli_creates_deploys_and_executes(cli, service, tmp_path):
    import requests

    fid = "cli" + uuid.uuid4().hex[:10]
    cli("functions", "create", "--functionId", fid, "--name", "cli function", "--execute", "role:all", "--runtime", "python-3.11")
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_text("def main(req, res):\n    return res.json({'cli': req.payload})\n")
    out = cli("functions", "createDeployment", "--functionId", fid, "--entrypoint", "main.py", "--code", "code", "--activate", "true")
    assert "buildId" in out

    def active():
        return requests.get(f"{service.url}/functions/{fid}", headers=service.headers()).json()["deployment"]

    poll(active, bool, timeout=120, interval=0.2)
    out = cli("functions", "createExecution", "--functionId", fid, "--data", "hello", "--async", "false")
    assert "completed" in out and json.dumps({"cli": "hello"}, separators=(",", ":")) in out
    listed = cli("functions", "listExecutions", "--functionId", fid)
    assert "completed" in listed
