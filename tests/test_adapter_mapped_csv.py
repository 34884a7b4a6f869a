"""csv (mapped CSV): an Osiris-style export read through a column map."""

from __future__ import annotations

import tracemalloc
from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from mcsync.adapter import AdapterContext, RawResult
from mcsync.errors import InputProblem
from mcsync.testing import read_adapter
from mcsync_adapters.mapped_csv import MappedCsvAdapter, MappedCsvOptions

SAMPLE = Path(__file__).parent / "fixtures" / "exports" / "mapped" / "osiris-resultaten.csv"
COLUMNS = {"student_number": "Studentnummer", "name": "Naam", "course_code": "Cursus", "date": "Toetsdatum",
           "grade": "Resultaat"}


def read(path: Path, **options: object) -> tuple[list[RawResult], list[InputProblem]]:
    items = read_adapter(MappedCsvAdapter, {"path": str(path), **options}, base_dir=path.parent)
    return ([i for i in items if isinstance(i, RawResult)], [i for i in items if isinstance(i, InputProblem)])


def test_osiris_style_export() -> None:
    rows, problems = read(SAMPLE, columns=COLUMNS, date_format="%d-%m-%Y")
    assert [(r.location.line, r.student_number, r.course_code, r.grade, r.result_date, r.given_name,
             r.family_name_prefix, r.family_name) for r in rows] == [
        (2, "2210451", "MC-DATA01", "7,5", date(2025, 6, 27), "Sanne", "de", "Vries"),
        (3, "2198733", "MC-DATA01", "5,2", date(2025, 6, 27), "Mohammed", None, "El Amrani"),
        (4, "2301877", "MC-CIRC02", "VLD", date(2025, 6, 20), "Femke", None, "Bakker"),   # comment spans 2 lines
        (6, "2245190", "MC-ZORG03", "ND", date(2025, 7, 4), "Noëlle", "van der", "Berg"),
        # line 7: Loïs Jørgensen, no result yet
    ]
    assert {r.scale for r in rows} == {"1-10"}
    [problem] = problems
    assert (problem.location.line, problem.location.field) == (8, "Studentnummer")


def test_fixed_course_code_and_date_and_separate_names(tmp_path: Path) -> None:
    path = tmp_path / "sap.csv"
    path.write_text("Student\tVoornaam\tAchternaam\tCijfer\tEPPN\n2260001\tEva\tvan den Heuvel\tNVD\teva@hz.nl\n"
                    "2260002\tBas\tSmit\tWACHT\tbas@hz.nl\n", encoding="utf-8")
    rows, problems = read(path, course_code="MC-SAP01", result_date="2025-07-01", scale="pass-fail",
                          no_result=["WACHT"],
                          columns={"student_number": "Student", "given_name": "Voornaam", "family_name": "Achternaam",
                                   "grade": "Cijfer", "eppn": "EPPN"})
    assert not problems
    assert [(r.student_number, r.course_code, r.grade, r.scale, r.result_date, r.given_name, r.family_name_prefix,
             r.family_name, r.eppn) for r in rows] == [
        ("2260001", "MC-SAP01", "NVD", "pass-fail", date(2025, 7, 1), "Eva", "van den", "Heuvel", "eva@hz.nl")]


def test_problems_per_row_and_for_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("nr,vak,cijfer,datum\n1,MC-A,7,2025-13-01\n2,,7,2025-01-01\n3,@MC,8,\n", encoding="utf-8")
    columns = {"student_number": "nr", "course_code": "vak", "grade": "cijfer", "date": "datum"}
    rows, problems = read(path, columns=columns)
    assert not rows
    assert [(p.location.line, p.location.field) for p in problems] == [(2, "datum"), (3, "vak"), (4, "vak")]
    rows, [problem] = read(path, columns={**columns, "email": "mail"})
    assert problem.reason.startswith("missing column for the column map: 'mail'; found: 'nr', 'vak', 'cijfer', 'datum'")


def test_options_need_one_course_code_source() -> None:
    with pytest.raises(ValidationError, match="either columns.course_code"):
        MappedCsvOptions(path="x.csv", columns={"student_number": "a", "grade": "b"})
    with pytest.raises(ValidationError, match="either columns.course_code"):
        MappedCsvOptions(path="x.csv", course_code="MC", columns={"student_number": "a", "grade": "b", "course_code": "c"})
    with pytest.raises(ValidationError):
        MappedCsvOptions(path="x.csv", course_code="MC", columns={"student_number": "a", "grade": "b", "cours": "c"})


def test_adapter_streams_in_bounded_memory(tmp_path: Path) -> None:
    """csvio's own test reads 200k rows; here 20k go through the whole adapter (pydantic rows and
    all) under tracemalloc, which makes each allocation slow."""
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write("Studentnummer;Naam;Cursus;Toetsdatum;Resultaat\r\n")
        for i in range(20_000):
            handle.write(f"{2_000_000 + i};Vries, Sanne de;MC-DATA01;2025-06-27;{5 + i % 5},5\r\n")
    size = path.stat().st_size
    adapter = MappedCsvAdapter(MappedCsvOptions(path=str(path), columns=COLUMNS),
                               AdapterContext(source="big", base_dir=tmp_path))
    reader = adapter.read()
    first = next(reader)                    # the first row, before tracing: imports and caches are warm
    assert isinstance(first, RawResult) and first.location.line == 2
    tracemalloc.start()
    try:
        count, last = 1, first
        for last in reader:
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(last, RawResult)
    assert count == 20_000 and last.location.line == 20_001 and last.student_number == "2019999"
    assert size > 900_000 and peak < size / 50, f"peak {peak} bytes while reading a {size}-byte file"
