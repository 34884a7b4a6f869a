"""learners-csv: SIS personal data, checked without ever echoing a BSN."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from mcsync.adapter import LearnerRow
from mcsync.errors import InputProblem
from mcsync.testing import read_adapter
from mcsync.personal_numbers import passes_elfproef as valid_bsn
from mcsync.personal_numbers import passes_onderwijsnummer_check as valid_onderwijsnummer
from mcsync_adapters.learners import LearnersCsvAdapter

SAMPLE = Path(__file__).parent / "fixtures" / "exports" / "learners" / "learners.csv"


def read(path: Path, **options: object) -> tuple[list[LearnerRow], list[InputProblem]]:
    items = read_adapter(LearnersCsvAdapter, {"path": str(path), **options}, base_dir=path.parent)
    return ([i for i in items if isinstance(i, LearnerRow)], [i for i in items if isinstance(i, InputProblem)])


def test_sample() -> None:
    rows, problems = read(SAMPLE)
    assert [(r.location.line, r.student_number, r.bsn, r.onderwijsnummer, r.date_of_birth, r.given_name,
             r.family_name_prefix, r.family_name, r.email, r.eppn) for r in rows] == [
        (2, "2210451", "111222333", None, date(1998, 4, 12), "Sanne", "de", "Vries", "s.devries@student.hz.nl",
         "s.devries@hz.nl"),
        (3, "2198733", None, "100000004", date(2001, 11, 30), "Mohammed", None, "El Amrani",
         "m.elamrani@student.hz.nl", None),
        (4, "2245190", "123456782", None, date(1995, 2, 28), "Noëlle", "van der", "Berg",
         "n.vanderberg@student.hz.nl", "n.vanderberg@hz.nl"),
        # line 5: BSN fails the elfproef; line 6: 31-02-2000 is no date
        (7, "2260001", "023456784", None, date(2000, 1, 1), "Eva", None, "Jansen", "e.jansen@student.hz.nl", None),
    ]
    assert [(p.location.line, p.location.field) for p in problems] == [(5, "bsn"), (6, "date_of_birth")]


def test_no_bsn_in_any_text() -> None:
    rows, problems = read(SAMPLE)
    texts = [str(p) for p in problems] + [repr(p.__dict__) for p in problems] + [repr(r) for r in rows] + [str(r) for r in rows]
    for secret in ("123456789", "111222333", "123456782", "023456784", "1998-04-12"):
        assert not any(secret in text for text in texts), secret


def test_checks() -> None:
    assert valid_bsn("111222333") and valid_bsn("123456782") and not valid_bsn("123456789")
    assert not valid_bsn("000000000") and not valid_bsn("12345678") and not valid_bsn("１１１２２２３３３")
    assert valid_onderwijsnummer("100000004") and not valid_onderwijsnummer("111222333")


def test_column_map_date_format_and_problems(tmp_path: Path) -> None:
    path = tmp_path / "sis.csv"
    path.write_text("Studentnummer;BSN;Geboortedatum;Roepnaam;Achternaam\n"
                    "2210451;111 222 333;12-04-1998;Sanne;Vries\n"
                    ";123456782;01-01-2000;Anon;X\n"
                    "2260001;;01-01-2000;=cmd|' /C calc'!A0;Jansen\n"
                    "2260002;;;Bas;Smit\n", encoding="cp1252")
    columns = {"student_number": "Studentnummer", "bsn": "BSN", "date_of_birth": "Geboortedatum",
               "given_name": "Roepnaam", "family_name": "Achternaam"}
    rows, problems = read(path, columns=columns, date_format="%d-%m-%Y")
    assert [(r.student_number, r.bsn, r.date_of_birth, r.given_name) for r in rows] == [
        ("2210451", "111222333", date(1998, 4, 12), "Sanne"), ("2260002", None, None, "Bas")]
    assert [(p.location.line, p.location.field) for p in problems] == [(3, "Studentnummer"), (4, "Roepnaam")]
    assert "calc" not in str(problems[1])
    rows, [problem] = read(path)
    assert problem.reason.startswith("missing column for a learners file: 'student_number'")
