"""REST helpers of the end-to-end tests (through Envoy): functions,
uploads, builds, executions and end-user JWTs. Test modules import these,
never each other."""

from __future__ import annotations

import os
import time

import requests

from codepkg import PY_HELLO, targz
from harness import poll

CHUNK = 5 * 1024 * 1024


PY_SLEEP = "import time\ndef main(req, res):\n    if req.payload == 'sleep':\n        time.sleep(30)\n    return res.send('awake')\n"


def new_function(service, fid, runtime="python-3.11", project="default", key=None):
    r = requests.post(f"{service.url}/functions", headers=service.headers(project, key),
                      json={"functionId": fid, "name": fid, "runtime": runtime, "execute": ["role:all"]})
    assert r.status_code == 201, r.text
    return fid


def upload(service, fid, archive: bytes, entrypoint="main.py", activate="true", headers=None, filename="code.tar.gz",
           order=("entrypoint", "activate", "code")):
    """Multipart like the Python SDK (fields before the file, Content-Length) unless `order` says otherwise."""
    fields = {"entrypoint": (None, entrypoint), "activate": (None, activate), "code": (filename, archive)}
    files = [(name, fields[name]) for name in order if fields[name][1] is not None]
    return requests.post(f"{service.url}/functions/{fid}/deployments", headers={**service.headers(), **(headers or {})}, files=files)


def deployment_status(service, fid, did):
    return requests.get(f"{service.url}/functions/{fid}/deployments/{did}", headers=service.headers()).json()


def wait_build(service, fid, did, timeout=120):
    return poll(lambda: deployment_status(service, fid, did), lambda d: d["status"] in ("ready", "failed"), timeout, 0.1)


def big_archive(extra_bytes: int) -> bytes:
    return targz({"main.py": PY_HELLO, "blob.bin": os.urandom(extra_bytes)})


def deploy(service, fid, files, entrypoint="main.py", runtime="python-3.11", vars=None, timeout=None, execute=("role:all",)):
    body = {"functionId": fid, "name": fid, "runtime": runtime, "execute": list(execute), "vars": vars or {}}
    if timeout:
        body["timeout"] = timeout
    r = requests.post(f"{service.url}/functions", headers=service.headers(), json=body)
    assert r.status_code == 201, r.text
    dep = upload(service, fid, targz(files), entrypoint=entrypoint).json()
    final, _ = wait_build(service, fid, dep["$id"])
    assert final["status"] == "ready", final["buildStderr"]
    return fid


def execute(service, fid, data=None, is_async=False, headers=None):
    body = {"async": is_async}
    if data is not None:
        body["data"] = data
    return requests.post(f"{service.url}/functions/{fid}/executions", json=body, headers=headers or service.headers())


def execution_status(service, fid, eid):
    return requests.get(f"{service.url}/functions/{fid}/executions/{eid}", headers=service.headers()).json()


def wait_execution(service, fid, eid, timeout=60):
    return poll(lambda: execution_status(service, fid, eid), lambda e: e["status"] in ("completed", "failed"), timeout)


def wait_processing(service, fid, eid):
    poll(lambda: execution_status(service, fid, eid), lambda e: e["status"] == "processing", 30)


PY_USER_ECHO = {"main.py": "def main(req, res):\n    return res.json({'user': req.env['APPWRITE_FUNCTION_USER_ID']})\n"}


GUEST = {"X-Appwrite-Project": "default"}


def jwt_for(service, user, teams=(), expires_in=600, secret=None, project="default", **claims):
    from server.domain import jwt

    secret = secret or (service.data_dir / "jwt-secret").read_text().strip()
    body = {"projectId": project, "userId": user, "teams": list(teams), "exp": int(time.time()) + expires_in, **claims}
    return jwt.encode(body, secret)


class InProject:
    """The service seen from another project (its own key): what restkit's
    helpers need of a service (`url`, `headers()`, `data_dir`)."""

    def __init__(self, service, project: str, key: str):
        self.service, self.project, self.key = service, project, key
        self.url, self.data_dir, self.grpc_address = service.url, service.data_dir, service.grpc_address

    def headers(self, project: str | None = None, key: str | None = None) -> dict:
        return {"X-Appwrite-Project": project or self.project, "X-Appwrite-Key": key if key is not None else self.key}

    def metadata(self) -> tuple:
        return (("x-appwrite-project", self.project), ("x-appwrite-key", self.key))


def new_project(service, prefix: str = "p") -> InProject:
    """A project of its own, with an all-scopes key: its events reach its functions only."""
    import uuid

    project = f"{prefix}{uuid.uuid4().hex[:12]}"
    service.create_project(project)
    return InProject(service, project, service.create_key(project))
