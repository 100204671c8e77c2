"""Sizes every layer agrees on: the runtimes cut output to them, the
builder keeps that much, the records store that much."""

# Characters kept of an execution's logs, errors and error message, and of a build's stdout/stderr (the tail).
OUTPUT_TAIL = 16_384
