"""Streaming JSON items out of API dumps, with the line each item starts on.

A dump file may hold, one after another (JSON Lines included): OOAPI collection pages
`{"pageSize": …, "items": [ … ]}`, plain arrays `[ {…}, {…} ]`, or single objects. Items are
decoded one at a time from a sliding buffer (`json.JSONDecoder.raw_decode`), so a page of a
million associations never sits in memory whole: memory is bounded by the largest single item
(`max_item_chars`). The standard library has no streaming JSON parser; this is the small part of
one that dumps need.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, TextIO

_DECODER = json.JSONDecoder()
WHITESPACE = " \t\r\n"


class JsonStreamError(ValueError):
    """The text is not JSON (or not a shape a dump has); `line` is where reading stopped."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.message = message
        self.line = line


class _Stream:
    def __init__(self, handle: TextIO, chunk: int, max_item_chars: int) -> None:
        self.handle = handle
        self.chunk = chunk
        self.max_item_chars = max_item_chars
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.eof = False

    def fill(self) -> bool:
        if self.eof:
            return False
        data = self.handle.read(self.chunk)
        if not data:
            self.eof = True
            return False
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        return True

    def peek(self) -> str | None:
        """The next character that is not white space (not consumed), None at the end."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in WHITESPACE:
                if self.buf[self.pos] == "\n":
                    self.line += 1
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return None

    def expect(self, allowed: str) -> str:
        found = self.peek()
        if found is None or found not in allowed:
            shown = "the end of the file" if found is None else repr(found)
            raise JsonStreamError(f"expected one of {' '.join(allowed)} but found {shown}", self.line)
        self.pos += 1
        return found

    def value(self) -> Any:
        if self.peek() is None:
            raise JsonStreamError("unexpected end of the file", self.line)
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if len(self.buf) - self.pos > self.max_item_chars:
                    raise JsonStreamError(f"an item larger than {self.max_item_chars} characters", self.line) from None
                if self.fill():
                    continue
                line = self.line + self.buf.count("\n", self.pos, exc.pos)
                raise JsonStreamError(exc.msg, line) from None
            if end >= len(self.buf) and self.fill():
                continue  # a number at the end of the buffer may go on in the next chunk
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            return value


def _array(stream: _Stream) -> Iterator[tuple[int, Any]]:
    stream.expect("[")
    if stream.peek() == "]":
        stream.pos += 1
        return
    while True:
        stream.peek()
        line = stream.line
        yield line, stream.value()
        if stream.expect(",]") == "]":
            return


def _object(stream: _Stream) -> Iterator[tuple[int, Any]]:
    """A collection page streams its `items`; any other object is one item."""
    start = stream.line
    stream.expect("{")
    fields: dict[str, Any] = {}
    paged = False
    if stream.peek() == "}":
        stream.pos += 1
        yield start, fields
        return
    while True:
        if stream.peek() != '"':
            raise JsonStreamError("expected a quoted key", stream.line)
        key = stream.value()
        stream.expect(":")
        if key == "items" and stream.peek() == "[":
            paged = True
            yield from _array(stream)
        else:
            fields[key] = stream.value()
        if stream.expect(",}") == "}":
            break
    if not paged:
        yield start, fields


def iter_items(handle: TextIO, *, chunk: int = 1 << 16, max_item_chars: int = 16 << 20) -> Iterator[tuple[int, Any]]:
    """(line, item) for every item in the dump; raises JsonStreamError where the text goes wrong."""
    stream = _Stream(handle, chunk, max_item_chars)
    seen = False
    while (found := stream.peek()) is not None:
        seen = True
        if found == "[":
            yield from _array(stream)
        elif found == "{":
            yield from _object(stream)
        else:
            raise JsonStreamError(f"expected an object or a list but found {found!r}", stream.line)
    if not seen:
        raise JsonStreamError("the file is empty", 1)
