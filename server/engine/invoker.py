"""The service's side of the runtime protocol (runtimes/*/server.*):
newline-delimited JSON over the UNIX socket in a container's own host
directory. One request in flight at a time; a request is bounded by an
asyncio timeout on the wait itself (no polling), so a stuck function is
noticed the moment its time is up.

Every request carries a fresh, unguessable `id` and its reply must echo it.
A reply with another id (or none), more than one reply, or any byte arriving
while no request is in flight means the runtime is compromised (F1: user
code that wrote to the socket, a forked runtime answering twice):
RuntimeCompromised, and `at_eof()` turns True so an idle container is never
reused. The connection is a small asyncio.Protocol, so unsolicited bytes are
noticed the moment they arrive, not at the next request.

Where the socket is, and what runs the runtime server, is the drivers' part
(server/engine/drivers/).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable

from server.limits import OUTPUT_TAIL

log = logging.getLogger(__name__)

# What a function may answer (FUNCTIONS_RESPONSE_MAX_BYTES), in UTF-8 bytes of the body.
DEFAULT_RESPONSE_MAX_BYTES = 1048576


def reply_limit(response_max_bytes: int) -> int:
    """The longest legal reply line: JSON escaping grows a body up to 6x
    (a control character becomes \\u00XX), and three output fields of at most
    OUTPUT_TAIL characters (each up to 6 bytes escaped), plus the keys."""
    return 6 * max(int(response_max_bytes), 0) + 3 * 6 * OUTPUT_TAIL + 64 * 1024


MAX_REPLY_BYTES = reply_limit(DEFAULT_RESPONSE_MAX_BYTES)


class RuntimeGone(Exception):
    """The connection closed: the runtime server (or its container) died."""


class ProtocolError(Exception):
    """The runtime answered something that is not a protocol reply."""


class RuntimeCompromised(ProtocolError):
    """The runtime answered out of turn (wrong or missing id, unsolicited bytes): never reuse it."""


@dataclass(frozen=True)
class InvocationResult:
    status_code: int
    body: str
    logs: str
    errors: str
    error: str
    duration: float  # seconds, wall clock of the whole invocation (waiting, starting, loading, running)
    timed_out: bool = False
    out_of_memory: bool = False
    # The service cut it off, not the function: the runtime would not start,
    # its container was removed or died without the function's doing (not
    # out of memory). Async executions run again (FUNCTIONS_ASYNC_RETRIES).
    service_fault: bool = False


_counter = itertools.count(1)
_prefix = os.urandom(4).hex()


def new_request_id() -> str:
    """Unique in this process and unguessable by the runtime: a counter and 64 random bits."""
    return f"{next(_counter):x}.{_prefix}{os.urandom(8).hex()}"


class _Protocol(asyncio.Protocol):
    __slots__ = ("conn",)

    def __init__(self, conn: "RuntimeConnection"):
        self.conn = conn

    def connection_made(self, transport):
        self.conn._transport = transport

    def data_received(self, data: bytes) -> None:
        self.conn._data(data)

    def eof_received(self):
        self.conn._gone("the runtime closed the connection")
        return False  # close the transport

    def connection_lost(self, exc):
        self.conn._gone(f"the runtime closed the connection{f': {exc}' if exc else ''}")


class RuntimeConnection:
    """A connection to one runtime server; not safe for concurrent requests."""

    def __init__(self):
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future | None = None
        self._buf = bytearray()
        self._max = MAX_REPLY_BYTES
        self._closed = False  # EOF, closed, or no longer trustworthy
        self.compromised: str | None = None  # why, once it is
        self._request_id = ""
        # While a live execution is in flight: called with (stream, lines) for
        # each output frame the runtime sends before its reply.
        self._on_output: Callable[[str, list[str]], None] | None = None

    @classmethod
    async def open(cls, path: str) -> "RuntimeConnection":
        conn = cls()
        await asyncio.get_running_loop().create_unix_connection(lambda: _Protocol(conn), path)
        return conn

    # -- protocol callbacks ------------------------------------------------------

    def _data(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._compromise("the runtime sent bytes while no request was in flight")
            return
        nl = data.find(b"\n")
        if nl < 0:
            self._buf += data
            if len(self._buf) > self._max:
                self._fail(ProtocolError(f"reply longer than {self._max} bytes"))
            return
        live = self._on_output is not None
        if nl == len(data) - 1 and (not live or not self._buf and b'"type":"output"' not in data):  # one reply: the common case
            if self._buf:
                self._buf += data
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = data
            if len(line) > self._max:
                self._fail(ProtocolError(f"reply longer than {self._max} bytes"))
                return
            waiter.set_result(line)
            return
        self._buf += data
        *lines, rest = bytes(self._buf).split(b"\n")
        self._buf = bytearray(rest)
        for index, line in enumerate(lines):
            if len(line) > self._max:
                self._fail(ProtocolError(f"reply longer than {self._max} bytes"))
                return
            # Frames are flat objects of compact JSON: this key can only be
            # theirs (inside a reply's strings the quotes are escaped).
            if self._on_output is not None and b'"type":"output"' in line:
                if not self._output_frame(line):
                    return
                continue
            if index != len(lines) - 1 or rest:
                self._compromise("the runtime sent more than one reply to one request")
                return
            waiter.set_result(line)
        if len(self._buf) > self._max:
            self._fail(ProtocolError(f"reply longer than {self._max} bytes"))

    def _output_frame(self, line: bytes) -> bool:
        """A live output frame of the request in flight: to `on_output`. False
        (and the connection failed) if it is not one."""
        try:
            frame = json.loads(line)
        except ValueError:
            self._fail(ProtocolError("garbled output frame"))
            return False
        if not isinstance(frame, dict) or frame.get("id") != self._request_id or frame.get("type") != "output":
            self._compromise("an output frame of another request")
            return False
        lines, stream = frame.get("lines"), frame.get("stream")
        if stream not in ("stdout", "stderr") or not isinstance(lines, list):
            self._fail(ProtocolError("malformed output frame"))
            return False
        try:
            self._on_output(stream, [text for text in lines if isinstance(text, str)])
        except Exception:  # a subscriber's trouble never fails the execution
            log.exception("live output handler failed")
        return True

    def _gone(self, reason: str) -> None:
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(RuntimeGone(reason))

    def _fail(self, exc: Exception) -> None:
        """The connection cannot be used any more: fail the pending request, close."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    def _compromise(self, reason: str) -> None:
        if self.compromised is None:
            self.compromised = reason
        self._fail(RuntimeCompromised(f"the runtime is compromised: {reason}; the container is discarded"))

    # -- requests ----------------------------------------------------------------

    def at_eof(self) -> bool:
        """True once the peer closed, or the connection can no longer be trusted
        (unsolicited bytes, a wrong reply id, a timeout, a reply saying the
        runtime is closing). Seen without any I/O: the loop noticed it."""
        return self._closed or self._transport is None or self._transport.is_closing()

    async def request(self, message: dict, timeout: float | None) -> dict:
        """Send one message (with a fresh id) and return its reply.

        Raises TimeoutError past `timeout` seconds (the connection is then
        unusable), RuntimeGone on EOF, ProtocolError on a garbled reply and
        RuntimeCompromised on a reply out of turn.
        """
        if self.compromised is not None:
            raise RuntimeCompromised(f"the runtime is compromised: {self.compromised}; the container is discarded")
        if self.at_eof():
            raise RuntimeGone("the runtime closed the connection")
        if self._waiter is not None and not self._waiter.done():
            raise RuntimeError("a request is already in flight on this connection")
        request_id = self._request_id = new_request_id()
        line = json.dumps({"id": request_id, **message}, separators=(",", ":")).encode() + b"\n"
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            self._transport.write(line)
            async with asyncio.timeout(timeout):
                raw = await waiter
        except TimeoutError:
            self._fail(RuntimeGone("timed out"))  # a late reply must never reach the next caller
            raise
        except asyncio.CancelledError:
            self._fail(RuntimeGone("cancelled"))
            raise
        except (ConnectionError, BrokenPipeError) as exc:
            self._closed = True
            raise RuntimeGone(str(exc) or type(exc).__name__) from exc
        finally:
            self._waiter = None
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            self._fail(ProtocolError("garbled reply"))
            raise ProtocolError(f"reply is not JSON: {raw[:200]!r}") from exc
        if not isinstance(reply, dict):
            self._fail(ProtocolError("garbled reply"))
            raise ProtocolError(f"reply is not an object: {raw[:200]!r}")
        if reply.get("id") != request_id:
            got = reply.get("id")
            self._compromise(f"a reply for request {str(got)[:40]!r} arrived for request {request_id!r}"
                             if got is not None else "a reply without a request id")
            raise RuntimeCompromised(f"the runtime is compromised: {self.compromised}; the container is discarded")
        if reply.get("closing") is True:  # answered, and exiting: never reuse it
            self._closed = True
        return reply

    async def ping(self, timeout: float) -> None:
        reply = await self.request({"type": "ping"}, timeout)
        if reply.get("ok") is not True:
            raise ProtocolError(f"ping failed: {reply}")

    async def load(self, code_dir: str, entrypoint: str, timeout: float | None,
                   response_max_bytes: int = DEFAULT_RESPONSE_MAX_BYTES) -> str | None:
        """Load the code; None when it loaded, else the runtime's error text.

        `response_max_bytes` bounds the bodies of this runtime's executions
        (the runtime fails a longer one); the reply limit follows from it."""
        self._max = max(self._max, reply_limit(response_max_bytes))
        reply = await self.request({"type": "load", "codeDir": code_dir, "entrypoint": entrypoint,
                                    "responseMaxBytes": int(response_max_bytes)}, timeout)
        if reply.get("ok") is True:
            self._max = reply_limit(response_max_bytes)
            return None
        return str(reply.get("error") or f"load failed: {reply}")

    async def execute(self, payload: str, env: dict, headers: dict, timeout: float | None,
                      on_output: Callable[[str, list[str]], None] | None = None) -> dict:
        """Raw execute reply: statusCode, body, logs, errors, error. With
        `on_output`, the runtime streams what the function prints while it
        runs ("live"): `on_output(stream, lines)` is called on the event loop
        for each frame, before the reply."""
        if on_output is None:
            return await self.request({"type": "execute", "payload": payload, "env": env, "headers": headers}, timeout)
        self._on_output = on_output
        try:
            return await self.request({"type": "execute", "payload": payload, "env": env, "headers": headers,
                                       "live": True}, timeout)
        finally:
            self._on_output = None

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()


def result_from_reply(reply: dict, duration: float) -> InvocationResult:
    """An execute reply as a result; a malformed one counts as a failed execution."""
    status = reply.get("statusCode")
    if not isinstance(status, int) or isinstance(status, bool):
        shown = {k: v for k, v in reply.items() if k != "id"}
        error = reply.get("error") or f"invalid reply from the runtime: {json.dumps(shown)[:500]}"
        return InvocationResult(500, "", _text(reply.get("logs")), _text(reply.get("errors")), _text(error), duration)
    return InvocationResult(
        status_code=status,
        body=_text(reply.get("body")),
        logs=_text(reply.get("logs")),
        errors=_text(reply.get("errors")),
        error=_text(reply.get("error")),
        duration=duration,
    )


def _text(value) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value)
