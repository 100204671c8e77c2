"""Benchmark: warm sync throughput through Envoy for one replica and for
several, side by side in one run, with the CPU each kind of process spends
per execution (Envoy, the server replicas, the runtime containers, the load
clients) so the next cut is visible.

For each replica count: 8 client processes, each calling its own function
(function affinity spreads them over the replicas), then all 8 calling one
function (a hot function spills over). Every request's latency is kept:
median, p99, max, and how many took over 100 ms.

    .venv/bin/python bench/replicas.py [--replicas 1,0] [--seconds 10] [--clients 8]

`0` means the default (one replica per core).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from harness import make_service  # noqa: E402
from restkit import deploy  # noqa: E402

CODE = "def main(req, res):\n    return res.json({'ok': True, 'payload': req.payload})\n"
BODY = json.dumps({"data": "ping", "async": False})
TICK = os.sysconf("SC_CLK_TCK")


def client(port: int, headers: dict, fid: str, seconds: float, results) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    latencies, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        conn.request("POST", f"/v1/functions/{fid}/executions", body=BODY, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        latencies.append(time.perf_counter() - started)
        assert response.status == 201 and b'"completed"' in payload, payload
    results.put((latencies, time.process_time()))


def process_cpu(pid: int) -> float:
    """CPU seconds of a process (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def service_processes(root_pid: int) -> dict[str, list[int]]:
    """The supervisor's children by kind: envoy, replicas."""
    kinds: dict[str, list[int]] = {"envoy": [], "server": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != root_pid:
            continue
        if "envoy" in cmdline:
            kinds["envoy"].append(int(entry.name))
        elif "server serve" in cmdline:
            kinds["server"].append(int(entry.name))
    return kinds


def runtime_cpu(data_dir: Path) -> float:
    """CPU seconds used so far by the service's runtime containers (cgroup v2)."""
    total = 0.0
    work = str(data_dir.resolve() / "c")
    for item in docker.from_env().api.containers(filters={"label": "functions.role=runtime"}):
        if not (item.get("Labels") or {}).get("functions.work-dir", "").startswith(work):
            continue
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{item['Id']}/cpuacct.usage")  # nanoseconds
        if v1.exists():
            total += int(v1.read_text()) / 1e9
            continue
        for base in (f"/sys/fs/cgroup/system.slice/docker-{item['Id']}.scope", f"/sys/fs/cgroup/docker/{item['Id']}"):
            stat = Path(base) / "cpu.stat"
            if stat.exists():
                usage = next(line for line in stat.read_text().splitlines() if line.startswith("usage_usec"))
                total += int(usage.split()[1]) / 1e6
                break
    return total


def snapshot(svc) -> dict[str, float]:
    kinds = service_processes(svc.process.pid)
    cpu = {kind: sum(process_cpu(pid) for pid in pids) for kind, pids in kinds.items()}
    cpu["runtime"] = runtime_cpu(svc.data_dir)
    return cpu


def load(svc, fids: list[str], clients: int, seconds: float) -> dict:
    headers = {**svc.headers(), "Content-Type": "application/json"}
    queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(svc.port, headers, fids[i % len(fids)], seconds, queue))
             for i in range(clients)]
    before = snapshot(svc)
    for proc in procs:
        proc.start()
    outcomes = [queue.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join()
    after = snapshot(svc)
    latencies = sorted(x for lat, _ in outcomes for x in lat)
    count = len(latencies)
    cpu = {kind: (after[kind] - before[kind]) * 1000 / count for kind in after}
    cpu["clients"] = sum(c for _, c in outcomes) * 1000 / count
    return {
        "rate": count / seconds,
        "median_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(count * 0.99) - 1)] * 1000,
        "max_ms": latencies[-1] * 1000,
        "over_100ms": sum(x > 0.1 for x in latencies),
        "cpu_ms_per_execution": cpu,
    }


def sequential(svc, fid: str, requests: int) -> tuple[float, float]:
    headers = {**svc.headers(), "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", svc.port)
    samples = []
    for i in range(requests + 50):
        started = time.perf_counter()
        conn.request("POST", f"/v1/functions/{fid}/executions", body=BODY, headers=headers)
        response = conn.getresponse()
        response.read()
        if i >= 50:
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def run(replicas: int, args) -> None:
    svc = make_service(Path(tempfile.mkdtemp(prefix="brep-")), FUNCTIONS_LOG_LEVEL="WARNING", FUNCTIONS_BUILD_NETWORK="none",
                       FUNCTIONS_PREWARM="2", FUNCTIONS_REPLICAS=str(replicas)).start(timeout=120)
    try:
        fids = [deploy(svc, f"bench{i}", {"main.py": CODE}) for i in range(args.clients)]
        for fid in fids:
            sequential(svc, fid, 20)
        median, p99 = sequential(svc, fids[0], args.requests)
        label = f"replicas={replicas or os.cpu_count()}"
        print(f"{label}: warm sync REST, sequential: median {median:.2f} ms, p99 {p99:.2f} ms ({args.requests})")
        for mode, targets in (("8 functions", fids), ("1 hot function", fids[:1])):
            r = load(svc, targets, args.clients, args.seconds)
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms_per_execution"].items())
            print(f"{label}: {args.clients} clients, {mode:14}: {r['rate']:6.0f} executions/s, median {r['median_ms']:.2f} ms, "
                  f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.0f} ms, {r['over_100ms']} over 100 ms; CPU ms/execution: {cpu}")
    finally:
        svc.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", default="1,0")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    for replicas in (int(r) for r in args.replicas.split(",")):
        run(replicas, args)


if __name__ == "__main__":
    main()
