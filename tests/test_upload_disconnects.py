"""Uploads cannot corrupt files (reliability probe F4): clients that hang up
mid-upload abort it exactly once, off the event loop: no `Bad file
descriptor`, no leaked descriptor, no file left behind."""

from __future__ import annotations

import os
import socket
import time

import requests

from harness import poll
from restkit import new_function

BOUNDARY = "----functionsboundary"


def _start_upload_and_hang_up(port: int, fid: str, key: str, body_bytes: int = 30_000) -> None:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="entrypoint"\r\n\r\nmain.py\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="code"; filename="code.tar.gz"\r\n'
            "Content-Type: application/gzip\r\n\r\n").encode()
    request = (f"POST /v1/functions/{fid}/deployments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"X-Appwrite-Project: default\r\nX-Appwrite-Key: {key}\r\n"
               f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 5000000\r\n\r\n").encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(request + head + b"\x1f\x8b" + os.urandom(body_bytes))
    return s


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_thousand_disconnects_mid_upload(fresh_service, unique_id):
    # Few blocking threads: each opens one database connection (two files) on
    # first use, so the warm-up below reaches the steady count quickly.
    svc = fresh_service(FUNCTIONS_BLOCKING_THREADS="4")
    fid = new_function(svc, unique_id())
    pid = svc.process.pid
    uploads = svc.data_dir / "uploads" / "default"

    def settled() -> bool:
        return not uploads.exists() or not any(uploads.iterdir())

    def round_of_disconnects(rounds: int) -> None:
        deadline = time.monotonic() + 240
        for _ in range(rounds):  # batches of 50 open at once
            batch = [_start_upload_and_hang_up(svc.port, fid, svc.bootstrap_key) for _ in range(50)]
            time.sleep(0.05)  # let some feeds be in flight on their threads when the clients go
            for s in batch:
                s.close()
            assert time.monotonic() < deadline

    # Warm-up: every blocking thread opens its database connection once.
    round_of_disconnects(2)
    poll(settled, bool, timeout=30)
    time.sleep(1)
    before = open_fds(pid)
    round_of_disconnects(20)  # 1,000
    poll(settled, bool, timeout=60, interval=0.2)
    poll(lambda: open_fds(pid), lambda n: n <= before + 2, timeout=30, interval=0.2)
    full_log = svc.log_path.read_text(errors="replace")
    assert "Bad file descriptor" not in full_log and "EBADF" not in full_log, svc.log()
    r = requests.get(f"{svc.url}/functions/{fid}/deployments", headers=svc.headers())
    assert r.status_code == 200 and r.json()["total"] == 0
