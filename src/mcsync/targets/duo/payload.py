"""What one canonical record becomes in the register: a `<resultaat>` or an `<intrekking>`.

The register identifies a learner by exactly one of BSN, onderwijsnummer, or the institution's
student number with the date of birth (duo-register.md, "Records"); mcsync picks them in that
order from the learner, whom the engine has already merged with the `[[learners]]` directory.
A record that cannot be expressed in the register's terms (no identity, a BSN failing the elfproef,
a name longer than the schema allows) raises `Unsendable` with a text that says which data to add
where; it never carries the personal number itself.

`hash_view()` is what the target's `desired()` hashes: exactly the content the register stores, with
the unit referenced by how it will be referenced (the RIO code of this unit, or its own key), since
the RIO code itself is only known at delivery time. A change outside this view sends nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from ...record import Learner, MicrocredentialRecord, Result, ResultStatus
from ... import personal_numbers as bsn_rules

#: opleidingseenheidcode as RIO issues it (duo-register.xsd, Opleidingseenheidcode).
UNIT_CODE = re.compile(r"^[0-9]{4}O[0-9]{4}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Version of the payload shape; part of every hash, so a change of shape re-sends deliberately.
PAYLOAD_VERSION = 1

Soort = Literal["bsn", "onderwijsnummer", "eigenDeelnemerSleutel"]


class Unsendable(Exception):
    """The record cannot go to the register as it is; `message` says what to fix and where."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Deelnemer:
    soort: Soort
    nummer: str = field(repr=False)        # BSN, onderwijsnummer or student number: never printed
    geboortedatum: date | None
    voornamen: str | None
    voorvoegsel: str | None
    achternaam: str

    def hash_view(self) -> dict[str, Any]:
        return {"soort": self.soort, "nummer": self.nummer,
                "geboortedatum": self.geboortedatum.isoformat() if self.geboortedatum else None,
                "voornamen": self.voornamen, "voorvoegsel": self.voorvoegsel, "achternaam": self.achternaam}


@dataclass(frozen=True)
class Eenheid:
    """How a resultaat references its unit: exactly one of the RIO code and the own key."""

    code: str | None = None
    eigen_sleutel: str | None = None

    def __post_init__(self) -> None:
        if (self.code is None) == (self.eigen_sleutel is None):
            raise ValueError("give exactly one of code and eigen_sleutel")

    @property
    def label(self) -> str:
        return self.code if self.code is not None else f"eigen:{self.eigen_sleutel}"


@dataclass(frozen=True)
class Resultaat:
    record_id: str
    deelnemer: Deelnemer
    eenheid: Eenheid
    onderwijsaanbiedercode: str
    datum_behaald: date
    studielast: Decimal
    resultaat: str
    eqf: int | None = None
    nlqf: str | None = None


@dataclass(frozen=True)
class Intrekking:
    record_id: str
    reden: str


Entry = Resultaat | Intrekking


def _text(value: str | None, *, what: str, student: str, limit: int) -> str | None:
    """A name part cleaned for the register, or Unsendable if the schema cannot hold it."""
    if value is None:
        return None
    text = " ".join(value.split())
    if not text:              # only white space (split() and strip() agree on what that is)
        return None
    if _CONTROL.search(text):
        raise Unsendable(f"the {what} of student {student} contains a control character; correct it in "
                         "the source or the learners directory", code="invalid-data")
    if len(text) > limit:
        raise Unsendable(f"the {what} of student {student} is longer than the register's {limit} "
                         "characters; shorten it in the source or the learners directory", code="invalid-data")
    return text


def deelnemer(learner: Learner) -> Deelnemer:
    """The learner as the register identifies them: BSN, else onderwijsnummer, else student number
    with date of birth."""
    student = learner.student_number
    voornamen = _text(learner.given_name, what="given name", student=student, limit=200)
    voorvoegsel = _text(learner.family_name_prefix, what="family name prefix", student=student, limit=40)
    achternaam = _text(learner.family_name, what="family name", student=student, limit=200)
    if achternaam is None:
        raise Unsendable(f"no family name for student {student}: the register requires one; add "
                         "family_name to the learners directory ([[learners]]), the record then goes by itself",
                         code="no-name")
    if learner.bsn is not None and learner.bsn.get_secret_value().strip():
        number = bsn_rules.normalise(learner.bsn.get_secret_value())
        if not bsn_rules.is_nine_digits(number):
            raise Unsendable(f"the BSN of student {student} is not 9 digits; correct it in the learners "
                             "directory", code="bsn-invalid")
        if not bsn_rules.passes_elfproef(number):
            raise Unsendable(f"the BSN of student {student} fails the elfproef; correct it in the learners "
                             "directory, the record then goes by itself", code="bsn-elfproef")
        return Deelnemer("bsn", number, None, voornamen, voorvoegsel, achternaam)
    if learner.onderwijsnummer is not None and learner.onderwijsnummer.get_secret_value().strip():
        number = bsn_rules.normalise(learner.onderwijsnummer.get_secret_value())
        if not bsn_rules.is_nine_digits(number):
            raise Unsendable(f"the onderwijsnummer of student {student} is not 9 digits; correct it in the "
                             "learners directory", code="onderwijsnummer-invalid")
        return Deelnemer("onderwijsnummer", number, None, voornamen, voorvoegsel, achternaam)
    if learner.date_of_birth is not None:
        key = student.strip()  # an identifier: sent as it is, never re-spaced
        if _CONTROL.search(key) or any(c in key for c in "\t\n\r"):
            raise Unsendable(f"the student number {key!r} contains a control character; correct it in the source",
                             code="invalid-data")
        return Deelnemer("eigenDeelnemerSleutel", key, learner.date_of_birth, voornamen, voorvoegsel, achternaam)
    raise Unsendable(
        f"no BSN, onderwijsnummer or date of birth for student {student}: the register needs one of them; "
        "add bsn, onderwijsnummer or date_of_birth to the learners directory ([[learners]]), "
        "the record then goes by itself", code="no-identity")


def grade_text(result: Result) -> str:
    """The grade as the register takes it: the raw text (`7,5`, `V`), else the number, else `V`."""
    if result.grade_raw and result.grade_raw.strip():
        text = " ".join(result.grade_raw.split())   # at most 40 characters (Result)
        if _CONTROL.search(text):
            raise Unsendable("the grade contains a control character; correct it in the source export",
                             code="invalid-data")
        return text
    if result.grade_numeric is not None:
        return format(result.grade_numeric.normalize(), "f").replace(".", ",")
    return "V"


def studielast(record: MicrocredentialRecord) -> Decimal:
    return record.microcredential.ects


def own_unit_key(record: MicrocredentialRecord, brin: str) -> str:
    """The unit's own key, as sent when RIO is not in use (the RIO target uses the same key)."""
    key = record.microcredential.rio_eigen_sleutel(brin)
    if len(key) > 40:
        raise Unsendable(f"the own key of unit {record.microcredential.code} is longer than the register's "
                         "40 characters; set a shorter rio.eigen_sleutel in the mapping file", code="unit-key")
    return key


def resultaat(record: MicrocredentialRecord, eenheid: Eenheid, *, onderwijsaanbiedercode: str,
              person: Deelnemer | None = None) -> Resultaat:
    """The `<resultaat>` content of an awardable record (Unsendable if it cannot be expressed).

    `person` is `deelnemer(record.learner)` when the caller has it already.
    """
    mc = record.microcredential
    return Resultaat(
        record_id=str(record.record_id), deelnemer=person if person is not None else deelnemer(record.learner),
        eenheid=eenheid, onderwijsaanbiedercode=onderwijsaanbiedercode, datum_behaald=record.result.assessment_date,
        studielast=studielast(record), resultaat=grade_text(record.result), eqf=mc.eqf, nlqf=mc.nlqf)


def hash_view(record: MicrocredentialRecord, *, onderwijsaanbiedercode: str, brin: str,
              rio_enabled: bool) -> dict[str, Any]:
    """What `desired()` hashes: the register's content of this record, unit by reference kind."""
    mc = record.microcredential
    try:
        person: dict[str, Any] = deelnemer(record.learner).hash_view()
    except Unsendable as exc:  # the hash changes once the data is added, and the record goes by itself
        person = {"onbruikbaar": exc.code}
    try:
        grade = grade_text(record.result)
    except Unsendable as exc:
        grade = f"onbruikbaar:{exc.code}"
    unit_key = mc.rio_eigen_sleutel(brin)
    unit: dict[str, str] = {"via": "eigen", "sleutel": unit_key}
    if rio_enabled:
        unit = {"via": "rio", "code": mc.code, "sleutel": unit_key}
    return {
        "v": PAYLOAD_VERSION, "recordId": str(record.record_id), "deelnemer": person, "eenheid": unit,
        "onderwijsaanbiedercode": onderwijsaanbiedercode, "datumBehaald": record.result.assessment_date.isoformat(),
        "studielast": format(studielast(record).normalize(), "f"), "resultaat": grade,
        "eqf": mc.eqf, "nlqf": mc.nlqf}


_REDEN = {
    ResultStatus.FRAUD: "Fraude vastgesteld; het resultaat is ingetrokken",
    ResultStatus.FAILED: "Resultaat gecorrigeerd: niet behaald",
    ResultStatus.ABSENT: "Resultaat gecorrigeerd: niet deelgenomen",
    ResultStatus.EXEMPT: "Resultaat gecorrigeerd: vrijstelling, geen microcredential",
}


def intrekking(record_id: str, record: MicrocredentialRecord | None, reason: str | None = None) -> Intrekking:
    """The withdrawal of an accepted record that is no longer awardable, with the reason why.

    `reason` is the institution's own (`mcsync revoke --reason`, or a record gone from its export).
    """
    if reason:
        reden = reason[:200]
    elif record is None:
        reden = "Resultaat niet meer in de administratie van de instelling"
    else:
        reden = _REDEN.get(record.result.status, "Resultaat gecorrigeerd: niet meer behaald")
    return Intrekking(record_id=record_id, reden=reden)
