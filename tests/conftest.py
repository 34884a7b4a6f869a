"""Shared fixtures. Tests talk only to loopback; remote systems are the sandbox simulators."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from mcsync.record import Issuer, Learner, MicrocredentialDefinition, MicrocredentialRecord, Provenance, Result, ResultStatus
from mcsync.state import SqliteStateStore

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "reference"
DEMO = REPO / "src" / "mcsync" / "demo"


@pytest.fixture
def store(tmp_path: Path) -> SqliteStateStore:
    s = SqliteStateStore(tmp_path / "state" / "mcsync.db")
    yield s
    s.close()


@pytest.fixture
def issuer() -> Issuer:
    return Issuer(name="Hogeschool Zeeland", country="NL", brin="30GB", oin="0000000700030GB00000",
                  onderwijsaanbiedercode="110A133")


def make_definition(code: str = "MC-DATA01", **overrides) -> MicrocredentialDefinition:
    data = dict(code=code, title={"nl": "Data-analyse met Python"}, learning_outcomes=[{"nl": "Past Python toe."}],
                ects=Decimal(5), eqf=6, nlqf="6", assessment_type="written_exam", participation="blended",
                quality_assurance={"name": "Kwaliteitskader Microcredentials"},
                edubadges={"badgeclass": "Xy9Zv1aFwREargJY47cO8w"}, rio={"kind": "hoOnderwijseenheid"})
    data.update(overrides)
    return MicrocredentialDefinition.model_validate(data)


def make_record(issuer: Issuer, student_number: str = "2210451", *, grade: str = "7.5",
                status: ResultStatus = ResultStatus.PASSED, definition: MicrocredentialDefinition | None = None,
                **learner) -> MicrocredentialRecord:
    learner_data = dict(student_number=student_number, given_name="Sanne", family_name_prefix="de",
                        family_name="Vries", email=f"{student_number}@student.hz.nl")
    learner_data.update(learner)
    return MicrocredentialRecord.build(
        issuer=issuer, learner=Learner(**learner_data), microcredential=definition or make_definition(),
        result=Result(status=status, grade_raw=grade, assessment_date=date(2025, 6, 27)),
        provenance=Provenance(source="test", file="results.csv", line=2))
