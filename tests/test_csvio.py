"""mcsync.csvio: encodings, delimiters, physical line numbers, ragged rows, formulas, limits, memory."""

from __future__ import annotations

import logging
import tracemalloc
from decimal import Decimal
from pathlib import Path

import pytest

from mcsync.adapter import AdapterContext
from mcsync.csvio import (
    CsvRow,
    UnsafeCell,
    format_decimal,
    is_number,
    open_csv,
    parse_decimal,
    read_csv,
    safe_grade,
    safe_text,
    sniff_delimiter,
)
from mcsync.errors import InputProblem

EXPORTS = Path(__file__).parent / "fixtures" / "exports"


@pytest.fixture
def context(tmp_path: Path) -> AdapterContext:
    return AdapterContext(source="test", base_dir=tmp_path)


def write(tmp_path: Path, data: bytes, name: str = "file.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def items(path: Path, context: AdapterContext, **kwargs: object) -> list[CsvRow | InputProblem]:
    return list(read_csv(path, context, **kwargs))  # type: ignore[arg-type]


def rows_of(found: list[CsvRow | InputProblem]) -> list[CsvRow]:
    return [item for item in found if isinstance(item, CsvRow)]


def problems_of(found: list[CsvRow | InputProblem]) -> list[InputProblem]:
    return [item for item in found if isinstance(item, InputProblem)]


# -- encodings ----------------------------------------------------------------------------------

def test_utf8_with_bom(context: AdapterContext) -> None:
    path = EXPORTS / "canvas" / "bom" / "2025-06-20T1100_Grades-MC-CIRC02.csv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    with open_csv(path, context) as csv_file:
        assert csv_file.header.names[0] == "Student"          # the BOM is not part of the name
        found = list(csv_file.rows())
        assert csv_file.encoding == "utf-8-sig"
    rows = rows_of(found)
    assert [row.get("Student") for row in rows] == ["Points Possible", "Bakker, Femke", "Ørsted, Åse"]
    assert [row.line for row in rows] == [2, 3, 4]


def test_windows_1252_is_recognised_and_logged(context: AdapterContext, caplog: pytest.LogCaptureFixture) -> None:
    path = EXPORTS / "canvas" / "locale" / "2025-07-04T0930_Grades-MC-ZORG03.csv"
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    caplog.set_level(logging.INFO, logger="mcsync.csvio")
    with open_csv(path, context) as csv_file:
        found = list(csv_file.rows())
        assert csv_file.encoding == "cp1252"
        assert csv_file.delimiter == ";"
    assert not problems_of(found)
    names = [row.get("Student") for row in rows_of(found)]
    assert "Hoogeveen, Renée" in names and "Vries, Zoë de" in names and "Çelik, Müge" in names
    assert rows_of(found)[-1].get("Section") == "MC Zorg 25A; avond"      # quoted delimiter
    records = [r for r in caplog.records if r.name == "mcsync.csvio" and r.levelno == logging.INFO]
    assert any("Windows-1252" in r.getMessage() and path.name in r.getMessage() for r in records)


def test_windows_1252_decided_late_keeps_earlier_ascii_rows(tmp_path: Path, context: AdapterContext) -> None:
    lines = ["name,grade"] + [f"student{i},7" for i in range(5)] + ["Renée,8", "Zoë,9"]
    path = write(tmp_path, "\n".join(lines).encode("cp1252"))
    found = items(path, context)
    assert not problems_of(found)
    assert [row.get("name") for row in rows_of(found)][-2:] == ["Renée", "Zoë"]


def test_mixed_encodings_are_reported_per_row(tmp_path: Path, context: AdapterContext) -> None:
    data = "name,grade\nRenée,8\n".encode() + "Zoë,9\n".encode("cp1252") + b"Anna,7\n"
    found = items(write(tmp_path, data), context)
    assert [row.get("name") for row in rows_of(found)] == ["Renée", "Anna"]
    [problem] = problems_of(found)
    assert problem.location.line == 3 and "not UTF-8" in problem.reason
    assert "Zo" not in problem.reason                        # no cell content in the reason

    data = "name,grade\n".encode() + "Zoë,9\n".encode("cp1252") + "Renée,8\n".encode() + b"Anna,7\n"
    found = items(write(tmp_path, data, "b.csv"), context)
    assert [row.get("name") for row in rows_of(found)] == ["Zoë", "Anna"]
    [problem] = problems_of(found)
    assert problem.location.line == 3 and "mixes encodings" in problem.reason


def test_undecodable_bytes_are_a_row_problem(tmp_path: Path, context: AdapterContext) -> None:
    data = b"name,grade\nAnn\xe9,8\nBad\x81,7\nOk,6\n"      # 0x81 is not a Windows-1252 character
    found = items(write(tmp_path, data), context)
    assert [row.get("name") for row in rows_of(found)] == ["Anné", "Ok"]
    [problem] = problems_of(found)
    assert problem.location.line == 3 and "Windows-1252" in problem.reason


def test_forced_encoding(tmp_path: Path, context: AdapterContext) -> None:
    path = write(tmp_path, "naam,cijfer\nRenée,8\n".encode("latin-1"))
    assert rows_of(items(path, context, encoding="latin-1"))[0].get("naam") == "Renée"


@pytest.mark.parametrize("data, reason", [
    (b"", "is empty"),
    (b"\r\n\r\n   \n", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "not CSV text"),
    ("name,grade\n".encode("utf-16"), "UTF-16"),
    (b"\x01\x02\x03\x04,\x05\x06\n", "control characters"),
])
def test_files_that_are_not_csv_text(tmp_path: Path, context: AdapterContext, data: bytes, reason: str) -> None:
    [problem] = items(write(tmp_path, data), context)
    assert isinstance(problem, InputProblem) and reason in problem.reason
    assert problem.location.file.endswith("file.csv") and problem.location.source == "test"


def test_unreadable_path(tmp_path: Path, context: AdapterContext) -> None:
    [problem] = items(tmp_path / "nope.csv", context)
    assert isinstance(problem, InputProblem) and "cannot be opened" in problem.reason


# -- delimiters and lines -------------------------------------------------------------------------

@pytest.mark.parametrize("header, delimiter", [
    ("a,b,c", ","), ("a;b;c", ";"), ("a\tb\tc", "\t"), ('"a;1","b;2",c', ","), ("single", ","),
    ("Student;ID;\"Last, First\"", ";"),
])
def test_sniff_delimiter(header: str, delimiter: str) -> None:
    assert sniff_delimiter(header) == delimiter


def test_excel_sep_line(tmp_path: Path, context: AdapterContext) -> None:
    path = write(tmp_path, b"sep=;\r\nname;grade,with comma\r\nAnna;7,5\r\n")
    with open_csv(path, context) as csv_file:
        assert csv_file.delimiter == ";" and csv_file.header_line == 2
        [row] = list(csv_file.rows())
    assert isinstance(row, CsvRow) and row.get("grade,with comma") == "7,5" and row.line == 3


def test_quoted_newlines_keep_physical_line_numbers(tmp_path: Path, context: AdapterContext) -> None:
    data = (b'id,comment,grade\r\n'
            b'1,"line one\r\nline two\r\nline three",7\r\n'
            b'\r\n'
            b'2,plain,8\r\n'
            b'3,"a ""quoted"" word",9\r\n')
    rows = rows_of(items(write(tmp_path, data), context))
    assert [(row.get("id"), row.line, row.end_line) for row in rows] == [("1", 2, 4), ("2", 6, 6), ("3", 7, 7)]
    assert rows[0].get("comment") == "line one\r\nline two\r\nline three"
    assert rows[2].get("comment") == 'a "quoted" word'


def test_fixture_quoted_newline_lines(context: AdapterContext) -> None:
    rows = rows_of(items(EXPORTS / "oneroster" / "hz-2025" / "results.csv", context))
    assert [(row.get("sourcedId"), row.line) for row in rows][:4] == [
        ("r-0001", 2), ("r-0002", 3), ("r-0003", 5), ("r-0004", 6)]


def test_ragged_rows_are_reported_with_their_line(context: AdapterContext) -> None:
    path = EXPORTS / "canvas" / "ragged" / "2025-06-27T1405_Grades-MC-DATA01.csv"
    found = items(path, context)
    ragged = [p for p in problems_of(found) if "ragged" in p.reason]
    assert [(p.location.line, p.reason) for p in ragged] == [
        (5, "ragged row: 7 cells where the header has 8"),
        (6, "ragged row: 9 cells where the header has 8"),
    ]
    rows = rows_of(found)
    assert [row.line for row in rows] == [2, 3, 7, 8]       # trailing empty cell on line 7 is fine
    assert rows[1].get("Section") == "MC Data-analyse 25A\ngroep Vlissingen"


def test_ragged_reason_holds_no_cell_content(tmp_path: Path, context: AdapterContext) -> None:
    found = items(write(tmp_path, b"student_number,bsn\n2210451,111222333,extra\n"), context)
    [problem] = problems_of(found)
    assert "111222333" not in str(problem) and "2210451" not in str(problem)


def test_unclosed_quote_is_a_problem_not_an_exception(tmp_path: Path, context: AdapterContext) -> None:
    found = items(write(tmp_path, b'a,b\n1,2\n3,"never closed\n4,5\n'), context)
    assert [row.get("a") for row in rows_of(found)] == ["1"]
    [problem] = problems_of(found)
    assert problem.location.line == 3 and "not valid CSV" in problem.reason


def test_stray_quote_is_reported_and_reading_goes_on(tmp_path: Path, context: AdapterContext) -> None:
    found = items(write(tmp_path, b'a,b\n1,"2"x\n3,4\n'), context)
    assert [row.get("a") for row in rows_of(found)] == ["3"]
    assert problems_of(found)[0].location.line == 2


def test_missing_columns_name_missing_and_found(tmp_path: Path, context: AdapterContext) -> None:
    path = write(tmp_path, b"\n\nStudent,ID,Final Grade\nx,1,7\n")
    [problem] = items(path, context, required=("SIS User ID", "Final Grade", "Section"))
    assert isinstance(problem, InputProblem)
    assert problem.reason.startswith("missing columns: 'SIS User ID', 'Section'; found: 'Student', 'ID', 'Final Grade'")
    assert problem.location.line == 3


def test_columns_match_ignoring_case_and_spaces(tmp_path: Path, context: AdapterContext) -> None:
    [row] = rows_of(items(write(tmp_path, b" SIS  User ID ,Grade\n123, 7.5 \n"), context, required=("sis user id",)))
    assert row.get("SIS User ID") == "123" and row.get("grade") == "7.5" and row.get("absent") is None


def test_field_and_line_limits(tmp_path: Path, context: AdapterContext) -> None:
    data = b"a,b\n1," + b"x" * 2000 + b"\n2,ok\n"
    found = list(read_csv(write(tmp_path, data), context, max_field_chars=1000))
    [problem] = problems_of(found)
    assert problem.location.line == 2 and problem.location.field == "b" and "longer than 1000" in problem.reason
    assert [row.get("a") for row in rows_of(found)] == ["2"]

    with open_csv(write(tmp_path, b"a,b\n1," + b"y" * 5000 + b"\n2,ok\n", "long.csv"), context,
                  max_line_bytes=1024) as csv_file:
        found = list(csv_file.rows())
    assert [p.location.line for p in problems_of(found)] == [2]
    assert [row.get("b") for row in rows_of(found)] == ["ok"]


def test_blank_and_empty_rows_are_skipped(tmp_path: Path, context: AdapterContext) -> None:
    found = items(write(tmp_path, b"a,b\n\n,\n 1 ,2\n  , \n3,4\n"), context)
    assert [(row.line, row.get("a")) for row in rows_of(found)] == [(4, "1"), (6, "3")]
    assert not problems_of(found)


# -- values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("7.5", "7.5"), ("7,5", "7.5"), ("-3", "-3"), ("+5", "5"), (",5", "0.5"), (" 10 ", "10"),
    ("1.234,50", "1234.50"), ("1,234.50", "1234.50"), ("1 234,5", "1234.5"), ("1,234", "1.234"),
])
def test_parse_decimal(text: str, value: str) -> None:
    assert parse_decimal(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", "-", "V", "1e3", "NaN", "7.5.1", "1.234.5", "1,23,4", "=1+1", "7,5%"])
def test_parse_decimal_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_decimal(text)
    assert not is_number(text)


def test_format_decimal() -> None:
    assert [format_decimal(Decimal(t)) for t in ("7.80", "10", "5.4990", "0.000", "-0")] == [
        "7.8", "10", "5.499", "0", "0"]


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+31612345678", "-cmd", "@SUM(A1)", "  =1+1"])
def test_formula_text_is_reported(text: str) -> None:
    with pytest.raises(UnsafeCell) as caught:
        safe_text(text, column="Student")
    assert caught.value.column == "Student" and "formula" in caught.value.reason
    assert text.strip() not in caught.value.reason


def test_safe_text_and_grade_keep_normal_values() -> None:
    assert safe_text("  Noëlle van der Berg ", column="x") == "Noëlle van der Berg"
    assert safe_text("   ", column="x") is None and safe_text(None, column="x") is None
    assert [safe_grade(g, column="g") for g in ("-3", "+5", "7,5", "V", "VLD", " 8 ")] == [
        "-3", "+5", "7,5", "V", "VLD", "8"]
    for grade in ("=1+1", "@A1", "-x", "+V"):
        with pytest.raises(UnsafeCell):
            safe_grade(grade, column="g")


# -- memory ---------------------------------------------------------------------------------------

def test_200k_rows_stream_in_bounded_memory(tmp_path: Path, context: AdapterContext) -> None:
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write("student_number,course_code,grade,date,family_name\r\n")
        for i in range(200_000):
            handle.write(f"{2_000_000 + i},MC-DATA01,{5 + i % 5}.5,2025-06-27,\"Vries, de {i}\"\r\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = last_line = 0
        for row in read_csv(path, context, required=("student_number", "grade")):
            assert isinstance(row, CsvRow)
            count += 1
            last_line = row.line
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200_000 and last_line == 200_001
    assert size > 10_000_000
    assert peak < size / 20, f"peak {peak} bytes for a {size}-byte file"
