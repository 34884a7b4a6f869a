"""The conformance suite every mcsync adapter can run against its own sample export.

Subclass `AdapterConformance` in a test module (its name does not start with `Test`, so pytest
collects only your subclass) and say what to read:

    class TestCanvas(AdapterConformance):
        adapter = CanvasCsvAdapter          # the adapter class
        options = {"grade_column": "Final Grade"}   # options besides the path
        sample = FIXTURES / "canvas" / "2025-06-27T1405_Grades-MC-DATA01.csv"

`sample` is a file, or a folder for adapters that read folders (then set `stream_file`, the file
in it that is read row by row). The path goes into the option named `path_option` ("path").

What it checks (the contract in `mcsync.adapter`):

- **shape**: `name`, `kind`, a pydantic `Options` that forbids unknown keys and describes every
  field; `read()` returns an iterator and does no work before it is iterated;
- **sample**: reading it yields rows of the right kind (`RawResult` or `LearnerRow`), no exception,
  and no problem unless `sample_problems = True`; two reads give the same items;
- **provenance**: every item, problems included, names this source and a file that exists, with
  a line that is ≥ 1 and within the file;
- **streaming**: the sample's rows are repeated into a file of about a MiB that is fed through a
  named pipe (FIFO); the adapter must yield its first row while the second half has not been
  written yet: an adapter that reads the whole file first cannot pass. `header_lines` and
  `footer_lines` say which lines of the stream file are not rows (an XML root, say);
- **garbage**: binary junk, an empty file and a CSV with the wrong columns, put where the sample
  was (same file names), each give at least one clear `InputProblem` and no row, never an
  exception; so does a path that does not exist;
- **no network**: every read runs with sockets blocked; any attempt fails the test.

Override `garbage_input()` or `grow()` where a format needs it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import random
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ValidationError

from ..adapter import Adapter, AdapterContext, LearnerRow, RawResult
from ..errors import InputProblem

SOURCE = "conformance"
STREAM_PART_BYTES = 512 << 10       # each half of the streamed file (far beyond any read buffer)
FIRST_ROW_TIMEOUT = 20.0


class NetworkBlocked(RuntimeError):
    """Raised by a socket call while `block_network()` is active."""


@contextlib.contextmanager
def block_network() -> Iterator[list[str]]:
    """Make connects and name look-ups fail; yields the list of attempts (empty if none)."""
    attempts: list[str] = []

    def refuse(what: str):  # type: ignore[no-untyped-def]
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{what}{args[1:] if what.startswith('socket.') else args}")
            raise NetworkBlocked(f"network access during an adapter read: {what}")
        return refused

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo)
    socket.socket.connect = refuse("socket.connect")  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse("socket.connect_ex")  # type: ignore[method-assign]
    socket.create_connection = refuse("create_connection")  # type: ignore[assignment]
    socket.getaddrinfo = refuse("getaddrinfo")  # type: ignore[assignment]
    try:
        yield attempts
    finally:
        (socket.socket.connect, socket.socket.connect_ex,  # type: ignore[method-assign]
         socket.create_connection, socket.getaddrinfo) = saved  # type: ignore[assignment]


def _key(item: object) -> object:
    if isinstance(item, InputProblem):
        return ("problem", item.reason, item.location)
    if isinstance(item, BaseModel):
        return (type(item).__name__, item.model_dump())
    return ("other", repr(item))


def _described(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Fields (nested models included) without a description."""
    missing = []
    for name, field in model.model_fields.items():
        if not (field.description or "").strip():
            missing.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += _described(annotation, f"{prefix}{name}.")
    return missing


class AdapterConformance:
    """Mix into a `Test…` class; see the module docstring for what to set."""

    adapter: ClassVar[type[Any]]
    options: ClassVar[dict[str, Any]] = {}
    sample: ClassVar[Path | str]
    path_option: ClassVar[str] = "path"
    stream_file: ClassVar[str | None] = None
    header_lines: ClassVar[int] = 1
    footer_lines: ClassVar[int] = 0
    sample_problems: ClassVar[bool] = False
    first_row_timeout: ClassVar[float] = FIRST_ROW_TIMEOUT

    # -- helpers (overridable)
    @property
    def sample_path(self) -> Path:
        return Path(self.sample).resolve()

    def make_adapter(self, path: Path, **extra: Any) -> Any:
        options = {**self.options, **extra, self.path_option: str(path)}
        model = self.adapter.Options.model_validate(options)
        context = AdapterContext(source=SOURCE, base_dir=path.parent)
        return self.adapter(model, context)

    def read_all(self, path: Path) -> list[Any]:
        with block_network() as attempts:
            items = list(self.make_adapter(path).read())
        assert not attempts, f"{self.adapter.__name__} tried to reach the network: {attempts}"
        return items

    def rows(self, items: list[Any]) -> list[RawResult | LearnerRow]:
        return [item for item in items if isinstance(item, RawResult | LearnerRow)]

    def problems(self, items: list[Any]) -> list[InputProblem]:
        return [item for item in items if isinstance(item, InputProblem)]

    def stream_source(self) -> Path:
        if self.sample_path.is_dir():
            assert self.stream_file, "a folder sample needs stream_file: the file in it that is read row by row"
            return self.sample_path / self.stream_file
        return self.sample_path

    def grow(self, data: bytes) -> tuple[bytes, bytes]:
        """The streamed file in two halves of ≥ STREAM_PART_BYTES each: head + rows…, rows… + foot."""
        lines = data.splitlines(keepends=True)
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        end = len(lines) - self.footer_lines
        head, body, foot = lines[: self.header_lines], lines[self.header_lines:end], lines[end:]
        assert body, "the stream file has no rows between its header_lines and footer_lines"
        chunk = b"".join(body)
        copies = STREAM_PART_BYTES // len(chunk) + 1
        return b"".join(head) + chunk * copies, chunk * copies + b"".join(foot)

    def place(self, tmp_path: Path) -> tuple[Path, Path]:
        """A copy of the sample under tmp_path: (what to point the adapter at, the stream file in it)."""
        source = self.sample_path
        target = tmp_path / "input" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
            return target, target / (self.stream_file or "")
        shutil.copy2(source, target)
        return target, target

    def garbage_input(self, tmp_path: Path, content: bytes) -> Path:
        """The sample's place filled with `content` (every file of a folder sample)."""
        target, _ = self.place(tmp_path)
        if target.is_dir():
            for path in target.rglob("*"):
                if path.is_file():
                    path.write_bytes(content)
        else:
            target.write_bytes(content)
        return target

    # -- shape
    def test_declares_name_kind_and_options(self) -> None:
        adapter = self.adapter
        assert isinstance(getattr(adapter, "name", None), str) and adapter.name
        assert getattr(adapter, "kind", None) in ("results", "learners")
        assert isinstance(adapter.Options, type) and issubclass(adapter.Options, BaseModel)
        assert adapter.Options.model_config.get("extra") == "forbid", "Options must forbid unknown keys"
        undocumented = _described(adapter.Options)
        assert not undocumented, f"Options fields without a description (shown by `mcsync adapters`): {undocumented}"
        with pytest.raises(ValidationError):
            adapter.Options.model_validate({**self.options, self.path_option: "x", "no_such_option_42": 1})

    def test_is_an_adapter_and_read_is_lazy(self, tmp_path: Path) -> None:
        adapter = self.make_adapter(tmp_path / "does-not-exist" / self.sample_path.name)
        assert isinstance(adapter, Adapter)
        result = adapter.read()
        assert iter(result) is result, "read() must return an iterator (a generator), not a list"

    # -- the sample
    def test_reads_the_sample(self) -> None:
        items = self.read_all(self.sample_path)
        rows = self.rows(items)
        assert rows, f"the sample gave no rows; problems: {[str(p) for p in self.problems(items)]}"
        wanted = RawResult if self.adapter.kind == "results" else LearnerRow
        assert all(isinstance(row, wanted) for row in rows), f"kind {self.adapter.kind!r} yields {wanted.__name__}"
        others = [item for item in items if not isinstance(item, RawResult | LearnerRow | InputProblem)]
        assert not others, f"read() yielded something that is not a row or an InputProblem: {others[:3]}"
        if not self.sample_problems:
            assert not self.problems(items), [str(p) for p in self.problems(items)]

    def test_same_items_every_read(self) -> None:
        first = [_key(item) for item in self.read_all(self.sample_path)]
        second = [_key(item) for item in self.read_all(self.sample_path)]
        assert first == second

    def test_provenance_on_every_item(self) -> None:
        line_counts: dict[str, int] = {}
        for item in self.read_all(self.sample_path):
            location = item.location
            assert location.source == SOURCE
            path = Path(location.file)
            assert path.exists(), f"{item!r}: provenance names a file that does not exist: {location.file}"
            if isinstance(item, RawResult | LearnerRow):
                assert location.line is not None and location.line >= 1, f"{item!r} has no line"
            if location.line is not None:
                assert location.line >= 1
                if path.is_file():
                    if location.file not in line_counts:
                        line_counts[location.file] = path.read_bytes().count(b"\n") + 1
                    assert location.line <= line_counts[location.file], f"{location} is past the end of the file"

    # -- streaming
    def test_streams_first_row_before_the_file_ends(self, tmp_path: Path) -> None:
        if not hasattr(os, "mkfifo"):
            pytest.skip("named pipes need a POSIX system")
        first_half, second_half = self.grow(self.stream_source().read_bytes())
        target, stream_path = self.place(tmp_path)
        stream_path.unlink()
        os.mkfifo(stream_path)
        release = threading.Event()
        first_half_written = threading.Event()
        writer_error: list[BaseException] = []

        def write() -> None:
            deadline = time.monotonic() + self.first_row_timeout * 2
            descriptor = None
            while descriptor is None:  # non-blocking open: give up if the adapter never opens the pipe
                try:
                    descriptor = os.open(stream_path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                        return
                    time.sleep(0.01)
            os.set_blocking(descriptor, True)
            try:
                with os.fdopen(descriptor, "wb") as pipe:
                    pipe.write(first_half)
                    pipe.flush()
                    first_half_written.set()
                    release.wait(self.first_row_timeout * 3)
                    pipe.write(second_half)
            except BrokenPipeError:
                pass
            except BaseException as exc:
                writer_error.append(exc)

        found: queue.Queue[object] = queue.Queue()
        reader_error: list[BaseException] = []

        def read() -> None:
            try:
                with block_network() as attempts:
                    for item in self.make_adapter(target).read():
                        found.put(item)
                assert not attempts, attempts
            except BaseException as exc:
                reader_error.append(exc)
            finally:
                found.put(StopIteration)

        writer = threading.Thread(target=write, daemon=True)
        reader = threading.Thread(target=read, daemon=True)
        writer.start()
        reader.start()
        first: object = None
        deadline = time.monotonic() + self.first_row_timeout
        while first is None and time.monotonic() < deadline:
            try:
                item = found.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is StopIteration:
                break
            if isinstance(item, RawResult | LearnerRow):
                first = item
        second_half_sent = first_half_written.is_set()
        release.set()
        reader.join(self.first_row_timeout * 3)
        writer.join(self.first_row_timeout)
        assert not reader_error, f"read() raised: {reader_error[0]!r}"
        assert not writer_error, f"feeding the pipe failed: {writer_error[0]!r}"
        assert first is not None, (
            "no row while the second half of the file was still unwritten: does read() load the whole "
            f"file first? (first half written: {second_half_sent})")
        assert not reader.is_alive(), "read() did not finish after the file ended"

    # -- garbage
    @pytest.mark.parametrize("kind", ["binary junk", "empty file", "wrong columns"])
    def test_garbage_gives_problems_not_exceptions(self, tmp_path: Path, kind: str) -> None:
        content = {
            "binary junk": random.Random(42).randbytes(8192) + b"\x00\xff\xfe\x00" * 64,
            "empty file": b"",
            "wrong columns": b"foo,bar,baz\r\n1,2,3\r\n4,5,6\r\n",
        }[kind]
        target = self.garbage_input(tmp_path, content)
        items = self.read_all(target)
        problems = self.problems(items)
        assert problems, f"{kind}: no InputProblem"
        assert not self.rows(items), f"{kind}: rows came out of garbage: {self.rows(items)[:3]}"
        for problem in problems:
            assert problem.reason.strip(), "a problem needs a reason"
            assert Path(problem.location.file).exists() or Path(problem.location.file).parent.exists()
            assert str(tmp_path) in problem.location.file, problem.location

    def test_missing_path_is_a_problem(self, tmp_path: Path) -> None:
        items = self.read_all(tmp_path / "no-such-folder" / self.sample_path.name)
        assert self.problems(items) and not self.rows(items)
