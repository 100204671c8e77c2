"""Benchmark: uploads and builds, in one run on one machine.

1. A 100 MB upload through Envoy in one multipart request: MB/s and the
   gRPC server's peak RSS growth (VmHWM, reset before the upload).
2. The same 100 MB as 5 MiB chunks, the way the Appwrite Python SDK sends it.
3. Upload-to-ready time of a trivial Python function, beside a bare
   `docker run --rm` of the same image running `python3 -c pass` (baseline).

    .venv/bin/python bench/deployments.py [--mb 100] [--builds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from codepkg import PY_HELLO, targz  # noqa: E402
from harness import make_service  # noqa: E402

CHUNK = 5 * 1024 * 1024


def vm_hwm_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def vm_rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def reset_hwm(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--builds", type=int, default=5)
    args = parser.parse_args()

    svc = make_service(Path(tempfile.mkdtemp(prefix="bdep-")), FUNCTIONS_CODE_SIZE_LIMIT=str(400_000_000),
                       FUNCTIONS_CODE_UNCOMPRESSED_LIMIT=str(800_000_000), FUNCTIONS_BUILD_NETWORK="none",
                       FUNCTIONS_LOG_LEVEL="WARNING").start()
    try:
        headers = svc.headers()
        pid = svc.process.pid
        requests.post(f"{svc.url}/functions", headers=headers, json={"functionId": "big", "name": "big", "runtime": "python-3.11"})
        archive = targz({"main.py": PY_HELLO, "blob.bin": os.urandom(args.mb * 1_000_000)})
        size_mb = len(archive) / 1e6
        url = f"{svc.url}/functions/big/deployments"

        rss_before = vm_rss_kb(pid)
        reset_hwm(pid)
        t0 = time.perf_counter()
        r = requests.post(url, headers=headers, files=[("entrypoint", (None, "main.py")), ("activate", (None, "false")),
                                                       ("code", ("code.tar.gz", archive))])
        elapsed = time.perf_counter() - t0
        assert r.status_code == 201, r.text
        growth = (vm_hwm_kb(pid) - rss_before) / 1024
        print(f"single request: {size_mb:.1f} MB in {elapsed:.2f} s = {size_mb / elapsed:.0f} MB/s; "
              f"server peak RSS growth {growth:.1f} MB (RSS before {rss_before / 1024:.0f} MB)")

        rss_before = vm_rss_kb(pid)
        reset_hwm(pid)
        t0 = time.perf_counter()
        upload_id = None
        for start in range(0, len(archive), CHUNK):
            end = min(start + CHUNK - 1, len(archive))
            chunk_headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(archive)}"}
            if upload_id:
                chunk_headers["X-Appwrite-ID"] = upload_id
            r = requests.post(url, headers=chunk_headers, files=[("entrypoint", (None, "main.py")), ("activate", (None, "False")),
                                                                 ("code", ("code.tar.gz", archive[start:end + 1]))])
            assert r.status_code == 201, r.text
            upload_id = r.json()["$id"]
        elapsed = time.perf_counter() - t0
        growth = (vm_hwm_kb(pid) - rss_before) / 1024
        print(f"5 MiB chunks:   {size_mb:.1f} MB in {elapsed:.2f} s = {size_mb / elapsed:.0f} MB/s "
              f"({r.json()['chunksTotal']} chunks); server peak RSS growth {growth:.1f} MB")

        small = targz({"main.py": PY_HELLO})
        to_ready = []
        for i in range(args.builds):
            t0 = time.perf_counter()
            r = requests.post(url, headers=headers, files=[("entrypoint", (None, "main.py")), ("activate", (None, "true")),
                                                           ("code", ("code.tar.gz", small))])
            did = r.json()["$id"]
            while True:
                status = requests.get(f"{url}/{did}", headers=headers).json()["status"]
                if status in ("ready", "failed"):
                    break
                time.sleep(0.01)
            assert status == "ready"
            to_ready.append(time.perf_counter() - t0)
        image = "functions-runtime/python:3.11"
        baseline = []
        for _ in range(args.builds):
            t0 = time.perf_counter()
            subprocess.run(["docker", "run", "--rm", "--network", "none", image, "python3", "-c", "pass"], check=True)
            baseline.append(time.perf_counter() - t0)
        ready, base = statistics.median(to_ready), statistics.median(baseline)
        print(f"upload -> ready (trivial Python, median of {args.builds}): {ready * 1000:.0f} ms; "
              f"bare `docker run --rm`: {base * 1000:.0f} ms; ratio {ready / base:.2f}x")
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
