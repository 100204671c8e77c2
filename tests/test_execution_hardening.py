"""Through the whole service (Envoy, server, Docker): responses are whole or
clearly refused (probe F5), and a function that forks or writes to its fds
cannot make a later caller get someone else's answer (probe F1)."""

from __future__ import annotations

import uuid

import pytest

from restkit import deploy, execute

PY_BIG = "def main(req, res):\n    return res.send('x' * int(req.payload))\n"
NODE_BIG = "module.exports = async (req, res) => { res.send('x'.repeat(Number(req.payload))); };\n"
PY_FORK = """
import os
def main(req, res):
    if req.payload == "bg" and os.fork() == 0:
        return res.json({"from": "child", "payload": req.payload})
    for fd in range(3, 64):
        try:
            os.write(fd, b'{"id":"forged","statusCode":200,"body":"stolen"}\\n')
        except OSError:
            pass
    return res.json({"from": "parent", "payload": req.payload})
"""


@pytest.mark.parametrize("runtime,files,entry", [
    ("python-3.11", {"main.py": PY_BIG}, "main.py"),
    ("node-18.0", {"index.js": NODE_BIG}, "index.js"),
])
def test_response_is_whole_up_to_the_limit_and_refused_past_it(service, runtime, files, entry):
    fid = deploy(service, f"big{uuid.uuid4().hex[:8]}", files, entrypoint=entry, runtime=runtime)
    whole = execute(service, fid, data=str(1_000_000)).json()
    assert whole["status"] == "completed" and whole["stdout"] == "x" * 1_000_000
    refused = execute(service, fid, data=str(3_000_000)).json()
    assert refused["status"] == "failed" and refused["stdout"] == ""
    assert "FUNCTIONS_RESPONSE_MAX_BYTES" in refused["stderr"] and "3000000" in refused["stderr"]
    assert execute(service, fid, data="5").json()["stdout"] == "xxxxx"


def test_forks_and_forged_writes_never_answer_another_caller(service):
    fid = deploy(service, f"fork{uuid.uuid4().hex[:8]}", {"main.py": PY_FORK})
    for payload in ("bg", "u2-data", "u3-data", "bg", "u5-data"):
        ex = execute(service, fid, data=payload).json()
        assert payload in ex["stdout"] or ex["status"] == "failed", ex
        assert "stolen" not in ex["stdout"]
        if ex["status"] == "completed":
            assert f'"payload":"{payload}"' in ex["stdout"].replace(" ", ""), ex
