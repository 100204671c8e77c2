"""Benchmark: function management at 100,000 functions.

Fills one project with N functions (bulk insert through the store, the same
rows and search words the API writes), starts the real service (gRPC server +
Envoy) on it, and prints medians over many sequential keep-alive requests:
GET one function, list page 1, deep pages by cursor and by offset, a search,
and the same GET over direct gRPC.

    .venv/bin/python bench/functions_api.py [--functions 100000] [--requests 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from harness import make_service  # noqa: E402


def fill(data_dir: Path, project: str, count: int) -> None:
    from server.store import open_database, search
    from server.store.db import database
    from server.store import counts
    from server.store.models import Function, SearchToken

    open_database("", data_dir / "functions.db")
    now = int(time.time())
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]
    batch = 2000
    for start in range(0, count, batch):
        rows, tokens = [], []
        for i in range(start, min(start + batch, count)):
            uid = f"fn{i:06d}"
            name = f"{words[i % len(words)]} function {i}"
            rows.append(dict(seq=i + 1, project=project, uid=uid, name=name, execute=[], runtime="python-3.11",
                             deployment="", vars={}, events=[], schedule="", schedule_next=0, schedule_previous=0,
                             timeout=15, status="disabled", date_created=now, date_updated=now))
            for word in {w for text in (uid, name, "python-3.11") for w in search.words(text)}:
                tokens.append(dict(kind="function", project=project, scope="", owner=i + 1, token=search._encode(word)))
        with database.atomic():
            Function.insert_many(rows).execute()
            SearchToken.insert_many(tokens).execute()
            counts.adjust("function", project, "", len(rows))
    database.close()


def timed(fn, n: int) -> tuple[float, float]:
    for _ in range(min(20, n)):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--functions", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    svc = make_service(tmp, FUNCTIONS_LOG_LEVEL="WARNING")
    t0 = time.perf_counter()
    fill(svc.data_dir, "default", args.functions)
    print(f"filled {args.functions} functions in {time.perf_counter() - t0:.1f} s")
    svc.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", svc.port)
        headers = {**svc.headers(), "Content-Type": "application/json"}

        def get(path: str):
            def call():
                conn.request("GET", "/v1" + path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                assert response.status == 200, body
                return body
            return call

        n = args.functions
        deep_cursor = f"fn{n - 200:06d}"
        cases = [
            ("GET one function", get(f"/functions/fn{n // 2:06d}")),
            ("list page 1 (25)", get("/functions")),
            ("list deep page by cursor", get(f"/functions?cursor={deep_cursor}&limit=25")),
            ("list deep page by cursor, before", get(f"/functions?cursor={deep_cursor}&cursorDirection=before&limit=25")),
            ("list page by offset 5000 (max)", get("/functions?offset=5000&limit=25")),
            ("search 'gamma func' (1/8 match)", get("/functions?search=gamma+func&limit=25")),
            ("search one id", get(f"/functions?search=fn{n - 7:06d}")),
            ("search 'python <id>' (broad + selective)", get(f"/functions?search=python+fn{n - 7:06d}")),
        ]
        print(f"\n{'case (through Envoy, REST)':42} {'median ms':>10} {'p99 ms':>8}")
        results = {}
        for label, call in cases:
            median, p99 = timed(call, args.requests)
            results[label] = median
            print(f"{label:42} {median:10.2f} {p99:8.2f}")
        body = json.loads(get(f"/functions?cursor={deep_cursor}&limit=25")())
        assert body["total"] == n and body["functions"][0]["$id"] == f"fn{n - 199:06d}"

        import grpc

        from functions.v1 import function_pb2, function_pb2_grpc

        channel = grpc.insecure_channel(svc.grpc_address)
        stub = function_pb2_grpc.FunctionServiceStub(channel)
        md = (("x-appwrite-project", "default"), ("x-appwrite-key", svc.bootstrap_key))
        request = function_pb2.GetFunctionRequest(function_id=f"fn{n // 2:06d}")
        median, p99 = timed(lambda: stub.GetFunction(request, metadata=md), args.requests)
        print(f"{'GET one function, direct gRPC':42} {median:10.2f} {p99:8.2f}")
        print(f"\nREST/gRPC ratio for GET: {results['GET one function'] / median:.2f}x")
        print(f"deep cursor page / page 1: {results['list deep page by cursor'] / results['list page 1 (25)']:.2f}x")
        channel.close()
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
