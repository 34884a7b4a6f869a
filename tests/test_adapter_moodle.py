"""moodle-csv and moodle-xml: standards.md §C.3's samples, display types, and hostile XML."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from mcsync.adapter import RawResult
from mcsync.errors import InputProblem
from mcsync.testing import read_adapter
from mcsync_adapters.moodle import MoodleCsvAdapter, MoodleXmlAdapter

MOODLE = Path(__file__).parent / "fixtures" / "exports" / "moodle"
HEADER = ("First name,Last name,ID number,Institution,Department,Email address,"
          "Assignment: Eindopdracht (Real),Quiz: Kennistoets (Real),Course total (Real),Last downloaded from this course")


def read(adapter: type, path: Path, **options: object) -> tuple[list[RawResult], list[InputProblem]]:
    items = read_adapter(adapter, {"path": str(path), **options}, base_dir=path.parent)
    return ([i for i in items if isinstance(i, RawResult)], [i for i in items if isinstance(i, InputProblem)])


# -- CSV ------------------------------------------------------------------------------------------

def test_csv_standards_sample() -> None:
    rows, problems = read(MoodleCsvAdapter, MOODLE / "csv" / "MC-DATA01 Grades.csv")
    assert not problems
    day = date(2025, 6, 27)      # 1751040000 is 2025-06-27 18:00 in Amsterdam
    assert [(r.location.line, r.student_number, r.course_code, r.grade, r.scale, r.result_date, r.given_name,
             r.family_name_prefix, r.family_name, r.email) for r in rows] == [
        (2, "2210451", "MC-DATA01", "7.50", "1-10", day, "Sanne", "de", "Vries", "s.devries@student.hz.nl"),
        (3, "2198733", "MC-DATA01", "5.20", "1-10", day, "Mohammed", None, "El Amrani", "m.elamrani@student.hz.nl"),
        # line 4: Femke Bakker, "-": no result
        (5, "2245190", "MC-DATA01", "8.40", "1-10", day, "Noëlle", "van der", "Berg", "n.vanderberg@student.hz.nl"),
        (6, "2251234", "MC-DATA01", "6.10", "1-10", day, "Loïs", None, "Jørgensen", "l.jorgensen@student.hz.nl"),
    ]


def test_csv_other_display_types_and_older_headers(tmp_path: Path) -> None:
    path = tmp_path / "MC-ZORG03 Grades (1).csv"
    path.write_text("First name,Surname,ID number,Course total (Percentage),Course total (Letter)\n"
                    "Thijs,van Dijk,2310004,66.25 %,C\n", encoding="utf-8")
    [row] = read(MoodleCsvAdapter, path)[0]
    assert (row.course_code, row.grade, row.scale, row.family_name_prefix, row.family_name, row.result_date) == (
        "MC-ZORG03", "66.25 %", "0-100", "van", "Dijk", None)
    [row] = read(MoodleCsvAdapter, path, grade_column="Course total (Letter)", result_date="2025-07-04")[0]
    assert (row.grade, row.scale, row.result_date) == ("C", "letter", date(2025, 7, 4))


def test_csv_problems(tmp_path: Path) -> None:
    path = tmp_path / "MC-DATA01 Grades.csv"
    path.write_text(HEADER + "\nEva,Jansen,,HZ,T,e@x.nl,1,2,7.00,1751040000\n"
                    "Bas,Smit,2260002,HZ,T,b@x.nl,1,2,6.00,gisteren\n", encoding="utf-8")
    rows, problems = read(MoodleCsvAdapter, path)
    assert not rows
    assert [(p.location.line, p.location.field) for p in problems] == [(2, "ID number"),
                                                                      (3, "Last downloaded from this course")]
    renamed = tmp_path / "export.csv"
    shutil.copy(MOODLE / "csv" / "MC-DATA01 Grades.csv", renamed)
    rows, [problem] = read(MoodleCsvAdapter, renamed)
    assert "no course code" in problem.reason
    assert {r.course_code for r in read(MoodleCsvAdapter, renamed, course_code="MC-X")[0]} == {"MC-X"}


# -- XML ------------------------------------------------------------------------------------------

def test_xml_standards_sample() -> None:
    rows, problems = read(MoodleXmlAdapter, MOODLE / "xml" / "grades.xml")
    assert not problems
    day = date(2025, 6, 27)     # from batch="xml_export_1751040000"
    assert [(r.location.line, r.student_number, r.course_code, r.grade, r.scale, r.result_date) for r in rows] == [
        (3, "2210451", "MC-DATA01-EIND", "7.50", "1-10", day),
        (4, "2198733", "MC-DATA01-EIND", "5.20", "1-10", day),
        (5, "2301877", "MC-CIRC02-EIND", "Voldaan", "1-10", day),
        (6, "2245190", "MC-ZORG03-EIND", "8.40", "1-10", day),       # a <result> over several lines
        # line 13: a "-" score, no result
    ]
    rows = read(MoodleXmlAdapter, MOODLE / "xml" / "grades.xml", result_date="2025-07-01")[0]
    assert {r.result_date for r in rows} == {date(2025, 7, 1)}


SECRET = "TOP-SECRET-3f9a1c"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET, encoding="utf-8")
    return path


def hostile(tmp_path: Path, secret_file: Path) -> dict[str, str]:
    uri = secret_file.as_uri()
    return {
        "xxe": f'<?xml version="1.0"?>\n<!DOCTYPE results [<!ENTITY e SYSTEM "{uri}">]>\n'
               '<results batch="xml_export_1751040000"><result><assignment>A</assignment>'
               '<student>&e;</student><score>&e;</score></result></results>\n',
        "parameter-entity": f'<?xml version="1.0"?>\n<!DOCTYPE results [<!ENTITY % p SYSTEM "{uri}"> %p;]>\n'
                            '<results><result><assignment>A</assignment><student>1</student><score>7</score></result></results>\n',
        "billion-laughs": '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
                          + "".join(f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'
                                    for i in range(1, 10))
                          + ']>\n<results><result><assignment>A</assignment><student>&lol9;</student>'
                            '<score>7</score></result></results>\n',
        "external-dtd": '<?xml version="1.0"?>\n<!DOCTYPE results SYSTEM "http://127.0.0.1:9/results.dtd">\n'
                        '<results><result><assignment>A</assignment><student>1</student><score>7</score></result></results>\n',
        "undeclared-entity": '<results><result><assignment>A</assignment><student>&e;</student><score>7</score></result></results>\n',
    }


@pytest.mark.parametrize("kind", ["xxe", "parameter-entity", "billion-laughs", "external-dtd", "undeclared-entity"])
def test_hostile_xml_is_one_problem_and_leaks_nothing(tmp_path: Path, secret_file: Path, kind: str) -> None:
    path = tmp_path / "grades.xml"
    path.write_text(hostile(tmp_path, secret_file)[kind], encoding="utf-8")
    items = read_adapter(MoodleXmlAdapter, {"path": str(path)}, base_dir=tmp_path)   # sockets blocked
    assert len(items) == 1 and isinstance(items[0], InputProblem), items
    problem = items[0]
    assert problem.location.file == str(path)
    assert ("DOCTYPE" in problem.reason) if kind != "undeclared-entity" else ("not well-formed" in problem.reason)
    assert SECRET not in str(problem) and SECRET not in repr(problem.__dict__)


def test_broken_xml_keeps_what_came_before(tmp_path: Path) -> None:
    path = tmp_path / "grades.xml"
    path.write_text('<results batch="xml_export_1751040000">\n'
                    '<result><assignment>A</assignment><student>2210451</student><score>7</score></result>\n'
                    '<result><assignment>A</assignment><student>2198733</student><score>6</score>\n'
                    '</results>\n', encoding="utf-8")
    rows, [problem] = read(MoodleXmlAdapter, path)
    assert [(r.student_number, r.location.line) for r in rows] == [("2210451", 2)]
    assert "not well-formed" in problem.reason and problem.location.line == 4


def test_xml_shape_problems(tmp_path: Path) -> None:
    path = tmp_path / "grades.xml"
    path.write_text('<grades><result/></grades>', encoding="utf-8")
    [problem] = read(MoodleXmlAdapter, path)[1]
    assert "root element is <grades>" in problem.reason
    path.write_text('<results>\n<result><assignment>A</assignment><score>7</score></result>\n'
                    '<result><assignment>A</assignment><student>=cmd()</student><score>7</score></result>\n'
                    '<result><student>3</student><score>7</score></result>\n</results>', encoding="utf-8")
    rows, problems = read(MoodleXmlAdapter, path)
    assert not rows
    assert [(p.location.line, p.location.field) for p in problems] == [(2, "student"), (3, "student"), (4, "assignment")]
