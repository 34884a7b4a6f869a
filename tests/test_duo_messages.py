"""The register's messages and rules: bodies valid against the contract's XSD, answers parsed as the
contract writes them, the elfproef, the hash, and the policy tables."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import uuid4

import pytest
from pydantic import SecretStr

from mcsync.record import ResultStatus
from mcsync.targets.base import TargetContext
from mcsync import personal_numbers as bsn
from mcsync.targets.duo import DuoRegisterTarget, DuoSettings, messages, payload
from mcsync.targets.duo.errors import Action, Outcome, get_action, post_action, regel_outcome
from mcsync.targets.duo.messages import MessageError, Regel, Signaal

from .conftest import SHARED, make_definition, make_record
from .duo_helpers import API_URL, XSD, assert_valid, bsns, failing_elfproef

NS = messages.NS
LID = "6f1c2a34-1b2c-4d5e-8f90-123456789abc"
RID = "0b7a6c5d-4e3f-5a2b-8c1d-0e9f8a7b6c5d"


def _corpus() -> list[bytes]:
    """Valid and broken register documents, to compare the shipped schema with the contract's."""
    ok_levering = (
        f'<levering xmlns="{NS}" leveringId="{LID}" oin="0000000700030GB00000" '
        'datumTijdLevering="2025-07-01T10:00:00Z"><resultaat recordId="' + RID + '"><deelnemer>'
        '<eigenDeelnemerSleutel>2210451</eigenDeelnemerSleutel><geboortedatum>2001-03-14</geboortedatum>'
        '<voorvoegsel>de</voorvoegsel><achternaam>Vries</achternaam></deelnemer>'
        '<opleidingseenheidcode>1011O5055</opleidingseenheidcode><onderwijsaanbiedercode>110A133'
        '</onderwijsaanbiedercode><datumBehaald>2025-06-27</datumBehaald><studielast>5.0</studielast>'
        '<resultaat>7,5</resultaat><eqf>6</eqf><nlqf>4+</nlqf></resultaat>'
        f'<intrekking recordId="{RID}" reden="Cijfer gecorrigeerd"/></levering>')
    broken = [
        ok_levering.replace("1011O5055", "1011X5055"),                      # unit code pattern
        ok_levering.replace("<studielast>5.0", "<studielast>5.25"),         # two decimals
        ok_levering.replace("<nlqf>4+</nlqf>", "<nlqf>9</nlqf>"),          # no such level
        ok_levering.replace("<voorvoegsel>de</voorvoegsel>", ""
                            ).replace("<achternaam>Vries</achternaam>", ""),  # no achternaam
        ok_levering.replace("<eigenDeelnemerSleutel>2210451</eigenDeelnemerSleutel>",
                            "<bsn>111222333</bsn><eigenDeelnemerSleutel>2210451</eigenDeelnemerSleutel>"),
        ok_levering.replace(LID, LID.upper()),                              # upper-case UUID
        ok_levering.replace(' reden="Cijfer gecorrigeerd"', ""),            # reden required
        ok_levering.replace("<eqf>6</eqf>", "<eqf>9</eqf>"),
    ]
    others = [
        f'<leveringOntvangen xmlns="{NS}" leveringId="{LID}" aantal="2" status="ontvangen"/>',
        f'<leveringOntvangen xmlns="{NS}" leveringId="{LID}" aantal="0" status="ontvangen"/>',
        f'<verwerkingsverslag xmlns="{NS}" leveringId="{LID}" status="verwerkt"><regel volgnummer="1" '
        f'recordId="{RID}" status="afgekeurd"><signaal code="R201" tekst="studielast"/></regel></verwerkingsverslag>',
        f'<verwerkingsverslag xmlns="{NS}" leveringId="{LID}" status="klaar"/>',
        f'<fout xmlns="{NS}" code="XSD001">element x</fout>',
    ]
    return [doc.encode() for doc in [ok_levering, *broken, *others]]


def test_the_shipped_schema_judges_documents_like_the_contract_schema() -> None:
    from importlib import resources

    from lxml import etree

    shipped = etree.XMLSchema(etree.fromstring(
        resources.files("mcsync.targets.duo").joinpath("schema/duo-register.xsd").read_bytes()))
    contract = etree.XMLSchema(etree.parse(str(XSD)))
    verdicts = []
    for document in _corpus():
        tree = etree.fromstring(document)
        assert shipped.validate(tree) == contract.validate(tree), document.decode()
        verdicts.append(contract.validate(tree))
    assert verdicts.count(True) == 4 and verdicts.count(False) == 10   # the corpus covers both


# elfproef and redaction ----------------------------------------------------------------------------

def test_elfproef_accepts_computed_numbers_and_rejects_one_digit_off() -> None:
    for number in bsns(20):
        assert bsn.passes_elfproef(number)
        assert not bsn.passes_elfproef(failing_elfproef(number))
    assert not bsn.passes_elfproef("000000000")
    assert not bsn.passes_elfproef("12345678")     # not normalised: 8 digits
    assert not bsn.passes_elfproef("12345678a")


def test_elfproef_arithmetic_by_hand() -> None:
    # 1*9 + 1*8 + 1*7 + 2*6 + 2*5 + 2*4 + 3*3 + 3*2 - 3*1 = 66 = 6 * 11
    assert bsn.passes_elfproef("111222333")
    # 1*9 + 2*8 + 3*7 + 4*6 + 5*5 + 6*4 + 7*3 + 8*2 - 9*1 = 147 = 13 * 11 + 4
    assert not bsn.passes_elfproef("123456789")


def test_normalise_pads_eight_digits_and_drops_separators() -> None:
    assert bsn.normalise("1112.22.333") == "111222333"
    assert bsn.normalise(" 11122233 ") == "011122233"


def test_redact_hides_nine_digit_numbers_only() -> None:
    text = bsn.redact("BSN 111222333 onbekend; code 1234O5678; record 1234567890")
    assert "111222333" not in text
    assert "1234O5678" in text and "1234567890" in text


# building ------------------------------------------------------------------------------------------

def _body(*entries: payload.Entry, levering_id: str = LID) -> bytes:
    return messages.levering(levering_id, "0000000700030GB00000", datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
                             [messages.element(e) for e in entries])


@pytest.mark.parametrize("learner", [
    {"bsn": SecretStr("111222333")},
    {"onderwijsnummer": SecretStr("103456789")},
    {"date_of_birth": date(2001, 4, 5)},
    {"date_of_birth": date(2001, 4, 5), "given_name": None, "family_name_prefix": None},
])
@pytest.mark.parametrize("unit", [payload.Eenheid(code="1234O5678"), payload.Eenheid(eigen_sleutel="eigen-1")])
def test_every_body_shape_is_valid_against_the_contract(issuer, learner, unit) -> None:
    record = make_record(issuer, **learner)
    entry = payload.resultaat(record, unit, onderwijsaanbiedercode="110A133")
    root = assert_valid(_body(entry, payload.intrekking(RID, None)))
    assert root.get("leveringId") == LID and root.get("oin") == "0000000700030GB00000"
    assert [child.tag for child in root] == [f"{{{NS}}}resultaat", f"{{{NS}}}intrekking"]


def test_body_carries_the_record_as_the_register_stores_it(issuer) -> None:
    definition = make_definition(ects=Decimal("7.5"), eqf=None, nlqf="4+")
    record = make_record(issuer, bsn=SecretStr("1112.22.333"), grade="7,5", definition=definition)
    entry = payload.resultaat(record, payload.Eenheid(code="1234O5678"), onderwijsaanbiedercode="110A133")
    root = assert_valid(_body(entry))
    content = messages.inhoud(root[0])
    assert content == {
        "@recordId": str(record.record_id), "deelnemer/bsn": "111222333", "deelnemer/voornamen": "Sanne",
        "deelnemer/voorvoegsel": "de", "deelnemer/achternaam": "Vries", "opleidingseenheidcode": "1234O5678",
        "onderwijsaanbiedercode": "110A133", "datumBehaald": "2025-06-27", "studielast": "7.5",
        "resultaat": "7,5", "nlqf": "4+"}


def test_the_same_entries_give_the_same_bytes(issuer) -> None:
    entry = payload.resultaat(make_record(issuer, bsn=SecretStr("111222333")), payload.Eenheid(code="1234O5678"),
                              onderwijsaanbiedercode="110A133")
    assert _body(entry) == _body(entry)


def test_a_thousand_records_stay_valid_and_a_thousand_and_one_do_not(issuer) -> None:
    entries = [payload.intrekking(str(uuid4()), None) for _ in range(1001)]
    assert_valid(_body(*entries[:1000]))
    root = messages.parse_xml(_body(*entries))
    assert messages.schema_errors(root)


def test_withdrawal_reasons_say_why(issuer) -> None:
    fraud = make_record(issuer, status=ResultStatus.FRAUD)
    failed = make_record(issuer, status=ResultStatus.FAILED)
    assert "Fraude" in payload.intrekking(RID, fraud).reden
    assert "niet behaald" in payload.intrekking(RID, failed).reden
    assert payload.intrekking(RID, None).reden


# identity ---------------------------------------------------------------------------------------

def test_identity_order_bsn_then_onderwijsnummer_then_student_number(issuer) -> None:
    both = make_record(issuer, bsn=SecretStr("111222333"), onderwijsnummer=SecretStr("103456789"),
                       date_of_birth=date(2001, 4, 5))
    assert payload.deelnemer(both.learner).soort == "bsn"
    onr = make_record(issuer, onderwijsnummer=SecretStr("103456789"), date_of_birth=date(2001, 4, 5))
    assert payload.deelnemer(onr.learner).soort == "onderwijsnummer"
    own = payload.deelnemer(make_record(issuer, "s-77", date_of_birth=date(2001, 4, 5)).learner)
    assert (own.soort, own.nummer, own.geboortedatum) == ("eigenDeelnemerSleutel", "s-77", date(2001, 4, 5))


@pytest.mark.parametrize(("learner", "code", "says"), [
    ({}, "no-identity", "add bsn, onderwijsnummer or date_of_birth to the learners directory"),
    ({"bsn": SecretStr("111222334")}, "bsn-elfproef", "the BSN of student 2210451 fails the elfproef"),
    ({"bsn": SecretStr("1112223")}, "bsn-invalid", "the BSN of student 2210451 is not 9 digits"),
    ({"onderwijsnummer": SecretStr("12")}, "onderwijsnummer-invalid", "onderwijsnummer of student 2210451"),
    ({"bsn": SecretStr("111222333"), "family_name": None}, "no-name", "no family name for student 2210451"),
    ({"bsn": SecretStr("111222333"), "family_name": "x" * 201}, "invalid-data", "longer than the register's 200"),
    ({"bsn": SecretStr("111222333"), "given_name": "An\x07na"}, "invalid-data", "control character"),
])
def test_unusable_identity_says_what_to_add_and_never_the_number(issuer, learner, code, says) -> None:
    record = make_record(issuer, **learner)
    with pytest.raises(payload.Unsendable) as caught:
        payload.deelnemer(record.learner)
    assert caught.value.code == code
    assert says in caught.value.message
    assert "111222334" not in caught.value.message and "1112223" not in caught.value.message


def test_a_student_number_xml_cannot_carry_is_unsendable(issuer) -> None:
    for number in ("22\x0b10451", "22\x0110451"):
        record = make_record(issuer, number, date_of_birth=date(2001, 4, 5), email=None)
        with pytest.raises(payload.Unsendable, match="control character"):
            payload.deelnemer(record.learner)
    assert payload.deelnemer(make_record(issuer, "22 10451", date_of_birth=date(2001, 4, 5),
                                         email=None).learner).nummer == "22 10451"


def test_the_own_unit_key_must_fit_the_register(issuer) -> None:
    record = make_record(issuer, definition=make_definition(rio={"eigen_sleutel": "k" * 41}))
    with pytest.raises(payload.Unsendable, match="longer than the register's 40"):
        payload.own_unit_key(record, "30GB")


def test_grade_text() -> None:
    from mcsync.record import Result
    assert payload.grade_text(Result(status="passed", grade_raw=" 7,5 ", assessment_date=date(2025, 1, 1))) == "7,5"
    assert payload.grade_text(Result(status="passed", grade_numeric=Decimal("8.50"),
                                     assessment_date=date(2025, 1, 1))) == "8,5"
    assert payload.grade_text(Result(status="passed", assessment_date=date(2025, 1, 1))) == "V"
    with pytest.raises(payload.Unsendable, match="grade"):
        payload.grade_text(Result(status="passed", grade_raw="7\x01", assessment_date=date(2025, 1, 1)))


# the desired hash -----------------------------------------------------------------------------------

def _target(issuer, *, rio_enabled: bool = True) -> DuoRegisterTarget:
    return DuoRegisterTarget(DuoSettings(api_url=API_URL), TargetContext(issuer=issuer,
                                                                         extra={"rio_enabled": rio_enabled}))


def test_desired_follows_what_the_register_stores(issuer) -> None:
    target = _target(issuer)
    base = make_record(issuer, bsn=SecretStr("111222333"))
    assert target.desired(base) == target.desired(base.model_copy(update={
        "provenance": base.provenance.model_copy(update={"file": "other.csv", "line": 99})}))
    same_but_email = base.model_copy(update={"learner": base.learner.model_copy(update={"email": "x@y.nl"})})
    assert target.desired(same_but_email) == target.desired(base)
    assert target.desired(make_record(issuer, bsn=SecretStr("111222333"), grade="8")) != target.desired(base)
    assert target.desired(make_record(issuer, status=ResultStatus.FAILED)) is None
    # the directory adds an identity later: the hash moves, so the parked record goes by itself
    nobody = make_record(issuer)
    assert target.desired(nobody) != target.desired(make_record(issuer, date_of_birth=date(2001, 4, 5)))
    # RIO switched on or off changes how the unit is referenced
    other = _target(issuer, rio_enabled=False)
    assert other.desired(base) != target.desired(base)
    for t in (target, other):
        asyncio.run(t.aclose())


def test_settings_enforce_the_register_limits() -> None:
    with pytest.raises(ValueError):
        DuoSettings(api_url=API_URL, batch_size=1001)
    with pytest.raises(ValueError):
        DuoSettings(api_url=API_URL, max_body_bytes=10 * 1024 * 1024)
    with pytest.raises(ValueError, match="https"):
        DuoSettings(api_url="http://register.duo.example/rmc/v1")
    with pytest.raises(ValueError, match="api_url is required"):
        DuoSettings()
    assert DuoSettings(enabled=False).api_url is None


def test_the_target_is_the_duo_entry_point_and_fits_the_protocol(issuer) -> None:
    from mcsync import plugins
    from mcsync.targets.base import Target
    assert plugins.load(plugins.TARGET_GROUP, "duo") is DuoRegisterTarget
    target = _target(issuer)
    assert isinstance(target, Target)
    assert (target.name, target.unit, target.depends_on, target.Settings) == ("duo", "record", ("rio",), DuoSettings)
    asyncio.run(target.aclose())


def test_the_target_refuses_an_issuer_without_oin(issuer) -> None:
    from mcsync.errors import ConfigError
    with pytest.raises(ConfigError, match="OIN"):
        DuoRegisterTarget(DuoSettings(api_url=API_URL),
                          TargetContext(issuer=issuer.model_copy(update={"oin": None})))


# reading the register's answers (written by hand from duo-register.md) ---------------------------

def test_parse_leveringontvangen() -> None:
    text = f'<leveringOntvangen xmlns="{NS}" leveringId="{LID}" aantal="3" status="ontvangen"/>'
    assert messages.parse_ontvangen(text.encode()) == messages.LeveringOntvangen(LID, 3)


def test_parse_verwerkingsverslag() -> None:
    text = (f'<?xml version="1.0" encoding="UTF-8"?><verwerkingsverslag xmlns="{NS}" leveringId="{LID}" '
            f'status="verwerkt"><regel volgnummer="1" recordId="{RID}" status="afgekeurd">'
            '<signaal code="R001" tekst="Deelnemer onbekend"/><signaal code="R201" tekst="Studielast"/></regel>'
            f'<regel volgnummer="2" recordId="{LID}" status="geaccepteerd"/></verwerkingsverslag>')
    report = messages.parse_verslag(text.encode())
    assert report.verwerkt
    assert report.regels[0].codes == ("R001", "R201") and report.regels[1].status == "geaccepteerd"
    busy = messages.parse_verslag(f'<verwerkingsverslag xmlns="{NS}" leveringId="{LID}" '
                                  'status="in_behandeling"/>'.encode())
    assert not busy.verwerkt and busy.regels == ()


def test_parse_geregistreerd_compares_content_not_notation() -> None:
    text = (f'<r:geregistreerdResultaat xmlns:r="{NS}" recordId="{RID}" leveringId="{LID}" status="geregistreerd">'
            f'<r:resultaat recordId="{RID}"><r:deelnemer><r:eigenDeelnemerSleutel>s1</r:eigenDeelnemerSleutel>'
            '<r:geboortedatum>2001-04-05</r:geboortedatum><r:achternaam>Vries</r:achternaam></r:deelnemer>'
            '<r:opleidingseenheidcode>1234O5678</r:opleidingseenheidcode>'
            '<r:onderwijsaanbiedercode>110A133</r:onderwijsaanbiedercode><r:datumBehaald>2025-06-27</r:datumBehaald>'
            '<r:studielast>5.0</r:studielast><r:resultaat> V </r:resultaat></r:resultaat></r:geregistreerdResultaat>')
    found = messages.parse_geregistreerd(text.encode())
    assert found.status == "geregistreerd" and found.levering_id == LID
    assert found.inhoud["studielast"] == "5" and found.inhoud["resultaat"] == "V"
    assert found.inhoud["deelnemer/eigenDeelnemerSleutel"] == "s1"


def test_parse_fout_and_non_fout() -> None:
    fout = messages.parse_fout(f'<fout xmlns="{NS}" code="LEV409">Andere inhoud</fout>'.encode())
    assert fout == messages.Fout("LEV409", "Andere inhoud")
    assert messages.parse_fout(b"<html>proxy error</html>") is None
    assert messages.parse_fout(b"") is None


def test_answers_outside_the_contract_are_refused() -> None:
    with pytest.raises(MessageError, match="schema"):
        messages.parse_ontvangen(f'<leveringOntvangen xmlns="{NS}" leveringId="{LID}" aantal="0" '
                                 'status="ontvangen"/>'.encode())
    with pytest.raises(MessageError, match="expected"):
        messages.parse_verslag(f'<leveringOntvangen xmlns="{NS}" leveringId="{LID}" aantal="1" '
                               'status="ontvangen"/>'.encode())


def test_entities_and_doctypes_are_never_expanded(tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    evil = (f'<?xml version="1.0"?><!DOCTYPE fout [<!ENTITY x SYSTEM "file://{secret}">]>'
            f'<fout xmlns="{NS}" code="X">&x;</fout>').encode()
    with pytest.raises(MessageError, match="DOCTYPE"):
        messages.parse_xml(evil)
    assert messages.parse_fout(evil) is None


# the policy tables -------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "code", "action"), [
    (202, None, Action.SUBMITTED), (400, "XSD001", Action.SPLIT), (400, "XSD002", Action.SPLIT),
    (400, "OTHER", Action.PARK), (403, "AUT001", Action.STOP), (401, None, Action.STOP),
    (409, "LEV409", Action.BUG), (413, "LEV413", Action.SPLIT), (413, None, Action.SPLIT),
    (429, None, Action.BACK_OFF), (503, "HTTP503", Action.BACK_OFF), (500, None, Action.UNKNOWN),
    (502, None, Action.UNKNOWN), (415, "LEV415", Action.PARK), (302, None, Action.UNKNOWN),
])
def test_post_policy(status, code, action) -> None:
    assert post_action(status, code) is action


@pytest.mark.parametrize(("status", "action"), [
    (200, Action.OK), (404, Action.NOT_FOUND), (429, Action.BACK_OFF), (503, Action.BACK_OFF),
    (500, Action.UNKNOWN), (403, Action.STOP), (400, Action.STOP),
])
def test_get_policy(status, action) -> None:
    assert get_action(status, None) is action


def _regel(status: str, *codes: str) -> Regel:
    return Regel(1, RID, status, tuple(Signaal(c, "t") for c in codes))


@pytest.mark.parametrize(("regel", "kind", "outcome"), [
    (_regel("geaccepteerd", "R000"), "resultaat", Outcome.ACCEPTED),
    (_regel("geaccepteerd", "R301"), "resultaat", Outcome.ACCEPTED),
    (_regel("geaccepteerd"), "intrekking", Outcome.ACCEPTED),
    (_regel("afgekeurd", "R900"), "resultaat", Outcome.RETRY),
    (_regel("afgekeurd", "R900", "R001"), "resultaat", Outcome.PARK),   # permanent wins
    (_regel("afgekeurd", "R401"), "intrekking", Outcome.NOT_HELD),
    (_regel("afgekeurd", "R401"), "resultaat", Outcome.PARK),
    (_regel("afgekeurd"), "resultaat", Outcome.PARK),
    (_regel("afgekeurd", "R999"), "resultaat", Outcome.PARK),
    *[(_regel("afgekeurd", c), "resultaat", Outcome.PARK) for c in ("R001", "R002", "R101", "R102", "R201", "R202")],
])
def test_signal_policy(regel, kind, outcome) -> None:
    assert regel_outcome(regel, kind)[0] is outcome


def test_shared_reference_is_where_the_tests_read_it() -> None:
    assert (SHARED / "duo-register.md").exists() and XSD.exists()
