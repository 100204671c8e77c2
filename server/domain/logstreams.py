"""Following a log: replay, then live lines, then the end (async generators).

A stream subscribes to the hub first (so nothing printed from then on is
missed), replays the stored lines, then the hub's recent ones, and then
takes what the hub delivers. A run on another replica reaches the hub of
that replica only: then the stream reads the stored lines and the status
again every REMOTE_POLL seconds. `seq` orders and de-duplicates lines from
all three places. Every stream ends with an `End` (a client over HTTP/1.1
cannot see gRPC trailers) and sends a heartbeat when quiet for HEARTBEAT s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from server.concurrency import Blocking
from server.domain import livelogs
from server.domain.livelogs import End, Line, LogHub
from server.store.lifecycles import BuildStatus, ExecutionStatus
from server.store.models import Build, Execution, OutputLine

HEARTBEAT = 15.0  # seconds: proxies keep a stream that carries something this often
REMOTE_POLL = 0.25  # seconds between reads of a run on another replica
REPLAY_BATCH = 1000


@dataclass(frozen=True)
class Dropped:
    source: str
    count: int


@dataclass(frozen=True)
class Heartbeat:
    source: str = ""


Message = Line | End | Dropped | Heartbeat


def _stored(row: OutputLine) -> Line | Dropped:
    if row.stream == "dropped":
        return Dropped(row.source, int(row.text))
    return Line(row.source, row.seq, row.stream, row.text, row.time)


def execution_state(project: str, uid: str) -> tuple[End, bool]:
    """How the execution stands, and whether that is how it ended (blocking)."""
    ex = Execution.find(project, uid)
    if ex is None:
        return End(uid, ExecutionStatus.FAILED.value, 0, 0.0), True  # deleted meanwhile
    return End(uid, ex.status.value, ex.status_code, ex.time), ex.status in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED)


def build_state(project: str, deployment: str, build_uid: str) -> tuple[End, bool]:
    """How the build stands, and whether that is how it ended (blocking)."""
    build = Build.find(project, build_uid)
    if build is None:
        return End(deployment, BuildStatus.FAILED.value, 0, 0.0), True
    return End(deployment, build.status.value, 0, float(build.duration)), build.status in (BuildStatus.READY, BuildStatus.FAILED)


class LogStreams:
    def __init__(self, hub: LogHub, blocking: Blocking):
        self.hub = hub
        self.blocking = blocking

    async def follow(self, project: str, source: str, since: int, follow: bool,
                     state: Callable[[], Awaitable[tuple[End, bool]]]) -> AsyncIterator[Message]:
        """One run's log (an execution's or a build's); `state` reads how the run stands."""
        subscriber = self.hub.subscribe(project, source)
        recent = self.hub.recent(project, source)
        try:
            last = since
            async for row in self._stored_after(project, source, last):
                yield _stored(row)
                last = row.seq
            for line in recent:
                if line.seq > last:
                    yield line
                    last = line.seq
            end, done = await state()
            if done or not follow:
                async for row in self._stored_after(project, source, last):
                    yield _stored(row)  # stored between the replay and the look at the status
                yield end
                return
            quiet = time.monotonic()
            while True:
                local = self.hub.running(project, source)
                items, dropped = await subscriber.take(HEARTBEAT if local else REMOTE_POLL)
                if dropped:
                    yield Dropped(source, dropped)
                for item in items:
                    if isinstance(item, End):
                        yield item
                        return
                    if item.seq > last:
                        yield item
                        last = item.seq
                if items or dropped:
                    quiet = time.monotonic()
                    continue
                if not local:  # running elsewhere, or not started yet
                    async for row in self._stored_after(project, source, last):
                        yield _stored(row)
                        last = row.seq
                        quiet = time.monotonic()
                    end, done = await state()
                    if done and not self.hub.running(project, source):
                        async for row in self._stored_after(project, source, last):
                            yield _stored(row)
                        yield end
                        return
                if time.monotonic() - quiet >= HEARTBEAT:
                    yield Heartbeat(source)
                    quiet = time.monotonic()
        finally:
            self.hub.unsubscribe(subscriber)

    async def _stored_after(self, project: str, source: str, after: int) -> AsyncIterator[OutputLine]:
        """Every stored line after `after`, read in batches."""
        while True:
            rows = await self.blocking(livelogs.stored_lines, project, source, after, REPLAY_BATCH)
            for row in rows:
                yield row
            if len(rows) < REPLAY_BATCH:
                return
            after = rows[-1].seq

    async def tail(self, project: str, function: str) -> AsyncIterator[Message]:
        """Every execution of `function` that prints while the stream is open
        (any replica), and the end of each that ends on this one. Never ends."""
        subscriber = self.hub.subscribe_function(project, function)
        try:
            cursor = await self.blocking(livelogs.last_line_id)
            last: dict[str, int] = {}
            quiet = time.monotonic()
            while True:
                items, dropped = await subscriber.take(REMOTE_POLL)
                if dropped:
                    yield Dropped("", dropped)
                for item in items:
                    if isinstance(item, End):
                        yield item
                    elif item.seq > last.get(item.source, 0):
                        yield item
                        last[item.source] = item.seq
                rows = await self.blocking(livelogs.lines_of_function, project, function, cursor)
                for row in rows:
                    cursor = row.id
                    if row.stream == "dropped" or row.seq > last.get(row.source, 0):
                        yield _stored(row)
                        last[row.source] = row.seq
                if items or dropped or rows:
                    quiet = time.monotonic()
                elif time.monotonic() - quiet >= HEARTBEAT:
                    yield Heartbeat()
                    quiet = time.monotonic()
        finally:
            self.hub.unsubscribe(subscriber)
