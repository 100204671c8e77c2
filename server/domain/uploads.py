"""Receiving code uploads as streams: multipart/form-data from REST (through
Envoy) or a raw tar.gz from gRPC clients, and Appwrite's chunk protocol.

The file goes straight to disk, hashed and measured on the way; nothing holds
the whole upload in memory. A chunk is written at its own offset, so a re-sent
or out-of-order chunk cannot corrupt the file.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import BaseTarget, ValueTarget

from server.domain.errors import ApiError, bad_request, file_too_large, invalid_argument, invalid_content_range

_RANGE = re.compile(r"^\s*([A-Za-z]+)\s+(\d+)-(\d+)/(\d+)\s*$")
MAX_FIELD_BYTES = 4096


@dataclass(frozen=True)
class ContentRange:
    """`Content-Range: bytes start-end/size` as Appwrite clients send it.

    Clients mark the last chunk with end == size (one past the last byte);
    a range ending at size - 1 is complete too.
    """

    start: int
    end: int  # exclusive
    size: int

    @classmethod
    def parse(cls, header: str) -> "ContentRange":
        match = _RANGE.match(header)
        if not match or match[1].lower() != "bytes":
            raise invalid_content_range()
        start, end, size = int(match[2]), int(match[3]), int(match[4])
        if not start <= end <= size or size == 0 or start >= size:
            raise invalid_content_range()
        return cls(start=start, end=min(end, size - 1) + 1, size=size)

    @property
    def length(self) -> int:
        return self.end - self.start


class FileSink:
    """Writes a byte stream into a file at an offset, hashing and counting it."""

    def __init__(self, path: Path, offset: int, limit: int, mode_new: bool, overflow: ApiError | None = None,
                 received: list[list[int]] | tuple = ()):
        flags = (os.O_RDWR if received else os.O_WRONLY) | os.O_CREAT | (os.O_TRUNC if mode_new else 0)
        self.fd = os.open(path, flags, 0o600)
        # [start, end) ranges of the file that earlier chunks wrote: bytes sent
        # again there must be the same, and are compared instead of written.
        self.received = [tuple(r) for r in received]
        self.path = path
        self.position = offset
        self.count = 0  # bytes of this request so far
        self.limit = limit
        self.overflow = overflow or file_too_large(limit)  # what passing the limit answers
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> None:
        if self.count + len(data) > self.limit:
            raise self.overflow
        if self.received:
            self._write_checked(data)
        else:
            os.pwrite(self.fd, data, self.position)
        self.position += len(data)
        self.count += len(data)
        self.sha256.update(data)

    def _write_checked(self, data: bytes) -> None:
        """Bytes inside earlier ranges must match what is there; others are written."""
        start, end = self.position, self.position + len(data)
        cuts = sorted({start, end, *(b for r in self.received for b in r if start < b < end)})
        for lo, hi in zip(cuts, cuts[1:]):
            piece = data[lo - start:hi - start]
            if any(a <= lo and hi <= b for a, b in self.received):
                if os.pread(self.fd, hi - lo, lo) != piece:
                    raise invalid_content_range(
                        f"The chunk overlaps bytes {lo}-{hi - 1} of earlier chunks with different content.")
            else:
                os.pwrite(self.fd, piece, lo)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _FileTarget(BaseTarget):
    def __init__(self, sink_factory):
        super().__init__()
        self._sink_factory = sink_factory
        self.sink: FileSink | None = None

    def on_start(self):
        self.sink = self._sink_factory()

    def on_data_received(self, chunk: bytes):
        self.sink.write(chunk)


class _BoundedValue(ValueTarget):
    present = False

    def on_start(self):
        self.present = True

    def on_data_received(self, chunk: bytes):
        if len(self.value) + len(chunk) > MAX_FIELD_BYTES:
            raise bad_request("A form field is too long.")
        super().on_data_received(chunk)


@dataclass
class ReceivedUpload:
    fields: dict[str, str]
    sink: FileSink | None


class UploadReader:
    """Feeds the pieces of one request body into a file sink.

    `content_type` multipart/form-data: fields `entrypoint`, `activate` and
    file `code`, in any order. Anything else: the body is the raw archive.
    """

    def __init__(self, content_type: str, sink_factory):
        self.multipart = content_type.lower().startswith("multipart/form-data")
        self._sink_factory = sink_factory
        self._raw_sink: FileSink | None = None
        if self.multipart:
            self._parser = StreamingFormDataParser(headers={"Content-Type": content_type})
            self._values = {name: _BoundedValue() for name in ("entrypoint", "activate")}
            for name, target in self._values.items():
                self._parser.register(name, target)
            self._file = _FileTarget(sink_factory)
            self._parser.register("code", self._file)

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self.multipart:
            try:
                self._parser.data_received(data)
            except ApiError:
                raise
            except Exception as error:  # the parser's own errors: malformed multipart
                cause = error.__cause__ or error.__context__
                if isinstance(cause, ApiError):
                    raise cause from None
                raise bad_request(f"Malformed multipart/form-data body: {error}") from None
        else:
            if self._raw_sink is None:
                self._raw_sink = self._sink_factory()
            self._raw_sink.write(data)

    def finish(self) -> ReceivedUpload:
        if not self.multipart:
            return ReceivedUpload(fields={}, sink=self._raw_sink)
        fields = {name: target.value.decode("utf-8", "replace") for name, target in self._values.items() if target.present}
        return ReceivedUpload(fields=fields, sink=self._file.sink)

    def close(self) -> None:
        sink = self._file.sink if self.multipart else self._raw_sink
        if sink is not None:
            sink.close()


def parse_bool(name: str, value: str) -> bool:
    """Appwrite's loose boolean, case-insensitive (the Python SDK sends `True`)."""
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0", ""):
        return False
    raise invalid_argument(name, "Value must be a valid boolean")
