"""Live logs: what executions and builds print, to subscribers as it comes.

One `LogHub` per replica, on its event loop. A run on this replica opens a
`Channel` (its execution's or build's uid is the source) and writes the
lines its runtime streams; each line gets the next `seq` and goes at once
to the channel's subscribers and to the function-wide tails, then, in
batches, to the OutputLine table (`take_unflushed`, the `log-flush` job),
which serves late subscribers (replay) and subscribers on other replicas.

A subscriber never slows a function or another subscriber: it has a
bounded buffer (`SUBSCRIBER_BUFFER` messages); lines that do not fit are
dropped and counted, and the subscriber is told how many (a `dropped`
message) before the next line it gets. Nobody listening costs a dictionary
lookup per frame and the batched insert.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import peewee as pw

from server.store.models import OutputLine
from server.store.notify import notify

SUBSCRIBER_BUFFER = 1000  # messages a subscriber may have waiting
RECENT_LINES = 2000  # a channel's latest lines kept in memory (stored batches come every 0.1 s)
MAX_STORED_CHARS = 4 * 1024 * 1024  # per source: later lines are streamed live, not kept


@dataclass(frozen=True)
class Line:
    source: str
    seq: int
    stream: str
    text: str
    time_ms: int


@dataclass(frozen=True)
class End:
    """The run ended (after its last line): how."""

    source: str
    status: str
    status_code: int
    time: float


Message = Line | End


class Subscriber:
    """A bounded queue of messages for one stream."""

    def __init__(self, limit: int = SUBSCRIBER_BUFFER):
        self.limit = limit
        self.key: tuple[str, str] = ("", "")  # what it follows: (project, source) or (project, function)
        self._items: collections.deque[Message] = collections.deque()
        self._ready = asyncio.Event()
        self._woken = False
        self.dropped = 0  # lines that did not fit since the last take

    def wake(self) -> None:
        """Something changed elsewhere (another replica stored lines): `take` returns now."""
        self._woken = True
        self._ready.set()

    def offer(self, message: Message) -> None:
        if isinstance(message, Line) and len(self._items) >= self.limit:
            self.dropped += 1
        else:
            self._items.append(message)
        self._ready.set()

    async def take(self, timeout: float) -> tuple[list[Message], int]:
        """What is waiting (and how many lines were dropped before it), after
        at most `timeout` seconds; ([], 0) if nothing came."""
        if not self._items and not self.dropped and not self._woken:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return [], 0
        self._woken = False
        items, dropped = list(self._items), self.dropped
        self._items.clear()
        self.dropped = 0
        return items, dropped


@dataclass
class Channel:
    """One run's output on this replica."""

    hub: "LogHub"
    project: str
    function: str
    source: str
    next_seq: int = 1
    stored_chars: int = 0
    not_stored: int = 0
    unflushed: list[dict] = field(default_factory=list)
    ended: bool = False
    written: bool = False  # the runtime streamed something
    # The latest lines, for a subscriber that joins mid-run: together with
    # the stored ones they leave no gap, even while a batch is being stored.
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT_LINES))

    def write(self, stream: str, lines: list[str]) -> None:
        self.written = True
        now = int(time.time() * 1000)
        listeners = self.hub._listeners(self.project, self.function, self.source)
        for text in lines:
            line = Line(self.source, self.next_seq, stream, text, now)
            self.next_seq += 1
            self.recent.append(line)
            if self.stored_chars + len(text) <= MAX_STORED_CHARS:
                self.stored_chars += len(text)
                self.unflushed.append(dict(project=self.project, function=self.function, source=self.source,
                                           seq=line.seq, stream=stream, text=text, time=now))
            else:
                self.not_stored += 1
            for subscriber in listeners:
                subscriber.offer(line)

    def take_unflushed(self) -> list[dict]:
        rows, self.unflushed = self.unflushed, []
        if self.ended and self.not_stored:  # the stored log says what it lacks
            rows.append(dict(project=self.project, function=self.function, source=self.source, seq=self.next_seq,
                             stream="dropped", text=str(self.not_stored), time=int(time.time() * 1000)))
            self.next_seq += 1
            self.not_stored = 0
        return rows

    def end(self, status: str, status_code: int, duration: float) -> None:
        """After its lines are stored: tell the subscribers, close the channel."""
        self.ended = True
        message = End(self.source, status, status_code, duration)
        for subscriber in self.hub._listeners(self.project, self.function, self.source):
            subscriber.offer(message)
        self.hub._close(self)


class LogHub:
    def __init__(self):
        self._channels: dict[tuple[str, str], Channel] = {}
        self._by_source: dict[tuple[str, str], set[Subscriber]] = collections.defaultdict(set)
        self._by_function: dict[tuple[str, str], set[Subscriber]] = collections.defaultdict(set)
        self._closing: list[Channel] = []  # ended, lines not all stored yet

    # ---- runs ------------------------------------------------------------------

    def open(self, project: str, function: str, source: str, first_seq: int = 1) -> Channel:
        channel = Channel(self, project, function, source, next_seq=first_seq)
        self._channels[(project, source)] = channel
        return channel

    def running(self, project: str, source: str) -> bool:
        return (project, source) in self._channels

    def recent(self, project: str, source: str) -> list[Line]:
        channel = self._channels.get((project, source))
        return list(channel.recent) if channel is not None else []

    def take_unflushed(self) -> list[dict]:
        """Every line not stored yet, of every channel (for one batched insert)."""
        rows: list[dict] = []
        for channel in list(self._channels.values()) + self._closing:
            rows += channel.take_unflushed()
        self._closing = []
        return rows

    def discard(self, channel: Channel) -> None:
        """Close a channel without an end (its run goes on elsewhere, or never was)."""
        self._close(channel)

    def _close(self, channel: Channel) -> None:
        if self._channels.get((channel.project, channel.source)) is channel:
            del self._channels[(channel.project, channel.source)]
        if channel.unflushed or channel.not_stored:
            self._closing.append(channel)

    def _listeners(self, project: str, function: str, source: str) -> list[Subscriber]:
        found = self._by_source.get((project, source))
        tails = self._by_function.get((project, function))
        if not found and not tails:
            return []
        return [*(found or ()), *(tails or ())]

    # ---- subscribers ---------------------------------------------------------------

    def wake(self, payload: str) -> None:
        """Another replica stored lines of `<project>/<function>/<source>`."""
        project, _, rest = payload.partition("/")
        function, _, source = rest.partition("/")
        for subscriber in self._listeners(project, function, source):
            subscriber.wake()

    def subscribe(self, project: str, source: str) -> Subscriber:
        return self._add(self._by_source, (project, source))

    def subscribe_function(self, project: str, function: str) -> Subscriber:
        return self._add(self._by_function, (project, function))

    def _add(self, index: dict[tuple[str, str], set[Subscriber]], key: tuple[str, str]) -> Subscriber:
        subscriber = Subscriber()
        subscriber.key = key
        index[key].add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        for index in (self._by_source, self._by_function):
            followers = index.get(subscriber.key)
            if followers is not None and subscriber in followers:
                followers.discard(subscriber)
                if not followers:
                    del index[subscriber.key]


NOTIFY_CHANNEL = "output_line"


def store_lines(rows: list[dict]) -> None:
    """One batched insert (blocking; inside the batch writer's transaction),
    and a wake-up for the other replicas' subscribers (PostgreSQL)."""
    for start in range(0, len(rows), 500):
        OutputLine.insert_many(rows[start:start + 500]).on_conflict_ignore().execute()
    for project, function, source in sorted({(r["project"], r["function"], r["source"]) for r in rows}):
        notify(NOTIFY_CHANNEL, f"{project}/{function}/{source}")


def stored_lines(project: str, source: str, after_seq: int, limit: int = 1000) -> list[OutputLine]:
    return list(OutputLine.select().where((OutputLine.project == project) & (OutputLine.source == source)
                                          & (OutputLine.seq > after_seq)).order_by(OutputLine.seq).limit(limit))


def last_stored_seq(project: str, source: str) -> int:
    """The highest stored `seq` of a log (0 when none): where a retried run goes on."""
    return OutputLine.select(pw.fn.MAX(OutputLine.seq)).where(
        (OutputLine.project == project) & (OutputLine.source == source)).scalar() or 0


def lines_of_function(project: str, function: str, after_id: int, limit: int = 1000) -> list[OutputLine]:
    return list(OutputLine.select().where((OutputLine.project == project) & (OutputLine.function == function)
                                          & (OutputLine.id > after_id)).order_by(OutputLine.id).limit(limit))


def last_line_id() -> int:
    row = OutputLine.select(OutputLine.id).order_by(OutputLine.id.desc()).first()
    return row.id if row else 0


def forget(project: str, *, function: str = "", source: str = "") -> None:
    """Drop the stored lines of a function or of one source (inside the caller's transaction)."""
    query = OutputLine.delete().where(OutputLine.project == project)
    query = query.where(OutputLine.function == function) if function else query.where(OutputLine.source == source)
    query.execute()


class ThreadedLog:
    """The hub from another thread (the build workers): channels whose
    writes and end are handed to the event loop."""

    def __init__(self, hub: LogHub, loop: asyncio.AbstractEventLoop, store: Callable[[list[dict]], Awaitable[None]]):
        self.hub, self.loop, self.store = hub, loop, store

    def open(self, project: str, function: str, source: str) -> "ThreadedChannel":
        async def opened() -> Channel:
            return self.hub.open(project, function, source)

        return ThreadedChannel(self, asyncio.run_coroutine_threadsafe(opened(), self.loop).result(timeout=10))


class ThreadedChannel:
    def __init__(self, log: ThreadedLog, channel: Channel):
        self._log, self._channel = log, channel

    def write(self, stream: str, lines: list[str]) -> None:
        self._log.loop.call_soon_threadsafe(self._channel.write, stream, lines)

    def flush(self, timeout: float = 30) -> None:
        """Store every line written so far (blocking): before the run's status
        says it ended, so that a subscriber that sees the end has them all."""
        async def flushed() -> None:
            await self._log.store(self._channel.take_unflushed())

        asyncio.run_coroutine_threadsafe(flushed(), self._log.loop).result(timeout=timeout)

    def end(self, status: str, status_code: int, duration: float) -> None:
        self._log.loop.call_soon_threadsafe(self._channel.end, status, status_code, duration)

    def discard(self) -> None:
        self._log.loop.call_soon_threadsafe(self._log.hub.discard, self._channel)
