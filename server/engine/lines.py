"""Bytes as they are read from a process's output, as lines of text."""

from __future__ import annotations

import codecs

MAX_LINE = 16384  # characters: longer lines are split (as the runtimes do)


class LineSplitter:
    """Incremental: bytes that are not UTF-8 are replaced (never an error); a
    line is its text without the newline; a line longer than MAX_LINE comes
    as pieces; `close` gives what is left of an unterminated last line."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        return self._split(self._partial + self._decoder.decode(data))

    def close(self) -> list[str]:
        rest = self._split(self._partial + self._decoder.decode(b"", True))
        if self._partial:
            rest.append(self._partial)
            self._partial = ""
        return rest

    def _split(self, text: str) -> list[str]:
        *lines, self._partial = text.split("\n")
        out = [piece for line in lines for piece in _pieces(line)]
        while len(self._partial) >= MAX_LINE:
            out.append(self._partial[:MAX_LINE])
            self._partial = self._partial[MAX_LINE:]
        return out


def _pieces(line: str) -> list[str]:
    if len(line) <= MAX_LINE:
        return [line]
    return [line[i:i + MAX_LINE] for i in range(0, len(line), MAX_LINE)]
