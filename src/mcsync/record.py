"""The canonical microcredential record: what every adapter's rows become.

One `MicrocredentialRecord` per (institution BRIN, learner student number, microcredential code):
a learner holds a microcredential once (interface.md §3). Its `record_id` is a UUID5 of those
three values, so it is stable across runs, files and machines; a corrected grade or date is an
update of the same record, never a second award.

The record carries the EU Council Recommendation's (2022/C 243/02, Annex I) eleven mandatory
elements and its five optional ones; `eu_elements()` lists them by number:

    1 learner            `learner`                      7 workload        `microcredential.ects`
    2 title              `microcredential.title`        8 level           `microcredential.eqf/nlqf`
    3 country            `issuer.country`               9 assessment      `microcredential.assessment_type`
    4 awarding body      `issuer.name`                 10 participation   `microcredential.participation`
    5 date of issuing    `issued_on`                   11 quality assur.  `microcredential.quality_assurance`
    6 learning outcomes  `microcredential.learning_outcomes`
    optional: prerequisites, supervision (+ identity verification), grade achieved
    (`result.grade_raw`), integration/stackability, further information.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import uuid
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

#: Namespace of every record_id: uuid5(NAMESPACE_URL, "urn:mcsync:record").
RECORD_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:mcsync:record")
#: Namespace of the stable own keys mcsync derives for RIO (units and offerings).
CATALOGUE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:mcsync:catalogue")

ECTS_MIN = Decimal(3)
ECTS_MAX = Decimal(30)
NLQF_LEVELS = ("instroom", "1", "2", "3", "4", "4+", "5", "6", "7", "8")


def make_record_id(brin: str, student_number: str, microcredential_code: str) -> uuid.UUID:
    """The stable identity of a record: uuid5 over BRIN, student number and code.

    The three values are normalised (surrounding white space removed, BRIN upper-cased) and
    joined with a unit separator that cannot occur in any of them.
    """
    parts = (brin.strip().upper(), student_number.strip(), microcredential_code.strip())
    return uuid.uuid5(RECORD_NAMESPACE, "\x1f".join(parts))


_RECORD_NAMESPACE_BYTES = RECORD_NAMESPACE.bytes

#: On the same result date, which status a duplicate row keeps (higher wins).
_STATUS_RANK = {"fraud": 4, "passed": 3, "exempt": 2, "failed": 1, "absent": 0}


def result_rank(assessment_date: date, status: str) -> int:
    """Which of two results for one record wins (higher): the later date; on the same date fraud
    beats passed beats exempt beats failed beats absent."""
    return assessment_date.toordinal() * 8 + _STATUS_RANK[status]


def make_record_key(brin: str, student_number: str, microcredential_code: str) -> str:
    """`str(make_record_id(...))`, written directly: the engine computes one for every row it reads,
    and building a UUID object only to print it costs three times as much. The same RFC 4122 steps
    as `uuid.uuid5`: SHA-1 over namespace and name, the first 16 bytes, version 5, RFC variant."""
    name = "\x1f".join((brin.strip().upper(), student_number.strip(), microcredential_code.strip()))
    raw = bytearray(hashlib.sha1(_RECORD_NAMESPACE_BYTES + name.encode("utf-8")).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _nonempty_langs(value: dict[str, str]) -> dict[str, str]:
    cleaned = {lang.strip().lower(): text.strip() for lang, text in value.items() if text and text.strip()}
    if not cleaned:
        raise ValueError("needs a text in at least one language, e.g. { nl = \"...\" }")
    return cleaned


#: Text in one or more languages, keyed by ISO 639-1 code: {"nl": "...", "en": "..."}.
LocalizedText = Annotated[dict[str, str], AfterValidator(_nonempty_langs)]


def pick_language(text: dict[str, str], *preferred: str) -> str:
    """The text in the first preferred language present, else in any language."""
    for lang in preferred:
        if lang in text:
            return text[lang]
    return next(iter(text.values()))


class ResultStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    EXEMPT = "exempt"      # met, but never issued
    ABSENT = "absent"
    FRAUD = "fraud"        # never issued; withdraws what was issued


class Participation(StrEnum):
    ONLINE = "online"
    ONSITE = "onsite"
    BLENDED = "blended"
    WORK_EXPERIENCE = "work_experience"


class Supervision(StrEnum):
    UNSUPERVISED = "unsupervised_no_id_verification"
    UNSUPERVISED_WITH_ID = "unsupervised_with_id_verification"
    SUPERVISED = "supervised_no_id_verification"
    SUPERVISED_WITH_ID = "supervised_with_id_verification"


class QualityAssurance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    url: str | None = None
    description: str | None = None
    type: str | None = None


class Stackability(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["standalone", "stackable", "integrated"] = "standalone"
    target_code: str | None = None


class EdubadgesRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    badgeclass: str = Field(min_length=1, description="badge class entity_id in Edubadges")


class RioRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hoOnderwijseenheid", "particuliereOpleiding"] = "hoOnderwijseenheid"
    eigen_sleutel: str | None = Field(default=None, max_length=60,
                                      description="own key of the unit; default a stable uuid5")
    offering_code: str | None = Field(default=None, description="aangebodenOpleidingCode; default a stable uuid5")
    onderwijslocatiecode: str | None = None
    waardedocumentsoort: str = "CERTIFICAAT"
    niveau: str = "ONBEPAALD"


class MicrocredentialDefinition(BaseModel):
    """One `[[microcredentials]]` entry of a mapping file: what the unit of education is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(min_length=1, max_length=60)
    title: LocalizedText
    description: LocalizedText | None = None
    learning_outcomes: list[LocalizedText] = Field(min_length=1)
    ects: Decimal
    study_load_hours: int | None = Field(default=None, ge=1)
    eqf: int | None = Field(default=None, ge=1, le=8)
    nlqf: str | None = None
    assessment_type: str = Field(min_length=1)
    participation: Participation
    quality_assurance: QualityAssurance
    supervision: Supervision | None = None
    identity_verified: bool | None = None
    prerequisites: list[str] = Field(default_factory=list)
    stackability: Stackability | None = None
    further_info_url: str | None = None
    language: str = Field(default="nl", pattern=r"^[a-z]{2}$")
    isced: str | None = Field(default=None, pattern=r"^\d{2,4}$")
    start_date: date | None = None
    end_date: date | None = None
    edubadges: EdubadgesRef | None = None
    rio: RioRef | None = None

    @field_validator("code")
    @classmethod
    def _strip_code(cls, v: str) -> str:
        return v.strip()

    @field_validator("ects")
    @classmethod
    def _ects_in_quality_label_range(cls, v: Decimal) -> Decimal:
        if v < ECTS_MIN or v > ECTS_MAX:
            raise ValueError(
                f"{v} ECTS is outside 3–30: the Dutch microcredential quality label covers units "
                "of 3 to 30 ECTS only")
        if v.as_tuple().exponent < -1:  # type: ignore[operator]
            raise ValueError(f"{v} ECTS has more than one decimal")
        return v

    @field_validator("nlqf", mode="before")
    @classmethod
    def _nlqf_level(cls, v: Any) -> Any:
        if v is None:
            return v
        text = str(v).strip().lower()
        if text not in NLQF_LEVELS:
            raise ValueError(f"NLQF level {v!r} is not one of {', '.join(NLQF_LEVELS)}")
        return text

    @model_validator(mode="after")
    def _levels_agree(self) -> MicrocredentialDefinition:
        if self.eqf is None and self.nlqf is None:
            raise ValueError("give the level: eqf (1–8) and/or nlqf (EU element 8)")
        # NLQF 1–8 map one to one to EQF 1–8; 4+ maps to 4; the entry level has no EQF level.
        if self.eqf is not None and self.nlqf not in (None, "instroom"):
            expected = 4 if self.nlqf == "4+" else int(self.nlqf)
            if expected != self.eqf:
                raise ValueError(f"nlqf {self.nlqf} corresponds to EQF {expected}, not eqf {self.eqf}")
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError("end_date lies before start_date")
        return self

    def rio_eigen_sleutel(self, brin: str) -> str:
        """The unit's own key in RIO: configured, else a uuid5 of BRIN and code (stable)."""
        if self.rio and self.rio.eigen_sleutel:
            return self.rio.eigen_sleutel
        return _catalogue_key("unit", brin, self.code)

    def rio_offering_code(self, brin: str) -> str:
        """The offering's aangebodenOpleidingCode: configured, else a uuid5 (stable)."""
        if self.rio and self.rio.offering_code:
            return self.rio.offering_code
        return _catalogue_key("offering", brin, self.code)


@functools.lru_cache(maxsize=4096)
def _catalogue_key(kind: str, brin: str, code: str) -> str:
    """uuid5 of (kind, BRIN, code): asked for once per record, computed once per microcredential."""
    return str(uuid.uuid5(CATALOGUE_NAMESPACE, f"{kind}\x1f{brin.upper()}\x1f{code}"))


class Issuer(BaseModel):
    """The awarding body (EU elements 3 and 4) and its national identifiers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    country: str = Field(pattern=r"^[A-Z]{2}$")
    brin: str = Field(pattern=r"^[0-9]{2}[A-Z]{2}$")
    oin: str | None = Field(default=None, pattern=r"^[0-9A-Z]{20}$")
    onderwijsaanbiedercode: str | None = Field(default=None, pattern=r"^\d{3}A\d{3}$")


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Learner(BaseModel):
    """EU element 1. Personal numbers are secrets: never printed, never logged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    student_number: str = Field(min_length=1, max_length=40)
    given_name: str | None = None
    family_name_prefix: str | None = None
    family_name: str | None = None
    email: str | None = None
    eppn: str | None = None
    date_of_birth: date | None = None
    bsn: SecretStr | None = None
    onderwijsnummer: SecretStr | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not _EMAIL.match(v):
            raise ValueError("is not an e-mail address")
        return v

    @property
    def full_name(self) -> str:
        return " ".join(p for p in (self.given_name, self.family_name_prefix, self.family_name) if p)

    def merged_with(self, directory: Learner | dict[str, Any] | None) -> Learner:
        """This learner completed from the SIS directory, which is authoritative for personal data.

        The directory's values win (the LMS may hold a nickname or a private e-mail address); the
        export fills only what the directory lacks. `directory` may also be a directory entry as the
        state store keeps it (a Learner's JSON form, personal numbers in clear): validated once, merged.
        """
        if directory is None:
            return self
        mine = self.model_dump(exclude_none=True)
        theirs = (directory.model_dump(exclude_none=True) if isinstance(directory, Learner)
                  else {key: value for key, value in directory.items() if value is not None})
        return Learner.model_validate({**mine, **theirs})


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    status: ResultStatus
    grade_raw: str | None = Field(default=None, max_length=40)
    grade_numeric: Decimal | None = None
    assessment_date: date


class Provenance(BaseModel):
    """Where the result came from. Not part of the content hash: moving a row is no change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    file: str
    line: int | None = None


class MicrocredentialRecord(BaseModel):
    """One learner's result for one microcredential, with everything the targets need."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record_id: uuid.UUID
    issuer: Issuer
    learner: Learner
    microcredential: MicrocredentialDefinition
    result: Result
    provenance: Provenance

    @classmethod
    def build(cls, *, issuer: Issuer, learner: Learner, microcredential: MicrocredentialDefinition,
              result: Result, provenance: Provenance, record_id: uuid.UUID | None = None) -> MicrocredentialRecord:
        """`record_id`, when the caller computed it already, must be `make_record_id` of the same three."""
        return cls(
            record_id=record_id or make_record_id(issuer.brin, learner.student_number, microcredential.code),
            issuer=issuer, learner=learner, microcredential=microcredential,
            result=result, provenance=provenance)

    @property
    def awardable(self) -> bool:
        """Only a passed result leads to an award."""
        return self.result.status is ResultStatus.PASSED

    @property
    def issued_on(self) -> date:
        """EU element 5: the date the result was obtained is the date of issuing."""
        return self.result.assessment_date

    def eu_elements(self) -> dict[str, Any]:
        """The EU standard elements by name, mandatory first (for display and tests)."""
        mc = self.microcredential
        return {
            "1 learner": self.learner.full_name or self.learner.student_number,
            "2 title": mc.title,
            "3 country": self.issuer.country,
            "4 awarding body": self.issuer.name,
            "5 date of issuing": self.issued_on.isoformat(),
            "6 learning outcomes": mc.learning_outcomes,
            "7 workload (ECTS)": str(mc.ects),
            "8 level": {"eqf": mc.eqf, "nlqf": mc.nlqf},
            "9 type of assessment": mc.assessment_type,
            "10 form of participation": mc.participation.value,
            "11 quality assurance": mc.quality_assurance.name,
            "o1 prerequisites": mc.prerequisites or None,
            "o2 supervision": mc.supervision.value if mc.supervision else None,
            "o3 grade achieved": self.result.grade_raw,
            "o4 stackability": mc.stackability.mode if mc.stackability else None,
            "o5 further information": mc.further_info_url,
        }

    def to_state_json(self) -> str:
        """Serialise whole for the state store, personal numbers included (the store is private)."""
        return _reveal(self.model_dump_json(), self.learner, ("learner",))

    @classmethod
    def from_state_json(cls, text: str) -> MicrocredentialRecord:
        return cls.model_validate_json(text)

    def to_state_parts(self) -> str:
        """The record without its definition, for the state store (which keeps each definition once,
        by `definition_digest`): a tenth of the size, and read back without re-validating the definition."""
        parts = _StoredParts(issuer=self.issuer, learner=self.learner, result=self.result, provenance=self.provenance)
        return _reveal(parts.model_dump_json(), self.learner, ("learner",))

    @classmethod
    def from_state_parts(cls, record_id: str, text: str,
                         definition: MicrocredentialDefinition) -> MicrocredentialRecord:
        """The inverse of `to_state_parts`, given the (already validated) definition."""
        parts = _StoredParts.model_validate_json(text)
        # every part is a validated model already: assembling them needs no second validation pass
        # (which would also run the definition's validators again, once per record read)
        return cls.model_construct(record_id=uuid.UUID(record_id), issuer=parts.issuer, learner=parts.learner,
                                   microcredential=definition, result=parts.result, provenance=parts.provenance)

    def content_hash(self) -> str:
        """Hash of everything but provenance: the same result read from another file is no change."""
        digest = hashlib.sha256()
        digest.update(definition_digest(self.microcredential).encode())
        for part in (self.issuer, self.learner, self.result):
            digest.update(b"\x1e" + part.model_dump_json().encode())
        for secret in (self.learner.bsn, self.learner.onderwijsnummer):   # masked in model_dump_json
            digest.update(b"\x1e" + (secret.get_secret_value().encode() if secret else b""))
        return digest.hexdigest()


class _StoredParts(BaseModel):
    """A record as the state store keeps it: everything but the definition (kept once, by digest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: Issuer
    learner: Learner
    result: Result
    provenance: Provenance


def _reveal(text: str, learner: Learner, path: tuple[str, ...]) -> str:
    """`text` (a model's JSON, secrets masked) with the learner's personal numbers in clear."""
    if learner.bsn is None and learner.onderwijsnummer is None:
        return text
    data = json.loads(text)
    node = data
    for key in path:
        node = node[key]
    for name in ("bsn", "onderwijsnummer"):
        secret = getattr(learner, name)
        node[name] = secret.get_secret_value() if secret else None
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


_definition_digests: dict[int, tuple[MicrocredentialDefinition, str]] = {}


def definition_digest(definition: MicrocredentialDefinition) -> str:
    """A definition's content hash, computed once per (immutable) definition object."""
    cached = _definition_digests.get(id(definition))
    if cached is not None and cached[0] is definition:
        return cached[1]
    value = hashlib.sha256(definition.model_dump_json().encode()).hexdigest()
    if len(_definition_digests) > 4096:
        _definition_digests.clear()
    _definition_digests[id(definition)] = (definition, value)
    return value


#: What `stable_hash` writes: `json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
#: default=str)` is exactly this encoder's `encode(data)`; made once, not per call (it runs per record).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def stable_hash(data: Any) -> str:
    """SHA-256 over canonical JSON; used for every 'did this change?' comparison."""
    return hashlib.sha256(_CANONICAL.encode(data).encode("utf-8")).hexdigest()
