from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from pydantic import ValidationError

from mcsync.record import RECORD_NAMESPACE, Learner, make_record_id, make_record_key

from .conftest import make_definition, make_record


def test_record_id_is_uuid5_of_brin_student_and_code():
    rid = make_record_id("30gb", " 2210451 ", "MC-DATA01")
    assert rid == uuid.uuid5(RECORD_NAMESPACE, "30GB\x1f2210451\x1fMC-DATA01")
    assert rid.version == 5
    assert rid != make_record_id("30GB", "2210451", "MC-CIRC02")


@pytest.mark.parametrize("number", ["2210451", " 2210451 ", "s-ø-ü-ß", "0" * 40, "x\u4e2d"])
@pytest.mark.parametrize("code", ["MC-DATA01", "mc data 02", " MC-Ä "])
def test_record_key_is_the_record_id_as_text(number, code):
    assert make_record_key("30gb", number, code) == str(make_record_id("30gb", number, code))


def test_same_learner_and_code_give_the_same_record_whatever_the_grade(issuer):
    a = make_record(issuer, grade="7.5")
    b = make_record(issuer, grade="8.0")
    assert a.record_id == b.record_id
    assert a.content_hash() != b.content_hash()


def test_provenance_is_not_content(issuer):
    a = make_record(issuer)
    b = a.model_copy(update={"provenance": a.provenance.model_copy(update={"file": "other.csv", "line": 99})})
    assert a.content_hash() == b.content_hash()


@pytest.mark.parametrize("ects", ["2.9", "31", "-3", "0"])
def test_quality_label_rejects_ects_outside_3_to_30(ects):
    with pytest.raises(ValidationError, match="outside 3–30"):
        make_definition(ects=Decimal(ects))


@pytest.mark.parametrize("ects", ["3", "30", "7.5"])
def test_quality_label_accepts_3_to_30(ects):
    assert make_definition(ects=Decimal(ects)).ects == Decimal(ects)


def test_nlqf_and_eqf_must_agree():
    assert make_definition(nlqf="4+", eqf=4).nlqf == "4+"
    with pytest.raises(ValidationError, match="corresponds to EQF 6"):
        make_definition(nlqf="6", eqf=5)
    with pytest.raises(ValidationError, match="NLQF level"):
        make_definition(nlqf="9", eqf=None)
    with pytest.raises(ValidationError, match="give the level"):
        make_definition(nlqf=None, eqf=None)


def test_eu_elements_are_all_present(issuer):
    elements = make_record(issuer).eu_elements()
    mandatory = [k for k in elements if not k.startswith("o")]
    assert len(mandatory) == 11 and all(elements[k] for k in mandatory)
    assert len([k for k in elements if k.startswith("o")]) == 5
    assert elements["3 country"] == "NL" and elements["7 workload (ECTS)"] == "5"


def test_bsn_is_never_printed_but_survives_the_state_round_trip(issuer):
    record = make_record(issuer, bsn="123456782")
    assert "123456782" not in repr(record) and "123456782" not in str(record.learner)
    back = type(record).from_state_json(record.to_state_json())
    assert back.learner.bsn is not None and back.learner.bsn.get_secret_value() == "123456782"
    assert back.content_hash() == record.content_hash()


def test_directory_is_authoritative_and_export_fills_gaps():
    export = Learner(student_number="1", given_name="Sam", email="sam@outlook.com")
    directory = Learner(student_number="1", given_name="Samuel", family_name="Jansen")
    merged = export.merged_with(directory)
    assert merged.given_name == "Samuel" and merged.family_name == "Jansen" and merged.email == "sam@outlook.com"


def test_stable_hash_is_sha256_of_canonical_json_whatever_the_values() -> None:
    import datetime
    import decimal
    import hashlib
    import json

    from mcsync.record import stable_hash

    value = {"b": [1, 2.5, None, True], "a": "ë\u2028x", "d": datetime.date(2024, 1, 2),
             "z": {"y": decimal.Decimal("7.50"), "x": "é"}}
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    assert stable_hash(value) == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
