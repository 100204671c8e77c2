"""Benchmark: executions, in one run on one machine.

1. Warm sync execution of a trivial Python function, sequential: through
   Envoy (REST) and over direct gRPC; median and p99.
2. Warm sync throughput through Envoy with 8 concurrent clients (processes).
3. First execution right after activation, median over fresh deployments.
4. Baseline: `docker run --rm` of the same image running the same function once.

    .venv/bin/python bench/executions.py [--requests 1000] [--seconds 10] [--deployments 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from codepkg import targz  # noqa: E402
from harness import make_service  # noqa: E402

CODE = "def main(req, res):\n    return res.json({'ok': True, 'payload': req.payload})\n"
BODY = json.dumps({"data": "ping", "async": False})


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.99) - 1)]


def deploy(svc, fid: str, activate: str = "true") -> str:
    requests.post(f"{svc.url}/functions", headers=svc.headers(),
                  json={"functionId": fid, "name": fid, "runtime": "python-3.11", "execute": ["role:all"]}).raise_for_status()
    r = requests.post(f"{svc.url}/functions/{fid}/deployments", headers=svc.headers(),
                      files=[("entrypoint", (None, "main.py")), ("activate", (None, activate)),
                             ("code", ("code.tar.gz", targz({"main.py": CODE})))])
    r.raise_for_status()
    did = r.json()["$id"]
    while (status := requests.get(f"{svc.url}/functions/{fid}/deployments/{did}", headers=svc.headers()).json()["status"]) not in ("ready", "failed"):
        time.sleep(0.02)
    assert status == "ready"
    return did


def rest_client(port: int, headers: dict, fid: str, seconds: float, results) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.request("POST", f"/v1/functions/{fid}/executions", body=BODY, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        assert response.status == 201 and b'"completed"' in payload, payload
        done += 1
    results.put(done)


def wrk_rate(svc, headers: dict, seconds: float) -> str:
    """wrk (Debian package `wrk`) as the load: its clients cost far less CPU than Python's."""
    script = Path(tempfile.mkdtemp(prefix="wrk-")) / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = '{BODY}'"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lines += ["function response(status, headers, body)", '  if status ~= 201 or not string.find(body, "completed") then error("bad response " .. status) end', "end"]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t2", "-c8", f"-d{int(seconds)}s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{svc.port}/v1/functions/warm/executions"], capture_output=True, text=True, check=True).stdout
    rate = next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec"))
    p50 = next(line.split()[1] for line in out.splitlines() if line.strip().startswith("50%"))
    errors = [line.strip() for line in out.splitlines() if "Non-2xx" in line or "errors" in line.lower()]
    return f"{float(rate):.0f} executions/s, median latency {p50}" + (f" ({'; '.join(errors)})" if errors else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--deployments", type=int, default=20)
    args = parser.parse_args()

    svc = make_service(Path(tempfile.mkdtemp(prefix="bex-")), FUNCTIONS_LOG_LEVEL="WARNING", FUNCTIONS_BUILD_NETWORK="none",
                       FUNCTIONS_PREWARM="2").start()
    try:
        headers = {**svc.headers(), "Content-Type": "application/json"}
        deploy(svc, "warm")
        conn = http.client.HTTPConnection("127.0.0.1", svc.port)

        def rest_once():
            conn.request("POST", "/v1/functions/warm/executions", body=BODY, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            assert response.status == 201 and b'"completed"' in payload, payload

        import grpc

        from functions.v1 import execution_pb2, execution_pb2_grpc

        channel = grpc.insecure_channel(svc.grpc_address)
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        md = (("x-appwrite-project", "default"), ("x-appwrite-key", svc.bootstrap_key))
        request = execution_pb2.CreateExecutionRequest(function_id="warm", data="ping", **{"async": False})

        def grpc_once():
            assert stub.CreateExecution(request, metadata=md).status == "completed"

        for label, call in (("REST via Envoy", rest_once), ("direct gRPC", grpc_once)):
            for _ in range(50):
                call()
            samples = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                call()
                samples.append((time.perf_counter() - t0) * 1000)
            median, p99 = percentiles(samples)
            print(f"(1) warm sync execution, {label:15}: median {median:.2f} ms, p99 {p99:.2f} ms ({args.requests} sequential)")
        channel.close()

        queue = multiprocessing.Queue()
        clients = [multiprocessing.Process(target=rest_client, args=(svc.port, headers, "warm", args.seconds, queue)) for _ in range(8)]
        for client in clients:
            client.start()
        total = sum(queue.get(timeout=args.seconds + 60) for _ in clients)
        for client in clients:
            client.join()
        print(f"(2) warm sync throughput, 8 concurrent REST clients (Python processes): {total / args.seconds:.0f} executions/s")
        if shutil.which("wrk"):
            print(f"(2) warm sync throughput, 8 concurrent REST clients (wrk -t2 -c8): {wrk_rate(svc, headers, args.seconds)}")

        firsts = []
        for i in range(args.deployments):
            fid = f"first{i}"
            did = deploy(svc, fid, activate="false")
            requests.patch(f"{svc.url}/functions/{fid}/deployments/{did}", headers=svc.headers(), json={}).raise_for_status()
            t0 = time.perf_counter()
            r = requests.post(f"{svc.url}/functions/{fid}/executions", headers=svc.headers(), json={"data": "x", "async": False})
            firsts.append((time.perf_counter() - t0) * 1000)
            assert r.json()["status"] == "completed", r.text
        first_median, first_p99 = percentiles(firsts)
        print(f"(3) first execution after activation: median {first_median:.1f} ms, p99 {first_p99:.1f} ms ({args.deployments} deployments)")

        code_dir = Path(tempfile.mkdtemp(prefix="bexcode-"))
        (code_dir / "main.py").write_text(CODE)
        (code_dir / "run.py").write_text(
            "import json, main\nclass R:\n    def json(self, o, status=200): return json.dumps(o)\n"
            "class Q: payload='x'; env={}; headers={}\nprint(main.main(Q(), R()))\n")
        code_dir.chmod(0o755)
        baseline = []
        for _ in range(max(5, args.deployments // 2)):
            t0 = time.perf_counter()
            subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{code_dir}:/code:ro", "-w", "/code",
                            "functions-runtime/python:3.11", "python3", "run.py"], check=True, capture_output=True)
            baseline.append((time.perf_counter() - t0) * 1000)
        base_median, _ = percentiles(baseline)
        print(f"(4) baseline `docker run --rm` running the function once: median {base_median:.0f} ms "
              f"-> first execution is {base_median / first_median:.1f}x faster")
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
