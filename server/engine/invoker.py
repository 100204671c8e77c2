"""The service's side of the runtime protocol (runtimes/*/server.*):
newline-delimited JSON over the UNIX socket in a container's own host
directory. One request in flight at a time; a request is bounded by an
asyncio timeout on the read itself (no polling), so a stuck function is
noticed the moment its time is up.

The Docker side of runtime containers is server/engine/docker_runtimes.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

# Replies carry body, logs, errors and error of at most 16384 characters each;
# JSON escaping can grow that several times. Anything longer is a broken runtime.
MAX_REPLY_BYTES = 4 * 1024 * 1024

SOCKET_NAME = "runtime.sock"


class RuntimeGone(Exception):
    """The connection closed: the runtime server (or its container) died."""


class ProtocolError(Exception):
    """The runtime answered something that is not a protocol reply."""


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


class RuntimeConnection:
    """A connection to one runtime server; not safe for concurrent requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, path: str) -> "RuntimeConnection":
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_REPLY_BYTES)
        return cls(reader, writer)

    def at_eof(self) -> bool:
        """True once the peer has closed (seen without any I/O: the loop noticed it)."""
        return self._reader.at_eof() or self._writer.is_closing()

    async def request(self, message: dict, timeout: float | None) -> dict:
        """Send one message and return its reply.

        Raises TimeoutError past `timeout` seconds (the connection is then
        unusable), RuntimeGone on EOF and ProtocolError on a garbled reply.
        """
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(line)
                await self._writer.drain()
                raw = await self._reader.readline()
        except (ConnectionError, BrokenPipeError) as exc:
            raise RuntimeGone(str(exc) or type(exc).__name__) from exc
        except ValueError as exc:  # the line exceeded MAX_REPLY_BYTES
            raise ProtocolError(f"reply longer than {MAX_REPLY_BYTES} bytes") from exc
        if not raw.endswith(b"\n"):
            raise RuntimeGone("the runtime closed the connection")
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise ProtocolError(f"reply is not JSON: {raw[:200]!r}") from exc
        if not isinstance(reply, dict):
            raise ProtocolError(f"reply is not an object: {raw[:200]!r}")
        return reply

    async def ping(self, timeout: float) -> None:
        reply = await self.request({"type": "ping"}, timeout)
        if reply.get("ok") is not True:
            raise ProtocolError(f"ping failed: {reply}")

    async def load(self, code_dir: str, entrypoint: str, timeout: float | None) -> str | None:
        """Load the code; None when it loaded, else the runtime's error text."""
        reply = await self.request({"type": "load", "codeDir": code_dir, "entrypoint": entrypoint}, timeout)
        if reply.get("ok") is True:
            return None
        return str(reply.get("error") or f"load failed: {reply}")

    async def execute(self, payload: str, env: dict, headers: dict, timeout: float | None) -> dict:
        """Raw execute reply: statusCode, body, logs, errors, error."""
        return await self.request({"type": "execute", "payload": payload, "env": env, "headers": headers}, timeout)

    def close(self) -> None:
        self._writer.close()


def result_from_reply(reply: dict, duration: float) -> InvocationResult:
    """An execute reply as a result; a malformed one counts as a failed execution."""
    status = reply.get("statusCode")
    if not isinstance(status, int) or isinstance(status, bool):
        error = reply.get("error") or f"invalid reply from the runtime: {json.dumps(reply)[:500]}"
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


