"""Benchmark: live logs (SQLite, real Docker, one replica).

1. Print-to-receive latency: a function prints --lines lines, one every
   20 ms, each carrying the time it was printed (the container's clock is
   the host's); a subscriber records when each arrives: through Envoy as
   Server-Sent Events, and through a direct gRPC stream.
2. Cost to the function: it prints 10,000 lines paced at 10,000 a second
   (and as fast as it can) and times its own loop, run through the runtime server directly (the
   container protocol over its socket) without and with `live` frames, and
   through the service with 0 and 1 subscribers.
3. Memory: --subscribers gRPC streams on one execution printing a line a
   second; the server process's RSS before and with them all open (each
   must have received a line).

    .venv/bin/python bench/live_logs.py [--lines 200] [--subscribers 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "build" / "gen"))

from harness import make_service  # noqa: E402
from restkit import deploy, execute, wait_execution  # noqa: E402

PY_PACED = ("import time\ndef main(req, res):\n"
            "    n, gap = (int(x) for x in req.payload.split())\n"
            "    for i in range(n):\n"
            "        print('at %.6f line %d' % (time.time(), i), flush=True)\n"
            "        time.sleep(gap / 1000)\n"
            "    return res.send('done')\n")
PY_BURST = ("import sys, time\ndef main(req, res):\n"
            "    started = time.perf_counter()\n"
            "    for i in range(10000):\n"
            "        sys.stdout.write('line %d of the output of a chatty function\\n' % i)\n"
            "        if i % 100 == 99 and req.payload != 'fast':\n"
            "            sys.stdout.flush()\n"
            "            time.sleep(max(0.0, started + (i + 1) / 10000 - time.perf_counter()))\n"
            "    return res.send('%.6f' % (time.perf_counter() - started))\n")


def summary(label: str, samples: list[float], unit: str = "ms") -> None:
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"{label:<52} n={len(samples):<5} median {statistics.median(samples):8.2f} {unit}   p99 {p99:8.2f} {unit}",
          flush=True)


def printed_at(text: str) -> float:
    return float(text.split()[1])


def latency_sse(svc, fid: str, lines: int) -> list[float]:
    ex = execute(svc, fid, data=f"{lines} 20", is_async=True).json()
    samples = []
    with requests.get(f"{svc.url}/functions/{fid}/executions/{ex['$id']}/logs", headers=svc.headers(), stream=True,
                      timeout=120) as r:
        for raw in r.iter_lines():
            if not raw.startswith(b"data: "):
                continue
            message = json.loads(raw[6:])
            if message["type"] == "line":
                samples.append((time.time() - printed_at(message["text"])) * 1000)
            elif message["type"] == "end":
                break
    return samples


def latency_grpc(svc, fid: str, lines: int) -> list[float]:
    from functions.v1 import execution_pb2, execution_pb2_grpc, log_pb2, log_pb2_grpc

    metadata = (("x-appwrite-project", "default"), ("x-appwrite-key", svc.bootstrap_key))
    channel = grpc.insecure_channel(svc.grpc_address)
    ex = execution_pb2_grpc.ExecutionServiceStub(channel).CreateExecution(
        execution_pb2.CreateExecutionRequest(function_id=fid, data=f"{lines} 20", **{"async": True}),
        metadata=metadata, timeout=30)
    samples = []
    for message in log_pb2_grpc.LogServiceStub(channel).StreamExecutionLogs(
            log_pb2.StreamExecutionLogsRequest(function_id=fid, execution_id=ex.id), metadata=metadata, timeout=120):
        if message.type == "line":
            samples.append((time.time() - printed_at(message.text)) * 1000)
    channel.close()
    return samples


def runtime_direct(live: bool, runs: int, payload: str = "") -> list[float]:
    """The Python runtime server on the host, driven over its socket."""
    work = Path(tempfile.mkdtemp(prefix="blr-"))
    (work / "code").mkdir()
    (work / "code" / "main.py").write_text(PY_BURST)
    sock = work / "rt.sock"
    proc = subprocess.Popen([sys.executable, str(REPO / "runtimes" / "python" / "server.py")],
                            env={**os.environ, "FUNCTIONS_RUNTIME_SOCKET": str(sock)}, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(str(sock))
        reader = conn.makefile("rb")

        def request(message: dict) -> dict:
            conn.sendall(json.dumps(message).encode() + b"\n")
            while True:
                reply = json.loads(reader.readline())
                if reply.get("type") != "output":
                    return reply

        assert request({"id": "l", "type": "load", "codeDir": str(work / "code"), "entrypoint": "main.py"})["ok"]
        return [float(request({"id": f"e{i}", "type": "execute", "payload": payload, "env": {}, "headers": {},
                               "live": live})["body"]) * 1000 for i in range(runs)]
    finally:
        proc.kill()
        proc.wait()


def through_service(svc, fid: str, runs: int, subscribed: bool) -> list[float]:
    samples = []
    for _ in range(runs):
        ex = execute(svc, fid, is_async=True).json()
        if subscribed:
            with requests.get(f"{svc.url}/functions/{fid}/executions/{ex['$id']}/logs", headers=svc.headers(),
                              stream=True, timeout=120) as r:
                for raw in r.iter_lines():
                    if raw.startswith(b"data: ") and b'"type":"end"' in raw.replace(b" ", b""):
                        break
        final, _ = wait_execution(svc, fid, ex["$id"])
        samples.append(float(final["stdout"]) * 1000)
    return samples


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def server_pid(svc) -> int:
    out = subprocess.run(["pgrep", "-f", "server serve --replica 0 "], capture_output=True, text=True).stdout.split()
    for pid in map(int, out):
        if f"FUNCTIONS_DATA_DIR={svc.data_dir}".encode() in Path(f"/proc/{pid}/environ").read_bytes():
            return pid
    raise RuntimeError("server process not found")


def memory(svc, fid: str, subscribers: int) -> None:
    from functions.v1 import log_pb2, log_pb2_grpc

    pid = server_pid(svc)
    before = rss_kb(pid)
    ex = execute(svc, fid, data="60 1000", is_async=True).json()
    metadata = (("x-appwrite-project", "default"), ("x-appwrite-key", svc.bootstrap_key))
    channel = grpc.insecure_channel(svc.grpc_address, options=[("grpc.max_concurrent_streams", 4000)])
    stub = log_pb2_grpc.LogServiceStub(channel)
    got = [0] * subscribers
    streams = []

    def follow(index: int) -> None:
        stream = stub.StreamExecutionLogs(log_pb2.StreamExecutionLogsRequest(function_id=fid, execution_id=ex["$id"]),
                                          metadata=metadata, timeout=90)
        streams.append(stream)
        try:
            for message in stream:
                if message.type == "line":
                    got[index] += 1
        except grpc.RpcError:
            pass

    threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(subscribers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while min(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    with_them = rss_kb(pid)
    print(f"server RSS: {before / 1024:.1f} MiB before, {with_them / 1024:.1f} MiB with {subscribers} subscribers "
          f"({(with_them - before) / subscribers:.1f} KiB each); every subscriber got lines: {min(got) >= 3}", flush=True)
    for stream in streams:
        stream.cancel()
    channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--subscribers", type=int, default=1000)
    args = parser.parse_args()
    direct_off = runtime_direct(False, args.runs)
    direct_on = runtime_direct(True, args.runs)
    summary("10,000 lines at 10,000/s: runtime alone, not live", direct_off)
    summary("10,000 lines at 10,000/s: runtime alone, live frames", direct_on)
    summary("10,000 lines at full speed: runtime alone, not live", runtime_direct(False, args.runs, "fast"))
    summary("10,000 lines at full speed: runtime alone, live frames", runtime_direct(True, args.runs, "fast"))
    svc = make_service(Path(tempfile.mkdtemp(prefix="bll-")), FUNCTIONS_LOG_LEVEL="WARNING", FUNCTIONS_REPLICAS="1",
                       FUNCTIONS_BUILD_NETWORK="none").start(timeout=120)
    try:
        paced = deploy(svc, f"paced{uuid.uuid4().hex[:6]}", {"main.py": PY_PACED}, timeout=120)
        burst = deploy(svc, f"burst{uuid.uuid4().hex[:6]}", {"main.py": PY_BURST}, timeout=60)
        latency_sse(svc, paced, 10)  # warm
        summary("print to receive, Envoy SSE", latency_sse(svc, paced, args.lines))
        summary("print to receive, direct gRPC", latency_grpc(svc, paced, args.lines))
        summary("10,000 lines at 10,000/s: service, no subscriber", through_service(svc, burst, args.runs, False))
        summary("10,000 lines at 10,000/s: service, 1 SSE subscriber", through_service(svc, burst, args.runs, True))
        if args.subscribers:
            memory(svc, paced, args.subscribers)
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
