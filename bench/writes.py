"""Benchmark: write load through Envoy, looking for pauses.

8 threads create and delete functions over REST (keep-alive connections),
bounded by a count and by time; every request's latency is kept: median,
p99, max, and how many took over 100 ms. On SQLite (the data directory) and,
with --database-url, on PostgreSQL.

    .venv/bin/python bench/writes.py [--operations 4000] [--threads 8] [--seconds 60] [--database-url URL]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from harness import make_service  # noqa: E402


def worker(svc, count: int, deadline: float, latencies: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", svc.port)
    headers = {**svc.headers(), "Content-Type": "application/json"}
    for _ in range(count // 2):
        if time.monotonic() > deadline:
            return
        fid = f"w{uuid.uuid4().hex[:16]}"
        body = json.dumps({"functionId": fid, "name": fid, "runtime": "python-3.11", "execute": ["role:all"]})
        for method, path, payload, expected in (("POST", "/v1/functions", body, 201), ("DELETE", f"/v1/functions/{fid}", None, 204)):
            started = time.perf_counter()
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            assert response.status == expected, response.status


def run(label: str, env: dict, args) -> None:
    svc = make_service(Path(tempfile.mkdtemp(prefix="bwr-")), FUNCTIONS_LOG_LEVEL="WARNING", **env).start(timeout=120)
    try:
        latencies: list[float] = []
        deadline = time.monotonic() + args.seconds
        threads = [threading.Thread(target=worker, args=(svc, args.operations // args.threads, deadline, latencies))
                   for _ in range(args.threads)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        latencies.sort()
        print(f"{label}: {len(latencies)} writes in {elapsed:.1f} s ({len(latencies) / elapsed:.0f}/s), "
              f"median {statistics.median(latencies) * 1000:.1f} ms, p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.0f} ms, {sum(x > 0.1 for x in latencies)} over 100 ms")
    finally:
        svc.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--operations", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--replicas", default="1")
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    for replicas in args.replicas.split(","):
        run(f"SQLite, replicas={replicas}", {"FUNCTIONS_REPLICAS": replicas}, args)
        if args.database_url:
            run(f"PostgreSQL, replicas={replicas}", {"FUNCTIONS_REPLICAS": replicas, "FUNCTIONS_DATABASE_URL": args.database_url}, args)


if __name__ == "__main__":
    main()
