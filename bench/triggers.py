"""Benchmark: how soon triggers start executions (SQLite, real Docker, REST via Envoy).

- Event to start: PublishEvent (POST /v1/events) is timed from just before
  the request to each subscriber execution's `run_started` (the moment the
  function is handed its request, Unix ms in the database), for one and for
  100 subscribing functions (warm after three untimed events).
- Fire precision: functions with `* * * * *` are left to fire for a few
  minutes; each fire's `run_started` is compared with its fire time (the
  minute boundary it belongs to).

Bounded: --events publishes per subscriber count, --minutes of fires.

    .venv/bin/python bench/triggers.py [--events 30] [--minutes 3] [--scheduled 10] [--max-containers 160]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from harness import make_service  # noqa: E402
from restkit import deploy, new_project  # noqa: E402

PY_OK = {"main.py": "def main(req, res):\n    return res.send('ok')\n"}


def summary(label: str, samples_ms: list[float]) -> None:
    samples_ms = sorted(samples_ms)
    p99 = samples_ms[min(len(samples_ms) - 1, int(len(samples_ms) * 0.99))]
    print(f"{label:<44} n={len(samples_ms):<5} median {statistics.median(samples_ms):7.1f} ms   "
          f"p99 {p99:7.1f} ms   max {samples_ms[-1]:7.1f} ms", flush=True)


def started_ms(svc, fids: list[str], event: str = "", trigger: str = "event") -> list[int]:
    marks = ",".join("?" * len(fids))
    with sqlite3.connect(svc.data_dir / "functions.db", timeout=30) as conn:
        return [row[0] for row in conn.execute(
            f"SELECT run_started FROM execution WHERE function IN ({marks}) AND trigger = ? AND run_started > 0"
            + (" AND event_data LIKE ?" if event else ""),
            (*fids, trigger, *([f"%{event}%"] if event else [])))]


def subscribers(p, count: int, name: str) -> list[str]:
    def one(i: int) -> str:
        fid = deploy(p, f"s{i:03d}{uuid.uuid4().hex[:6]}", PY_OK)
        fn = requests.get(f"{p.url}/functions/{fid}", headers=p.headers()).json()
        requests.put(f"{p.url}/functions/{fid}", headers=p.headers(),
                     json={"name": fn["name"], "execute": fn["execute"], "events": [name]}).raise_for_status()
        return fid

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def event_latency(svc, count: int, events: int) -> None:
    p = new_project(svc, "bench")
    fids = subscribers(p, count, "users.create")
    session = requests.Session()

    def publish(tag: str) -> float:
        sent = time.time()
        r = session.post(f"{p.url}/events", headers=p.headers(), json={
            "event": "users.create", "data": f'{{"tag":"{tag}"}}', "source": "//bench", "id": tag})
        assert r.status_code == 201 and r.json()["matched"] == count, r.text
        return sent

    def wait_started(tag: str) -> list[int]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            marks = started_ms(svc, fids, tag)
            if len(marks) == count:
                return marks
            time.sleep(0.05)
        raise TimeoutError(f"{tag}: not every subscriber started")

    for _ in range(3):  # containers up and settled: the figures are of warm subscribers
        warm = uuid.uuid4().hex
        publish(warm)
        wait_started(warm)
    samples = []
    for _ in range(events):
        tag = uuid.uuid4().hex
        sent = publish(tag)
        samples += [mark - sent * 1000 for mark in wait_started(tag)]
        time.sleep(0.2)
    summary(f"event to execution start, {count} subscriber(s)", samples)


def fire_precision(svc, minutes: int, scheduled: int) -> None:
    p = new_project(svc, "cron")
    fids = subscribers(p, scheduled, "users.delete")  # deployed; the event is never published
    for fid in fids:
        fn = requests.get(f"{p.url}/functions/{fid}", headers=p.headers()).json()
        requests.put(f"{p.url}/functions/{fid}", headers=p.headers(),
                     json={"name": fn["name"], "execute": fn["execute"], "schedule": "* * * * *"}).raise_for_status()
    first_fire = (int(time.time()) // 60 + 1) * 60
    time.sleep(max(0.0, first_fire + 60 * (minutes - 1) + 10 - time.time()))
    samples = [mark - (mark // 60000) * 60000 for mark in started_ms(svc, fids, trigger="schedule")]
    summary(f"fire time to execution start, {scheduled} functions", samples)
    print("  per fire (ms):", " ".join(str(int(s)) for s in sorted(samples)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=30)
    parser.add_argument("--minutes", type=int, default=3)
    parser.add_argument("--scheduled", type=int, default=10)
    parser.add_argument("--max-containers", type=int, default=160,
                        help="FUNCTIONS_MAX_CONTAINERS: above the 111+ functions, so subscribers stay warm")
    args = parser.parse_args()
    svc = make_service(Path(tempfile.mkdtemp(prefix="btr-")), FUNCTIONS_LOG_LEVEL="WARNING",
                       FUNCTIONS_BUILD_NETWORK="none", FUNCTIONS_MAX_CONTAINERS=str(args.max_containers)).start(timeout=120)
    print(f"FUNCTIONS_MAX_CONTAINERS={args.max_containers}", flush=True)
    try:
        if args.events > 0:
            event_latency(svc, 1, args.events)
            event_latency(svc, 100, max(3, args.events // 10))
        if args.minutes > 0:
            fire_precision(svc, args.minutes, args.scheduled)
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
