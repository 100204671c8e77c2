"""The gRPC hop never invents status codes (probe F7), path IDs are checked
like Appwrite's UID validator, chunked uploads refuse conflicting bytes, and
quotas bound what a project may store (probe F6)."""

from __future__ import annotations

import os

import pytest
import requests

from codepkg import PY_HELLO, targz
from harness import error_of
from restkit import CHUNK, big_archive, new_function, upload, wait_build


@pytest.mark.parametrize("size", [9_000, 12_000, 30_000, 50_000])
def test_large_request_headers_work_every_time(service, size):
    codes = {requests.get(f"{service.url}/functions", headers={**service.headers(), "X-Big": "a" * size}).status_code
             for _ in range(15)}
    assert codes == {200}


def test_json_body_over_the_limit_is_413_never_429(service):
    for body in (b'{"name":"' + b"a" * 20_000_000 + b'"}', (b"a" * 1_000_000 for _ in range(20))):
        r = requests.post(f"{service.url}/functions", headers={**service.headers(), "Content-Type": "application/json"},
                          data=body)
        assert r.status_code == 413 and error_of(r)["code"] == 413


def test_header_names_grpc_refuses_are_dropped_not_500(service):
    r = requests.get(f"{service.url}/functions", headers={**service.headers(), "a~b": "1", "x|y": "2", "c^d": "3"})
    assert r.status_code == 200


def test_unknown_http_method_gets_an_appwrite_error(service):
    r = requests.request("QUERY", f"{service.url}/functions", headers=service.headers())
    assert r.status_code == 400 and error_of(r)["type"] == "general_argument_invalid"


@pytest.mark.parametrize("path", [
    "/functions/" + "a" * 40,
    "/functions/_leading",
    "/functions/sp%20ace",
    "/functions/ok/deployments/" + "d" * 37,
    "/functions/ok/executions/bad!id",
])
def test_path_ids_are_validated_before_any_lookup(service, path):
    r = requests.get(f"{service.url}{path}", headers=service.headers())
    assert r.status_code == 400, r.text
    assert error_of(r)["type"] == "general_argument_invalid" and "UID" in error_of(r)["message"]


def test_retry_build_with_an_invalid_build_id_is_400(service, unique_id):
    fid = new_function(service, unique_id())
    dep = upload(service, fid, targz({"main.py": PY_HELLO})).json()
    r = requests.post(f"{service.url}/functions/{fid}/deployments/{dep['$id']}/builds/{'b' * 40}", headers=service.headers())
    assert r.status_code == 400 and error_of(r)["type"] == "general_argument_invalid"


def _chunk(service, fid, data: bytes, start: int, end: int, size: int, upload_id: str | None = None, unit: str = "bytes"):
    headers = {"Content-Range": f"{unit} {start}-{end}/{size}"}
    if upload_id:
        headers["X-Appwrite-ID"] = upload_id
    return upload(service, fid, data, headers=headers)


def test_overlapping_chunk_with_other_bytes_is_400_and_keeps_the_upload(service, unique_id):
    fid = new_function(service, unique_id())
    data = big_archive(11 * 1024 * 1024)
    size = len(data)
    first = _chunk(service, fid, data[:CHUNK], 0, CHUNK - 1, size)
    assert first.status_code == 201
    upload_id = first.json()["$id"]
    tampered = bytearray(data[:CHUNK])
    tampered[100] ^= 0xFF
    r = _chunk(service, fid, bytes(tampered), 0, CHUNK - 1, size, upload_id)
    assert r.status_code == 400 and error_of(r)["type"] == "storage_invalid_content_range"
    # Resending the same bytes is fine, and the upload completes as if nothing happened.
    assert _chunk(service, fid, data[:CHUNK], 0, CHUNK - 1, size, upload_id).status_code == 201
    for start in range(CHUNK, size, CHUNK):
        end = min(start + CHUNK - 1, size)
        r = _chunk(service, fid, data[start:end + 1], start, end, size, upload_id)
        assert r.status_code == 201, r.text
    final, _ = wait_build(service, fid, upload_id)
    assert final["status"] == "ready", final["buildStderr"]


def test_content_range_unit_must_be_bytes(service, unique_id):
    fid = new_function(service, unique_id())
    data = targz({"main.py": PY_HELLO})
    r = _chunk(service, fid, data, 0, len(data), len(data), unit="items")
    assert r.status_code == 400 and error_of(r)["type"] == "storage_invalid_content_range"
    assert requests.get(f"{service.url}/functions/{fid}/deployments", headers=service.headers()).json()["total"] == 0


def test_unfinished_chunked_uploads_are_capped(fresh_service, unique_id):
    svc = fresh_service(FUNCTIONS_MAX_PENDING_UPLOADS="3", FUNCTIONS_PENDING_UPLOAD_MB="100")
    fid = new_function(svc, unique_id())
    size = 12 * 1024 * 1024
    piece = os.urandom(CHUNK)
    codes = [_chunk(svc, fid, piece, 0, CHUNK - 1, size).status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429]
    # Bytes: a declared size past the cap is refused even under the count.
    svc2 = fresh_service(FUNCTIONS_PENDING_UPLOAD_MB="20")
    fid2 = new_function(svc2, unique_id())
    assert _chunk(svc2, fid2, piece, 0, CHUNK - 1, size).status_code == 201
    r = _chunk(svc2, fid2, piece, 0, CHUNK - 1, size)
    assert r.status_code == 400 and "FUNCTIONS_PENDING_UPLOAD_MB" in error_of(r)["message"]


def test_project_storage_quota(fresh_service, unique_id):
    svc = fresh_service(FUNCTIONS_PROJECT_STORAGE_MB="4")
    fid = new_function(svc, unique_id())
    blob = targz({"main.py": PY_HELLO, "blob.bin": os.urandom(1024 * 1024)})  # ~1 MB packed and unpacked
    first = upload(svc, fid, blob).json()
    assert wait_build(svc, fid, first["$id"])[0]["status"] == "ready"
    # 1 MB package + 1 MB build output of 4 MB are used; the next 1 MB package still
    # fits, but its build output does not: the build fails, naming the quota.
    second = upload(svc, fid, blob)
    assert second.status_code == 201
    failed, _ = wait_build(svc, fid, second.json()["$id"])
    assert failed["status"] == "failed" and "FUNCTIONS_PROJECT_STORAGE_MB" in failed["buildStderr"]
    # Now the quota is used up: uploads are refused before anything is stored.
    r = upload(svc, fid, blob)
    assert r.status_code == 400 and "FUNCTIONS_PROJECT_STORAGE_MB" in error_of(r)["message"]
    leftovers = list((svc.data_dir / "uploads" / "default").iterdir())
    assert leftovers == []
    # Deleting a deployment makes room again.
    assert requests.delete(f"{svc.url}/functions/{fid}/deployments/{second.json()['$id']}", headers=svc.headers()).status_code == 204
    assert requests.delete(f"{svc.url}/functions/{fid}/deployments/{first['$id']}", headers=svc.headers()).status_code == 204
    assert upload(svc, fid, blob).status_code == 201


def test_build_output_counts_against_the_uncompressed_limit(fresh_service, unique_id):
    """A small archive whose dependency (a wheel of a 3 MB module, a few KB
    zipped) passes the archive check, but whose installed output does not."""
    from codepkg import wheel

    svc = fresh_service(FUNCTIONS_CODE_UNCOMPRESSED_LIMIT=str(2 * 1024 * 1024))
    fid = new_function(svc, unique_id())
    name, data = wheel("bigdep", "1.0", "X = '" + "0" * 3_000_000 + "'\n")
    archive = targz({"main.py": PY_HELLO, "requirements.txt": f"./wheels/{name}\n", f"wheels/{name}": data})
    assert len(archive) < 100_000
    dep = upload(svc, fid, archive)
    assert dep.status_code == 201, dep.text
    final, _ = wait_build(svc, fid, dep.json()["$id"])
    assert final["status"] == "failed" and "FUNCTIONS_CODE_UNCOMPRESSED_LIMIT" in final["buildStderr"], final["buildStderr"]
    build_dir = svc.data_dir / "builds" / "default" / final["buildId"]
    assert not build_dir.exists()
