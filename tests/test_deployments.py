"""Deployments over REST through Envoy, with real builds in Docker."""

from __future__ import annotations

import hashlib
import os
import tarfile
import time

import pytest
import requests

from codepkg import NODE_HELLO, PY_HELLO, targz, targz_members, wheel
from harness import error_of, poll
from restkit import CHUNK, big_archive, deployment_status, new_function, upload, wait_build


def leftovers(service, project="default"):
    found = []
    for sub in ("uploads", "packages"):
        root = service.data_dir / sub / project
        if root.exists():
            found += [p.name for p in root.iterdir()]
    return found


def test_python_function_builds_and_activates(service, unique_id):
    fid = new_function(service, unique_id())
    r = upload(service, fid, targz({"main.py": PY_HELLO}), activate="True")
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["resourceId"] == fid and dep["resourceType"] == "functions" and dep["entrypoint"] == "main.py"
    assert dep["activate"] is True and dep["size"] > 0 and dep["buildId"]
    assert dep["status"] in ("processing", "building")
    assert (dep["chunksTotal"], dep["chunksUploaded"]) == (1, 1)
    final, seen = wait_build(service, fid, dep["$id"])
    assert final["status"] == "ready", final["buildStderr"]
    assert seen[-1] == "ready"
    fn = requests.get(f"{service.url}/functions/{fid}", headers=service.headers()).json()
    assert fn["deployment"] == dep["$id"]
    listed = requests.get(f"{service.url}/functions/{fid}/deployments", headers=service.headers()).json()
    assert listed["total"] == 1 and listed["deployments"][0]["status"] == "ready"


def test_node_function_builds_with_chunked_transfer(service, unique_id):
    """node-appwrite / CLI order (entrypoint, code, activate), Transfer-Encoding: chunked."""
    fid = new_function(service, unique_id(), runtime="node-18.0")
    archive = targz({"index.js": NODE_HELLO, "package.json": '{"name": "f", "version": "1.0.0"}'}, prefix="./")
    boundary = "--------------------------" + "a1b2c3d4e5f6a7b8c9d0e1f2"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="entrypoint"\r\n\r\nindex.js\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="code"; filename="code.tar.gz"\r\nContent-Type: application/gzip\r\n\r\n'.encode()
        + archive + b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="activate"\r\n\r\ntrue\r\n--{boundary}--\r\n'.encode(),
    ]
    r = requests.post(f"{service.url}/functions/{fid}/deployments", data=iter(parts),
                      headers={**service.headers(), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 201, r.text
    final, _ = wait_build(service, fid, r.json()["$id"])
    assert final["status"] == "ready", final["buildStderr"]
    assert requests.get(f"{service.url}/functions/{fid}", headers=service.headers()).json()["deployment"] == final["$id"]


def test_python_requirements_install_offline_from_a_local_wheel(service, unique_id):
    fid = new_function(service, unique_id())
    name, data = wheel("greet", "1.0", "def hello():\n    return 'hi'\n")
    archive = targz({"main.py": "import greet\n" + PY_HELLO, "requirements.txt": f"./wheels/{name}\n", f"wheels/{name}": data})
    r = upload(service, fid, archive, activate="false")
    final, _ = wait_build(service, fid, r.json()["$id"])
    assert final["status"] == "ready", final["buildStderr"]
    assert "greet" in final["buildStdout"]
    assert requests.get(f"{service.url}/functions/{fid}", headers=service.headers()).json()["deployment"] == ""


def test_bad_requirements_fail_with_pip_error_and_retry_fails_again(service, unique_id):
    fid = new_function(service, unique_id())
    r = upload(service, fid, targz({"main.py": PY_HELLO, "requirements.txt": "surely-not-a-package-xyz==9.9.9\n"}))
    dep = r.json()
    final, _ = wait_build(service, fid, dep["$id"])
    assert final["status"] == "failed"
    assert "surely-not-a-package-xyz" in final["buildStderr"]
    assert requests.get(f"{service.url}/functions/{fid}", headers=service.headers()).json()["deployment"] == ""
    # Activating a failed build is refused.
    r = requests.patch(f"{service.url}/functions/{fid}/deployments/{dep['$id']}", headers=service.headers(), json={})
    assert r.status_code == 400 and error_of(r)["type"] == "build_not_ready"
    # Retry: 204, runs again, fails again cleanly.
    r = requests.post(f"{service.url}/functions/{fid}/deployments/{dep['$id']}/builds/{dep['buildId']}", headers=service.headers(), json={})
    assert r.status_code == 204 and r.content == b""
    again, seen = wait_build(service, fid, dep["$id"])
    assert again["status"] == "failed" and "surely-not-a-package-xyz" in again["buildStderr"]
    r = requests.post(f"{service.url}/functions/{fid}/deployments/{dep['$id']}/builds/wrong-build", headers=service.headers(), json={})
    assert r.status_code == 404 and error_of(r)["type"] == "build_not_found"


def test_retry_of_a_ready_build_is_400(service, unique_id):
    fid = new_function(service, unique_id())
    dep = upload(service, fid, targz({"main.py": PY_HELLO})).json()
    wait_build(service, fid, dep["$id"])
    r = requests.post(f"{service.url}/functions/{fid}/deployments/{dep['$id']}/builds/{dep['buildId']}", headers=service.headers(), json={})
    assert r.status_code == 400 and error_of(r)["type"] == "build_in_progress"


def test_activate_and_delete(service, unique_id):
    fid = new_function(service, unique_id())
    first = upload(service, fid, targz({"main.py": PY_HELLO}), activate="false").json()
    second = upload(service, fid, targz({"main.py": PY_HELLO}), activate="0").json()
    wait_build(service, fid, first["$id"]), wait_build(service, fid, second["$id"])
    r = requests.patch(f"{service.url}/functions/{fid}/deployments/{second['$id']}", headers=service.headers(), json={})
    assert r.status_code == 200 and r.json()["$id"] == fid and r.json()["deployment"] == second["$id"]
    r = requests.patch(f"{service.url}/functions/{fid}/deployments/nope", headers=service.headers(), json={})
    assert r.status_code == 404 and error_of(r)["type"] == "deployment_not_found"
    build_dir = service.data_dir / "builds" / "default" / second["buildId"]
    package = service.data_dir / "packages" / "default" / f"{second['$id']}.tar.gz"
    assert build_dir.is_dir() and package.is_file()
    r = requests.delete(f"{service.url}/functions/{fid}/deployments/{second['$id']}", headers=service.headers())
    assert r.status_code == 204 and r.content == b""
    assert requests.get(f"{service.url}/functions/{fid}", headers=service.headers()).json()["deployment"] == ""
    assert not build_dir.exists() and not package.exists()
    assert requests.get(f"{service.url}/functions/{fid}/deployments/{second['$id']}", headers=service.headers()).status_code == 404
    # Deleting the function removes the remaining deployment's files.
    first_package = service.data_dir / "packages" / "default" / f"{first['$id']}.tar.gz"
    assert first_package.is_file()
    assert requests.delete(f"{service.url}/functions/{fid}", headers=service.headers()).status_code == 204
    assert not first_package.exists()


def test_deployment_of_another_function_is_404(service, unique_id):
    a, b = new_function(service, unique_id()), new_function(service, unique_id())
    dep = upload(service, a, targz({"main.py": PY_HELLO})).json()
    r = requests.get(f"{service.url}/functions/{b}/deployments/{dep['$id']}", headers=service.headers())
    assert r.status_code == 404 and error_of(r)["type"] == "deployment_not_found"


def test_two_builds_in_parallel(service, unique_id):
    fids = [new_function(service, unique_id()) for _ in range(2)]
    deps = [upload(service, fid, targz({"main.py": PY_HELLO})).json() for fid in fids]
    results = [wait_build(service, fid, dep["$id"])[0] for fid, dep in zip(fids, deps)]
    assert [r["status"] for r in results] == ["ready", "ready"]


@pytest.mark.parametrize("value, expected", [("true", True), ("True", True), ("TRUE", True), ("1", True),
                                             ("false", False), ("False", False), ("0", False)])
def test_activate_accepts_loose_booleans(service, unique_id, value, expected):
    fid = new_function(service, unique_id())
    r = upload(service, fid, targz({"main.py": PY_HELLO}), activate=value)
    assert r.status_code == 201 and r.json()["activate"] is expected


class TestRejections:
    """Bad input: a clear 4xx in the API's error format, nothing left behind."""

    @pytest.fixture
    def fid(self, service, unique_id):
        return new_function(service, unique_id())

    def assert_rejected(self, service, fid, response, status=400, type_=None):
        assert response.status_code == status, response.text
        err = error_of(response)
        if type_:
            assert err["type"] == type_, err
        listed = requests.get(f"{service.url}/functions/{fid}/deployments", headers=service.headers()).json()
        assert listed == {"total": 0, "deployments": []}
        assert leftovers(service) == [] or all(not p.endswith((".upload", ".part")) for p in leftovers(service))
        return err

    def test_not_gzip(self, service, fid):
        self.assert_rejected(service, fid, upload(service, fid, b"PK\x03\x04 not a gzip"), type_="storage_file_type_unsupported")

    def test_gzip_but_not_tar(self, service, fid):
        import gzip
        err = self.assert_rejected(service, fid, upload(service, fid, gzip.compress(b"hello " * 100)), type_="storage_invalid_file")
        assert "tar" in err["message"]

    def test_entrypoint_not_in_archive(self, service, fid):
        err = self.assert_rejected(service, fid, upload(service, fid, targz({"other.py": PY_HELLO})))
        assert "main.py" in err["message"]

    @pytest.mark.parametrize("name", ["/etc/evil.py", "../evil.py", "a/../../evil.py"])
    def test_paths_leaving_the_code_dir(self, service, fid, name):
        archive = targz({"main.py": PY_HELLO, name: "x"})
        self.assert_rejected(service, fid, upload(service, fid, archive), type_="storage_invalid_file")

    def test_links_pointing_outside(self, service, fid):
        for kind, target in ((tarfile.SYMTYPE, "../../etc/passwd"), (tarfile.SYMTYPE, "/etc/passwd"), (tarfile.LNKTYPE, "../x")):
            link = tarfile.TarInfo("link")
            link.type, link.linkname = kind, target
            main = tarfile.TarInfo("main.py")
            main.size = len(PY_HELLO)
            archive = targz_members([main, link], {"main.py": PY_HELLO.encode()})
            self.assert_rejected(service, fid, upload(service, fid, archive), type_="storage_invalid_file")

    def test_device_files(self, service, fid):
        main = tarfile.TarInfo("main.py")
        main.size = len(PY_HELLO)
        dev = tarfile.TarInfo("dev")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
        archive = targz_members([main, dev], {"main.py": PY_HELLO.encode()})
        self.assert_rejected(service, fid, upload(service, fid, archive), type_="storage_invalid_file")

    def test_missing_file_and_fields(self, service, fid):
        r = requests.post(f"{service.url}/functions/{fid}/deployments", headers=service.headers(),
                          files=[("entrypoint", (None, "main.py")), ("activate", (None, "true"))])
        self.assert_rejected(service, fid, r, type_="storage_file_empty")
        r = upload(service, fid, targz({"main.py": PY_HELLO}), entrypoint=None)
        assert 'Param "entrypoint" is not optional.' == self.assert_rejected(service, fid, r)["message"]
        r = upload(service, fid, targz({"main.py": PY_HELLO}), activate="yes please")
        assert "activate" in self.assert_rejected(service, fid, r)["message"]

    def test_unknown_function_is_404_before_any_byte_is_stored(self, service):
        big = os.urandom(8 * 1024 * 1024)
        started = time.monotonic()
        r = upload(service, "no-such-function", big)
        assert r.status_code == 404 and error_of(r)["type"] == "function_not_found"
        assert time.monotonic() - started < 5
        assert leftovers(service) == [] or all(not p.endswith((".upload", ".part")) for p in leftovers(service))

    def test_bad_content_range(self, service, fid):
        for header in ("bytes 10-5/100", "bytes x-y/z", "bytes 0-100/50"):
            r = upload(service, fid, targz({"main.py": PY_HELLO}), headers={"Content-Range": header})
            self.assert_rejected(service, fid, r, type_="storage_invalid_content_range")


def test_size_limit_and_decompression_bomb(fresh_service, unique_id):
    svc = fresh_service(FUNCTIONS_CODE_SIZE_LIMIT="100000", FUNCTIONS_CODE_UNCOMPRESSED_LIMIT="1000000")
    fid = new_function(svc, unique_id())
    # Over the limit while streaming: rejected without reading the rest.
    r = upload(svc, fid, os.urandom(2_000_000))
    assert r.status_code == 400 and error_of(r)["type"] == "storage_invalid_file_size"
    # Declared too large by Content-Range: rejected before any byte.
    r = upload(svc, fid, b"x" * 10, headers={"Content-Range": "bytes 0-9/200000"})
    assert r.status_code == 400 and error_of(r)["type"] == "storage_invalid_file_size"
    # A bomb: 50 KB compressed, 5 MB unpacked.
    bomb = targz({"main.py": PY_HELLO, "zeros.bin": b"\0" * 5_000_000})
    assert len(bomb) < 100_000
    r = upload(svc, fid, bomb)
    assert r.status_code == 400 and "unpacks to more than" in error_of(r)["message"]
    assert requests.get(f"{svc.url}/functions/{fid}/deployments", headers=svc.headers()).json()["total"] == 0
    assert leftovers(svc) == []


def chunked_upload(service, fid, data: bytes, order=None, resend=(), activate="true"):
    """Appwrite's chunk protocol as the Python SDK sends it; returns the responses."""
    size = len(data)
    ranges = [(start, min(start + CHUNK - 1, size)) for start in range(0, size, CHUNK)]
    order = order or list(range(len(ranges)))
    responses, upload_id = [], None
    for index in list(order) + list(resend):
        start, end = ranges[index]
        headers = {"Content-Range": f"bytes {start}-{end}/{size}"}
        if upload_id:
            headers["X-Appwrite-ID"] = upload_id
        r = upload(service, fid, data[start:end + 1], headers=headers, activate=activate)
        assert r.status_code == 201, r.text
        upload_id = r.json()["$id"]
        responses.append(r.json())
    return responses


def test_chunked_upload_like_the_python_sdk(service, unique_id):
    fid = new_function(service, unique_id())
    data = big_archive(11 * 1024 * 1024)
    responses = chunked_upload(service, fid, data)
    assert len(responses) == 3 and len({r["$id"] for r in responses}) == 1
    assert [(r["chunksTotal"], r["chunksUploaded"]) for r in responses] == [(3, 1), (3, 2), (3, 3)]
    assert all(r["buildId"] == "" for r in responses[:2]) and responses[2]["buildId"]
    assert all(r["size"] == len(data) for r in responses)
    final, _ = wait_build(service, fid, responses[0]["$id"])
    assert final["status"] == "ready", final["buildStderr"]
    stored = service.data_dir / "packages" / "default" / f"{final['$id']}.tar.gz"
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_out_of_order_and_resent_chunks_do_not_corrupt(service, unique_id):
    fid = new_function(service, unique_id())
    data = big_archive(16 * 1024 * 1024)  # 4 chunks
    responses = chunked_upload(service, fid, data, order=[0, 3, 1, 1], resend=[2])
    assert responses[1]["buildId"] == "" and responses[3]["chunksUploaded"] == 3
    assert responses[-1]["chunksUploaded"] == 4 and responses[-1]["buildId"]
    stored = service.data_dir / "packages" / "default" / f"{responses[0]['$id']}.tar.gz"
    assert stored.read_bytes() == data


def test_partial_upload_has_no_build(service, unique_id):
    fid = new_function(service, unique_id())
    first = chunked_upload(service, fid, big_archive(6 * 1024 * 1024), order=[0])[0]
    assert first["status"] == "processing" and first["buildId"] == ""
    r = requests.patch(f"{service.url}/functions/{fid}/deployments/{first['$id']}", headers=service.headers(), json={})
    assert r.status_code == 404 and error_of(r)["type"] == "build_not_found"


def test_chunked_upload_with_bad_archive_leaves_nothing(service, unique_id):
    fid = new_function(service, unique_id())
    data = targz({"main.py": PY_HELLO, "blob.bin": os.urandom(6 * 1024 * 1024)}, prefix="../")
    size = len(data)
    r = upload(service, fid, data[:CHUNK], headers={"Content-Range": f"bytes 0-{CHUNK - 1}/{size}"})
    assert r.status_code == 201
    did = r.json()["$id"]
    assert (service.data_dir / "uploads" / "default" / f"{did}.part").exists()
    r = upload(service, fid, data[CHUNK:], headers={"Content-Range": f"bytes {CHUNK}-{size}/{size}", "X-Appwrite-ID": did})
    assert r.status_code == 400 and error_of(r)["type"] == "storage_invalid_file"
    assert requests.get(f"{service.url}/functions/{fid}/deployments", headers=service.headers()).json()["total"] == 0
    assert not any(p.startswith(did) for p in leftovers(service))


def test_grpc_streaming_upload(service, unique_id):
    from functions.v1 import deployment_pb2, deployment_pb2_grpc
    from google.api import httpbody_pb2

    fid = new_function(service, unique_id())
    data = big_archive(3 * 1024 * 1024)
    pieces = [data[i:i + 256 * 1024] for i in range(0, len(data), 256 * 1024)]

    def messages():
        yield deployment_pb2.CreateDeploymentRequest(function_id=fid, entrypoint="main.py", activate=True,
                                                     body=httpbody_pb2.HttpBody(content_type="application/gzip", data=pieces[0]))
        for piece in pieces[1:]:
            yield deployment_pb2.CreateDeploymentRequest(body=httpbody_pb2.HttpBody(data=piece))

    stub = deployment_pb2_grpc.DeploymentServiceStub(service.channel())
    md = (("x-appwrite-project", "default"), ("x-appwrite-key", service.bootstrap_key))
    dep = stub.CreateDeployment(messages(), metadata=md)
    assert dep.size == len(data) and dep.activate and dep.build_id
    final, _ = wait_build(service, fid, dep.id)
    assert final["status"] == "ready"


def test_restart_during_a_build_finishes_it(fresh_service, unique_id):
    svc = fresh_service()
    fid = new_function(svc, unique_id())
    name, data = wheel("slowdep", "1.0", "X = 1\n")
    archive = targz({"main.py": PY_HELLO, "requirements.txt": f"./wheels/{name}\n", f"wheels/{name}": data})
    dep = upload(svc, fid, archive).json()
    poll(lambda: deployment_status(svc, fid, dep["$id"]), lambda d: d["status"] == "building")
    assert svc.stop() == 0
    svc.start()
    final, _ = wait_build(svc, fid, dep["$id"])
    assert final["status"] == "ready", final["buildStderr"]
    fn = requests.get(f"{svc.url}/functions/{fid}", headers=svc.headers()).json()
    assert fn["deployment"] == dep["$id"]


def test_unfinished_chunked_uploads_are_removed_after_their_ttl(fresh_service, unique_id):
    svc = fresh_service(FUNCTIONS_UPLOAD_TTL="2")
    fid = new_function(svc, unique_id())
    first = chunked_upload(svc, fid, big_archive(6 * 1024 * 1024), order=[0])[0]
    part = svc.data_dir / "uploads" / "default" / f"{first['$id']}.part"
    assert part.exists()
    poll(lambda: requests.get(f"{svc.url}/functions/{fid}/deployments", headers=svc.headers()).json()["total"],
         lambda total: total == 0, timeout=15, interval=0.2)
    assert not part.exists()
