"""The background-jobs layer (server/jobs): one contract for every loop,
one registry that starts them in order and stops them in reverse, and a
whole service whose stop leaves no task or thread behind."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from harness import REPO
from server.jobs import Jobs, OneShot, Periodic, QueueWorkers, Resource, ThreadWorkers


def run(coro, timeout: float = 20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_periodic_job_keeps_going_after_a_failing_round_and_stops_at_once(caplog):
    rounds = []

    def action():
        rounds.append(time.monotonic())
        if len(rounds) == 2:
            raise RuntimeError("round two breaks")

    async def scenario():
        job = Periodic("ticker", 0.02, action, first=0)
        await job.start()
        while len(rounds) < 4:
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        await job.stop(loop.time() + 1)
        assert job.alive() == []
        count = len(rounds)
        await asyncio.sleep(0.1)
        assert len(rounds) == count  # nothing runs after stop

    with caplog.at_level(logging.ERROR):
        run(scenario())
    failures = [r for r in caplog.records if "periodic job failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].job == "ticker"


def test_periodic_rounds_never_overlap():
    running, overlaps, done = [0], [0], []

    async def slow():
        running[0] += 1
        overlaps[0] = max(overlaps[0], running[0])
        await asyncio.sleep(0.05)
        running[0] -= 1
        done.append(1)

    async def scenario():
        job = Periodic("slow", 0.001, slow, first=0)
        await job.start()
        while len(done) < 3:
            await asyncio.sleep(0.01)
        await job.stop(asyncio.get_running_loop().time() + 1)

    run(scenario())
    assert overlaps[0] == 1


def test_queue_workers_survive_a_failing_item_and_stop(caplog):
    handled = []

    async def scenario():
        queue: asyncio.Queue[int] = asyncio.Queue()

        async def handle(item: int):
            if item == 2:
                raise ValueError("bad item")
            handled.append(item)

        job = QueueWorkers("consumers", 2, queue.get, handle)
        await job.start()
        assert len(job.alive()) == 2
        for item in range(5):
            queue.put_nowait(item)
        while len(handled) < 4:
            await asyncio.sleep(0.01)
        await job.stop(asyncio.get_running_loop().time() + 1)
        assert job.alive() == []

    with caplog.at_level(logging.ERROR):
        run(scenario())
    assert sorted(handled) == [0, 1, 3, 4]
    assert any("bad item" in (r.exc_text or "") or r.exc_info for r in caplog.records if r.job == "consumers")


def test_thread_workers_claim_wake_signal_and_join():
    items = list(range(6))
    lock = threading.Lock()
    handled, signalled = [], []

    def claim():
        with lock:
            return items.pop(0) if items else None

    def handle(item):
        if item == 3:
            raise RuntimeError("broken item")
        handled.append(item)

    async def scenario():
        job = ThreadWorkers("claimers", 2, claim, handle, idle_poll=30.0, on_signal=(lambda: signalled.append(1),))
        await job.start()
        while len(handled) < 5:
            await asyncio.sleep(0.01)
        with lock:
            items.append(99)
        job.wake()  # an idle worker looks at once, long before idle_poll
        deadline = time.monotonic() + 5
        while 99 not in handled and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert 99 in handled
        started = time.monotonic()
        await job.stop(asyncio.get_running_loop().time() + 5)
        assert time.monotonic() - started < 2  # idle threads wake on stop, not after idle_poll
        assert job.alive() == [] and signalled == [1]

    run(scenario())
    assert sorted(handled) == [0, 1, 2, 4, 5, 99]


def test_thread_one_shot_is_cancelled_on_signal():
    cancelled = threading.Event()

    async def scenario():
        job = OneShot("long-start-up", lambda: cancelled.wait(30), wait=False, cancel=cancelled.set)
        await job.start()
        assert job.alive() == ["long-start-up"]
        job.signal()
        await job.stop(asyncio.get_running_loop().time() + 5)
        assert job.alive() == []

    run(scenario())


def test_registry_starts_in_order_signals_all_then_stops_in_reverse():
    events = []

    class Recorder(Resource):
        def __init__(self, name):
            async def start():
                events.append(("start", name))

            async def stop(seconds_left):
                events.append(("stop", name))
            super().__init__(name, start, stop)

        def signal(self):
            events.append(("signal", self.name))

    async def scenario():
        jobs = Jobs(Recorder("a"), Recorder("b"), Recorder("c"))
        await jobs.start()
        assert await jobs.stop(timeout=5) == []

    run(scenario())
    assert events == [("start", "a"), ("start", "b"), ("start", "c"),
                      ("signal", "c"), ("signal", "b"), ("signal", "a"),
                      ("stop", "c"), ("stop", "b"), ("stop", "a")]


def test_a_start_up_failure_stops_what_was_started():
    stopped = []

    async def broken():
        raise RuntimeError("cannot start")

    async def scenario():
        first = Periodic("first", 10, lambda: None)
        jobs = Jobs(first, Resource("noted", _noop, lambda left: _record(stopped, "noted")), OneShot("broken", broken),
                    Periodic("never", 10, lambda: None))
        with pytest.raises(RuntimeError, match="cannot start"):
            await jobs.start()
        assert first.alive() == [] and stopped == ["noted"]

    run(scenario())


async def _noop():
    return None


async def _record(into: list, name: str):
    into.append(name)


def test_names_are_unique():
    with pytest.raises(ValueError):
        Jobs(Periodic("same", 1, lambda: None), Periodic("same", 1, lambda: None))


SERVE_AND_STOP = textwrap.dedent('''
    import asyncio, sys, threading
    from pathlib import Path
    from server import logs
    from server.app import serve
    from server.settings import Settings

    logs.configure("info")

    data = Path(sys.argv[1])
    settings = Settings.from_env(data_dir=data, grpc_address=f"unix:{data}/grpc.sock")
    before = {t.ident for t in threading.enumerate()}

    async def main():
        ready, stop = asyncio.Event(), asyncio.Event()
        served = asyncio.create_task(serve(settings, ready, stop))
        await asyncio.wait_for(ready.wait(), 120)
        await asyncio.sleep(1.0)  # every job has run a round
        stop.set()
        await served
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        print("TASKS", sorted(t.get_name() for t in others))

    asyncio.run(main())
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    print("THREADS", sorted(left))
''')


def test_a_stopped_service_leaves_no_task_or_thread_behind(runtime_images):
    data = tempfile.mkdtemp(prefix="fs-jobs-")
    done = subprocess.run([sys.executable, "-c", SERVE_AND_STOP, data], cwd=REPO, capture_output=True, text=True,
                          timeout=180, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "FUNCTIONS_BUILD_NETWORK": "none"})
    assert done.returncode == 0, done.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("TASKS", "THREADS")))
    assert lines["TASKS"] == "[]", done.stderr[-4000:]
    assert lines["THREADS"] == "[]", done.stderr[-4000:]
    assert "background work still running after stop" not in done.stderr
    messages = [json.loads(line)["message"] for line in done.stderr.splitlines() if line.startswith("{")]
    assert "container pool started" in messages and "container pool stopped" in messages, messages
    assert messages[-1] == "stopped"
