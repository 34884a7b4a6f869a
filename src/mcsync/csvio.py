"""Streaming CSV reading shared by every CSV adapter (built-in and third-party).

How a file is read, in one pass and constant memory:

1. **Physical lines.** Bytes are read one line at a time (`readline` with a cap of
   `max_line_bytes`, so a file without newlines cannot fill memory). Each physical line is counted,
   so every row knows the line it starts on, also when quoted fields hold newlines.
2. **Encoding.** A UTF-8 byte-order mark is dropped. Without one, lines are decoded as UTF-8; when a
   line is not UTF-8 and no earlier line held non-ASCII text, the file is Windows-1252 (what Excel
   and Canvas write on Dutch Windows machines): mcsync says so in the log (logger `mcsync.csvio`,
   INFO) and reads the rest as Windows-1252. Lines before that were pure ASCII, which reads the same
   in both. A line that cannot be decoded in the file's encoding (or a UTF-8 line in a Windows-1252
   file: a file that mixes encodings) is reported as an `InputProblem` for the row it belongs to;
   nothing is guessed. A UTF-16 file (Excel's "Unicode text") or a file with NUL bytes in its header
   is not CSV text and is reported once for the file.
3. **Delimiter.** An Excel `sep=;` first line is honoured; otherwise the header line decides: the
   most frequent of `,` `;` and tab outside quotes (ties go to `,`). Adapters may also fix it.
4. **Records.** Python's `csv` module (strict quoting) turns lines into records. A row with fewer
   cells than the header, or more cells that are not empty, is a ragged row: reported with its line
   and skipped. Rows whose cells are all empty are skipped. A cell longer than `max_field_chars`
   is reported. The `csv` module's own errors (a quote never closed, a stray quote) become
   problems with the line where the record started.
5. **Header.** Columns are looked up by name, ignoring case and repeated spaces. `require()` gives
   one clear `InputProblem` that names the missing columns and those that were found.

Spreadsheet formulas (CSV injection). A cell that starts with `=`, `+`, `-` or `@` is run as a
formula when someone opens it in a spreadsheet; exports end up in spreadsheets and in national
registers, so mcsync never passes such text on. The decision is per field:

- numbers (grades, scores, points) are parsed: `-3`, `+5`, `7,5` are numbers, not formulas; a
  non-numeric grade is held to the text rule below (`V`, `VLD` pass, `=1+1` does not);
- text (names, e-mail addresses, eppn, student numbers, course codes, letter grades) that starts
  with one of those characters is **reported**, not neutralised: `safe_text` raises `UnsafeCell`
  and the adapter yields an `InputProblem` for that field. Neutralising (prefixing `'`) would send
  an altered name or address to Edubadges or DUO; a person should look at the row instead.
  Values that mean "no result" (`-` in Moodle) are recognised by the adapter before this check.

Problem texts never contain cell values (a cell may hold a BSN); they name the line and column.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from types import TracebackType

from .adapter import AdapterContext
from .errors import InputProblem

log = logging.getLogger("mcsync.csvio")

#: A physical line longer than this is reported and skipped (memory stays bounded).
MAX_LINE_BYTES = 1 << 20
#: A cell longer than this is reported. Python's csv module refuses fields over 131,072 characters.
MAX_FIELD_CHARS = 65_536
DELIMITERS = (",", ";", "\t")
LONG_LINE_CHARS = 4096    # rows on longer (or several) lines get their cell sizes checked
BINARY_SNIFF_BYTES = 512   # a NUL byte this close to the start means binary data, not CSV
FORMULA_PREFIXES = ("=", "+", "-", "@")
_FOUND_SHOWN = 40          # columns listed in a "missing columns" problem


class UnsafeCell(ValueError):
    """A cell that mcsync will not pass on (see the module docstring); `column` names it."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"{column}: {reason}")
        self.column = column
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Values

_SIMPLE_NUMBER = re.compile(r"[+-]?(?:\d+(?:[.,]\d+)?|[.,]\d+)")
_GROUPED_NUMBER = re.compile(r"[+-]?\d{1,3}(?:([.,\u00a0\u202f ])\d{3})+(?:([.,])\d+)?")


def parse_decimal(text: str) -> Decimal:
    """A number as spreadsheets in any locale write it: `7.5`, `7,5`, `-3`, `1.234,50`, `1,234.50`.

    A single separator is the decimal separator (`1,234` is 1.234: in grades the decimal comma is
    far more common than a thousands separator). Grouped thousands need a different decimal
    separator or none. Raises ValueError for anything else (also `1e3`, `NaN`, empty text).
    """
    value = text.strip()
    if _SIMPLE_NUMBER.fullmatch(value):
        return Decimal(value.replace(",", "."))
    match = _GROUPED_NUMBER.fullmatch(value)
    if match and match.group(1) != match.group(2):
        group, decimal = match.group(1), match.group(2)
        plain = value.replace(group, "")
        if decimal:
            plain = plain.replace(decimal, ".")
        try:
            return Decimal(plain)
        except InvalidOperation:  # pragma: no cover - the pattern admits digits only
            pass
    raise ValueError("not a number")


def is_number(text: str) -> bool:
    try:
        parse_decimal(text)
    except ValueError:
        return False
    return True


def format_decimal(value: Decimal) -> str:
    """A Decimal as plain text without exponent or trailing zeros: 7.80 → "7.8", 10 → "10"."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def safe_text(value: str | None, *, column: str) -> str | None:
    """A text cell as mcsync passes it on: stripped, None when empty.

    Raises UnsafeCell when the text starts like a spreadsheet formula (`=`, `+`, `-`, `@`).
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.startswith(FORMULA_PREFIXES):
        raise UnsafeCell(column, f"starts with {value[0]!r}, which a spreadsheet runs as a formula; "
                                 "mcsync does not pass such text on")
    return value


def safe_grade(value: str | None, *, column: str) -> str | None:
    """A grade cell: a number (also `-3`, `7,5`) is kept as found; other text must be safe text."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if is_number(value):
        return value
    return safe_text(value, column=column)


# ---------------------------------------------------------------------------------------------
# Header and rows

def _norm(name: str) -> str:
    return " ".join(name.replace("\ufeff", "").split()).casefold()


def _shown(name: str) -> str:
    """A header name fit for a message: printable, at most 60 characters."""
    text = "".join(ch if ch.isprintable() else "?" for ch in name)
    return repr(text if len(text) <= 60 else text[:57] + "...")


@dataclass(frozen=True)
class CsvHeader:
    """The column names of a file, looked up ignoring case and repeated white space."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        index: dict[str, int] = {}
        exact: dict[str, int] = {}
        for position, name in enumerate(self.names):
            index.setdefault(_norm(name), position)
            exact.setdefault(name, position)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_exact", exact)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.index(name) is not None

    def index(self, name: str) -> int | None:
        """The position of column `name` (first one if repeated), or None."""
        exact: dict[str, int] = self._exact  # type: ignore[attr-defined]
        position = exact.get(name)
        if position is not None:
            return position
        found: dict[str, int] = self._index  # type: ignore[attr-defined]
        return found.get(_norm(name))

    def missing(self, names: Sequence[str]) -> list[str]:
        return [name for name in names if name not in self]

    def describe(self) -> str:
        shown = ", ".join(_shown(name) for name in self.names[:_FOUND_SHOWN])
        if len(self.names) > _FOUND_SHOWN:
            shown += f", … ({len(self.names) - _FOUND_SHOWN} more)"
        return shown or "none"


@dataclass(slots=True)
class CsvRow:
    """One record: the physical line it starts on (1-based) and its cells as parsed."""

    file: Path
    line: int
    end_line: int
    cells: Sequence[str]
    header: CsvHeader

    def get(self, column: str | int | None) -> str | None:
        """The stripped cell of a column (by name or position); None if absent or empty."""
        if column is None:
            return None
        position = column if isinstance(column, int) else self.header.index(column)
        if position is None or position >= len(self.cells):
            return None
        value = self.cells[position].strip()
        return value or None


# ---------------------------------------------------------------------------------------------
# Physical lines and encodings

class _NotText(Exception):
    """The file is not CSV text at all (reported once for the file)."""


def _is_utf8_with_non_ascii(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not data.isascii()


def _utf8(data: bytes) -> str | None:
    """`data` decoded as UTF-8; None if it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class _Lines:
    """Physical lines of a binary stream as text, deciding the encoding as they come.

    Iterating gives the lines in order; `line_no` is the number of the last line handed out. Lines
    that could not be read faithfully are handed out anyway (so the csv module keeps its place) and
    listed in `bad`, keyed by line number, so the record that contains them is reported instead of
    passed on.
    """

    def __init__(self, raw: io.BufferedReader, path: Path, *, encoding: str | None, max_line_bytes: int,
                 long_line_chars: int = LONG_LINE_CHARS) -> None:
        self.raw = raw
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.forced = encoding is not None
        self.encoding = codecs.lookup(encoding).name if encoding else "utf-8"
        self.line_no = 0
        self.bom = False
        self.bad: dict[int, str] = {}
        #: set when a line longer than `long_line_chars` was handed out (csvio then checks cell sizes)
        self.long_line = False
        self.long_line_chars = long_line_chars
        self._read_limit = max_line_bytes + 1
        self._non_ascii_seen = False
        # A generator, not a __next__ method: csv.reader pulls every line through it, and resuming
        # a generator costs far less than calling a Python method once per line.
        self._lines = self._read()

    def __iter__(self) -> Iterator[str]:
        return self._lines

    def __next__(self) -> str:
        return next(self._lines)

    def _read(self) -> Iterator[str]:
        readline, limit = self.raw.readline, self._read_limit
        data = readline(limit)
        if not data:
            return
        self.line_no = 1
        yield self._line(data)          # the first line gets the BOM and binary-data checks
        # Fast path: a short line without NUL bytes needs none of the checks in `_line` when it is
        # ASCII (the same text in every encoding mcsync accepts) or, while the file is read as
        # UTF-8, valid UTF-8. Nearly every line of an export is one. "Short" means it can neither
        # be too long nor make a row need its cell sizes checked.
        short = min(self.long_line_chars, self.max_line_bytes)
        for data in iter(partial(readline, limit), b""):
            self.line_no += 1
            if len(data) <= short and 0 not in data:
                if data.isascii():
                    yield data.decode("ascii")
                    continue
                if self.encoding == "utf-8" and (text := _utf8(data)) is not None:
                    self._non_ascii_seen = True
                    yield text
                    continue
            yield self._line(data)

    def _line(self, data: bytes) -> str:
        """Physical line number `line_no` as text, with every check (see the class docstring)."""
        if len(data) > self.long_line_chars:
            self.long_line = True
        if len(data) > self.max_line_bytes and not data.endswith(b"\n"):
            while True:  # skip the rest of this physical line, a chunk at a time
                more = self.raw.readline(self.max_line_bytes)
                if not more or more.endswith(b"\n"):
                    break
            self.bad[self.line_no] = f"line {self.line_no} is longer than {self.max_line_bytes} bytes"
            return "\n"
        if self.line_no == 1:
            head = (data + self.raw.peek(BINARY_SNIFF_BYTES))[:BINARY_SNIFF_BYTES]
            if 0 in head and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise _NotText("is not CSV text (binary data: NUL bytes near its start)")
            if data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8):]
                self.bom = True
                if not self.forced:
                    self.encoding = "utf-8"
                    self.forced = True
            elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise _NotText("is UTF-16 text (Excel's \"Unicode text\"); save it as \"CSV UTF-8\"")
        if data.isascii() and 0 not in data:
            return data.decode("ascii")
        if 0 in data:
            self.bad[self.line_no] = f"line {self.line_no} contains NUL bytes (binary data)"
            data = data.replace(b"\x00", b"")
        return self._decode(data)

    def _decode(self, data: bytes) -> str:
        if data.isascii():
            return data.decode("ascii")
        if self.encoding == "utf-8" and not self.forced:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                if self._non_ascii_seen:
                    return self._undecodable(data)
                self.encoding = "cp1252"
                log.info("%s: not UTF-8; reading it as Windows-1252 (first non-ASCII text on line %d)",
                         self.path, self.line_no)
            else:
                self._non_ascii_seen = True
                return text
        try:
            text = data.decode(self.encoding)
        except UnicodeDecodeError:
            return self._undecodable(data)
        if self.encoding == "cp1252" and not self.forced and _is_utf8_with_non_ascii(data):
            self.bad[self.line_no] = (f"line {self.line_no} is UTF-8 while earlier lines are Windows-1252: "
                                      "the file mixes encodings; save it again as CSV UTF-8")
        return text

    def _undecodable(self, data: bytes) -> str:
        name = "Windows-1252" if self.encoding == "cp1252" else self.encoding.upper()
        self.bad[self.line_no] = f"line {self.line_no} holds bytes that are not {name} text"
        return data.decode(self.encoding, "replace")

    def take_bad(self, first: int, last: int) -> str | None:
        """The first reason recorded for lines first..last (and forget those lines)."""
        if not self.bad:
            return None
        reasons = [self.bad.pop(n) for n in sorted(self.bad) if n <= last]
        return reasons[0] if reasons else None


def _count_outside_quotes(line: str, delimiter: str) -> int:
    count, quoted = 0, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == delimiter and not quoted:
            count += 1
    return count


def sniff_delimiter(header_line: str) -> str:
    """The delimiter of a header line: the most frequent of `,` `;` tab outside quotes (ties: `,`)."""
    counts = {delimiter: _count_outside_quotes(header_line, delimiter) for delimiter in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: (counts[d], -DELIMITERS.index(d)))
    return best if counts[best] else ","


_SEP_LINE = re.compile(r"^sep=(.)\s*$")


# ---------------------------------------------------------------------------------------------
# Files

class CsvFile:
    """One CSV file, opened for streaming. Use as a context manager:

        with open_csv(path, context) as csv_file:
            if csv_file.problem or (problem := csv_file.require("ID number")):
                yield csv_file.problem or problem
                return
            for row in csv_file.rows():   # CsvRow or InputProblem, in file order
                ...
    """

    def __init__(self, path: Path, context: AdapterContext, *, delimiter: str | None = None,
                 encoding: str | None = None, skip_lines: int = 0,
                 max_field_chars: int = MAX_FIELD_CHARS, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if delimiter is not None and len(delimiter) != 1:
            raise ValueError("delimiter must be one character")
        self.path = Path(path)
        self.context = context
        self.delimiter = delimiter
        self.skip_lines = skip_lines
        self.max_field_chars = min(max_field_chars, csv.field_size_limit() - 1)
        self._encoding = encoding
        self._max_line_bytes = max_line_bytes
        self._raw: io.BufferedReader | None = None
        self._lines: _Lines | None = None
        self._reader: Iterator[list[str]] | None = None
        self.header = CsvHeader(())
        self.header_line = 0
        #: A problem with the file as a whole (cannot open, empty, not text); rows() yields nothing.
        self.problem: InputProblem | None = None

    # -- context manager
    def __enter__(self) -> CsvFile:
        try:
            self._raw = open(self.path, "rb")
        except OSError as exc:
            self.problem = self.file_problem(f"cannot be opened: {exc.strerror or exc}")
            return self
        self._lines = _Lines(self._raw, self.path, encoding=self._encoding, max_line_bytes=self._max_line_bytes,
                             long_line_chars=min(LONG_LINE_CHARS, self.max_field_chars))
        try:
            self._read_header()
        except _NotText as exc:
            self.problem = self.file_problem(f"{exc}", hint="export the file again as CSV")
        except OSError as exc:
            self.problem = self.file_problem(f"cannot be read: {exc.strerror or exc}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    @property
    def encoding(self) -> str:
        """The encoding in use: "utf-8", "utf-8-sig" (with a BOM), "cp1252", or the one given."""
        if self._lines is None:
            return self._encoding or "utf-8"
        if self._lines.bom:
            return "utf-8-sig"
        return self._lines.encoding

    # -- problems
    def file_problem(self, reason: str, *, hint: str | None = None) -> InputProblem:
        return InputProblem(reason, self.context.location(self.path), hint=hint)

    def row_problem(self, line: int, reason: str, *, field: str | None = None,
                    hint: str | None = None) -> InputProblem:
        return InputProblem(reason, self.context.location(self.path, line, field), hint=hint)

    def require(self, *columns: str, what: str | None = None) -> InputProblem | None:
        """One problem naming the missing columns and those found; None when all are there."""
        missing = self.header.missing(columns)
        if not missing:
            return None
        names = ", ".join(_shown(name) for name in missing)
        kind = f" for {what}" if what else ""
        return InputProblem(
            f"missing column{'s' if len(missing) > 1 else ''}{kind}: {names}; found: {self.header.describe()}",
            self.context.location(self.path, self.header_line or None),
            hint="is this the right kind of export? Column names can be set in the source's options",
        )

    # -- reading
    def _read_header(self) -> None:
        lines = self._lines
        assert lines is not None
        for _ in range(self.skip_lines):
            if next(lines, None) is None:
                break
        first = next((text for text in lines if text.strip()), None)
        if first is None:
            self.problem = self.file_problem("is empty: no header line", hint="export the file again")
            return
        first_line = lines.line_no
        if self.delimiter is None:
            sep = _SEP_LINE.match(first.strip("\r\n"))
            if sep:
                self.delimiter = sep.group(1)
                first = next((text for text in lines if text.strip()), None)
                if first is None:
                    self.problem = self.file_problem("is empty: no header line after 'sep='")
                    return
                first_line = lines.line_no
            else:
                self.delimiter = sniff_delimiter(first)
        # the reader starts with the header line, already read (and counted) above
        self._reader = csv.reader(itertools.chain((first,), lines), delimiter=self.delimiter, quotechar='"',
                                  doublequote=True, strict=True)
        record = self._next_record(first_line)
        if record is None:
            self.problem = self.file_problem("is empty: no header line")
            return
        if isinstance(record, InputProblem):
            self.problem = self.file_problem(f"has an unreadable header: {record.reason}")
            return
        start, end, cells = record
        bad = lines.take_bad(start, end)
        if bad:
            reason = "is not CSV text (binary data)" if "NUL" in bad else f"has an unreadable header: {bad}"
            self.problem = self.file_problem(reason, hint="is this the right file? export it again as CSV")
            return
        names = [cell.strip().replace("\ufeff", "") for cell in cells]
        if any(any(not ch.isprintable() for ch in name) for name in names):
            self.problem = self.file_problem("is not CSV text: its first line holds control characters",
                                             hint="is this the right file? export it again as CSV")
            return
        while names and not names[-1]:
            names.pop()
        self.header = CsvHeader(tuple(names))
        self.header_line = first_line
        log.debug("%s: delimiter %r, header on line %d with %d columns", self.path, self.delimiter,
                  first_line, len(names))

    def _next_record(self, start: int) -> tuple[int, int, list[str]] | InputProblem | None:
        assert self._reader is not None and self._lines is not None
        try:
            cells = next(self._reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            self._lines.take_bad(start, self._lines.line_no)
            return self.row_problem(start, f"is not valid CSV from line {start}: {exc}",
                                    hint="a quote may be missing or doubled; check the row in a text editor")
        return start, self._lines.line_no, cells

    def rows(self) -> Iterator[CsvRow | InputProblem]:
        """The data rows in file order; unusable rows come as InputProblems with their line."""
        if self.problem is not None or self._reader is None or self._lines is None:
            return
        lines, reader, path, header = self._lines, self._reader, self.path, self.header
        width, max_chars = len(header), self.max_field_chars
        while True:  # the hot loop: kept free of avoidable allocations
            start = lines.line_no + 1
            lines.long_line = False
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                lines.take_bad(start, lines.line_no)
                yield self.row_problem(start, f"is not valid CSV from line {start}: {exc}",
                                       hint="a quote may be missing or doubled; check the row in a text editor")
                continue
            end = lines.line_no
            if lines.bad:
                bad = lines.take_bad(start, end)
                if bad:
                    yield self.row_problem(start, bad)
                    continue
            if not cells or (not cells[0].strip() and not "".join(cells).strip()):
                continue
            if len(cells) != width:
                if len(cells) > width and not "".join(cells[width:]).strip():
                    del cells[width:]
                else:
                    yield self.row_problem(
                        start, f"ragged row: {len(cells)} cells where the header has {width}",
                        hint="a delimiter or quote is missing or extra in this row")
                    continue
            if (lines.long_line or end != start) and max(map(len, cells)) > max_chars:
                long_cell = next(i for i, cell in enumerate(cells) if len(cell) > max_chars)
                yield self.row_problem(start, f"cell longer than {max_chars} characters",
                                       field=header.names[long_cell])
                continue
            yield CsvRow(path, start, end, cells, header)


def open_csv(path: Path | str, context: AdapterContext, *, delimiter: str | None = None,
             encoding: str | None = None, skip_lines: int = 0, max_field_chars: int = MAX_FIELD_CHARS,
             max_line_bytes: int = MAX_LINE_BYTES) -> CsvFile:
    """A CsvFile for `path`; see the module docstring for what it does."""
    return CsvFile(Path(path), context, delimiter=delimiter, encoding=encoding, skip_lines=skip_lines,
                   max_field_chars=max_field_chars, max_line_bytes=max_line_bytes)


def read_csv(path: Path | str, context: AdapterContext, *, required: Sequence[str] = (),
             delimiter: str | None = None, encoding: str | None = None, skip_lines: int = 0,
             max_field_chars: int = MAX_FIELD_CHARS) -> Iterator[CsvRow | InputProblem]:
    """Rows of one file; a file-level problem (or missing `required` columns) is yielded once."""
    with open_csv(path, context, delimiter=delimiter, encoding=encoding, skip_lines=skip_lines,
                  max_field_chars=max_field_chars) as csv_file:
        problem = csv_file.problem or csv_file.require(*required)
        if problem is not None:
            yield problem
            return
        yield from csv_file.rows()
