"""The RIO target's flow against the simulator, with a real SQLite state store."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from mcsync.errors import ConfigError, TargetUnavailable
from mcsync.sandbox.base import mock_transport
from mcsync.sandbox.rio import RioSimulator, verify_signature
from mcsync.state.sqlite import SqliteLedger, SqliteStateStore
from mcsync.targets.base import DeliveryState, WorkItem, catalogue_key
from mcsync.targets.rio import RioTarget
from mcsync.targets.rio.errors import PERMANENT

from .rio_helpers import (
    ISSUER,
    FakeClock,
    Pki,
    body_of,
    context,
    definition,
    duo_errors,
    make_pki,
    settings,
    sync,
)

KEY = catalogue_key("MC-DATA01")
T = TypeVar("T")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStateStore]:
    db = SqliteStateStore(tmp_path / "state.db")
    yield db
    db.close()


@pytest.fixture
def sim(clock: FakeClock) -> RioSimulator:
    return RioSimulator(visibility_delay=3.0, require_signature=True, clock=clock.now)


def target_for(sim: RioSimulator, pki: Pki, clock: FakeClock, **changes: object) -> RioTarget:
    return RioTarget(settings(pki, **changes), context(), transport=mock_transport(sim, "/rio"),
                     sleep=clock.sleep, clock=clock.now)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _sync_and_close(target: RioTarget, store: SqliteStateStore, defs: dict) -> None:
    try:
        await sync(target, store, defs)
    finally:
        await target.aclose()


def deliver(sim: RioSimulator, pki: Pki, clock: FakeClock, store: SqliteStateStore, defs: dict,
            **changes: object) -> None:
    run(_sync_and_close(target_for(sim, pki, clock, **changes), store, defs))


def row(store: SqliteStateStore, key: str = KEY):
    return store.rows("rio", [key])[key]


def test_registers_unit_and_offering_with_valid_signed_requests(sim, pki, clock, store) -> None:
    mc = definition()
    deliver(sim, pki, clock, store, {"MC-DATA01": mc})

    r = row(store)
    assert r.state is DeliveryState.SYNCED
    assert r.delivered_hash == r.desired_hash is not None
    code = r.remote.remote_id
    assert code is not None and code.startswith("1011O")
    own_key = mc.rio_eigen_sleutel(ISSUER.brin)
    # the contract with the DUO target
    assert r.remote.data["opleidingseenheidcode"] == code
    assert r.remote.data["aangebodenOpleidingCode"] == mc.rio_offering_code(ISSUER.brin)
    assert r.remote.data["eigenOpleidingseenheidSleutel"] == own_key
    assert sim.unit_codes(own_key) == [code]
    assert sim.offering_codes() == [mc.rio_offering_code(ISSUER.brin)]

    ops = [c.operation for c in sim.calls]
    assert ops[0] == "opvragen_rioIdentificatiecode"                    # resolve first
    assert ops.count("aanleveren_opleidingseenheid") == 1
    assert ops.count("aanleveren_aangebodenOpleiding") == 1
    assert ops.index("aanleveren_opleidingseenheid") < ops.index("aanleveren_aangebodenOpleiding")
    for call in sim.calls:
        # every request valid against DUO's own XSD, and signed over all six parts
        assert duo_errors(body_of(call.envelope)) == [], call.operation
        from lxml import etree
        verify_signature(etree.fromstring(call.envelope), now=clock.now())
    # fresh ids per message
    bodies = [body_of(c.envelope) for c in sim.calls]
    ids = [b.findtext(f"{{{etree.QName(b).namespace}}}identificatiecodeBedrijfsdocument") for b in bodies]
    assert len(set(ids)) == len(ids)


def test_unchanged_definition_sends_nothing_the_second_time(sim, pki, clock, store) -> None:
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    before = len(sim.calls)
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    assert len(sim.calls) == before
    assert sim.writes() and all(c.operation for c in sim.writes())


def test_changed_title_sends_the_unit_again_in_full_with_its_code(sim, pki, clock, store) -> None:
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    code = row(store).remote.remote_id
    writes = len(sim.writes())
    changed = definition(title={"nl": "Data-analyse met Python en SQL", "en": "Data analysis with Python"})
    clock.advance(10)
    deliver(sim, pki, clock, store, {"MC-DATA01": changed})

    new_writes = sim.writes()[writes:]
    units = [c for c in new_writes if c.operation == "aanleveren_opleidingseenheid"]
    assert len(units) == 1
    unit = body_of(units[0].envelope)
    ns = {"d": "http://duo.nl/schema/DUO_RIO_Beheren_OnderwijsOrganisatie_V4"}
    assert unit.findtext("d:hoOnderwijseenheid/d:opleidingseenheidcode", namespaces=ns) == code
    assert unit.findtext("d:hoOnderwijseenheid/d:hoOnderwijseenheidPeriode/d:naamLang", namespaces=ns) == \
        "Data-analyse met Python en SQL"
    # in full: every field is there again, not only the changed one
    assert unit.findtext("d:hoOnderwijseenheid/d:hoOnderwijseenheidPeriode/d:studielast", namespaces=ns) == "5"
    assert unit.findtext("d:hoOnderwijseenheid/d:ISCED", namespaces=ns) == "061"
    assert [c.operation for c in new_writes].count("aanleveren_aangebodenOpleiding") == 1  # its name changed too
    r = row(store)
    assert r.state is DeliveryState.SYNCED and r.remote.remote_id == code
    assert sim.unit_codes(definition().rio_eigen_sleutel(ISSUER.brin)) == [code]
    clock.advance(10)
    naam = sim.unit_element(code, visible_only=True).findtext(
        "d:hoOnderwijseenheidPeriode/d:naamLang", namespaces=ns)
    assert naam == "Data-analyse met Python en SQL"


def test_polls_until_visible(sim, pki, clock, store) -> None:
    sim.visibility_delay = __import__("datetime").timedelta(seconds=7)
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    assert row(store).state is DeliveryState.SYNCED
    lookups = [c for c in sim.calls if c.operation == "opvragen_rioIdentificatiecode"]
    assert len(lookups) > 3            # A01161 a few times before it showed
    assert sum(clock.slept) >= 7


def test_gives_up_after_confirm_timeout_and_confirms_next_run(pki, clock, store) -> None:
    sim = RioSimulator(visibility_delay=120.0, clock=clock.now)
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()}, confirm_timeout=20.0)
    r = row(store)
    assert r.state is DeliveryState.SUBMITTED
    assert "not shown it after 20 s" in (r.note or "")
    assert r.remote.remote_id is None and "opleidingseenheidcode" not in r.remote.data
    assert r.delivered_hash is None
    writes = len(sim.writes())
    assert [c.operation for c in sim.writes()] == ["aanleveren_opleidingseenheid"]

    clock.advance(200)     # RIO shows the unit now; the offering goes out and is slow too
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()}, confirm_timeout=20.0)
    r = row(store)
    assert r.state is DeliveryState.SUBMITTED and "offering" in (r.note or "")
    assert r.remote.remote_id is not None             # the unit is visible: the DUO target may use it
    assert r.delivered_hash is None                   # but the row is confirmed only with its offering
    assert [c.operation for c in sim.writes()[writes:]] == ["aanleveren_aangebodenOpleiding"]

    clock.advance(200)
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()}, confirm_timeout=20.0)
    r = row(store)
    assert r.state is DeliveryState.SYNCED
    assert len(sim.writes()) == writes + 1            # nothing was sent twice


@pytest.mark.parametrize("code", sorted(PERMANENT))
def test_permanent_codes_park_with_duos_code_and_text(sim, pki, clock, store, code) -> None:
    sim.reject_next("aanleveren_opleidingseenheid", code=code, text=f"tekst van DUO bij {code}")
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    r = row(store)
    assert r.state is DeliveryState.FAILED
    assert r.error_code == code
    failures = store.failures("rio")
    assert len(failures) == 1 and failures[0].code == code
    assert f"tekst van DUO bij {code}" in failures[0].reason
    assert [c.operation for c in sim.writes()] == ["aanleveren_opleidingseenheid"]  # never retried alone


def test_aut401_from_an_unauthorised_sender(pki, clock, store) -> None:
    sim = RioSimulator(clock=clock.now, authorised_senders={"0000000700025BE00000"})
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    r = row(store)
    assert r.state is DeliveryState.FAILED and r.error_code == "AUT401"
    assert "Er is geen autorisatie voor deze bewerking" in (r.note or "")


def test_unknown_location_parks_the_offering_after_the_unit(pki, clock, store) -> None:
    sim = RioSimulator(clock=clock.now, known_locations={"107X215"})
    mc = definition(rio={"kind": "hoOnderwijseenheid", "onderwijslocatiecode": "999X999"})
    deliver(sim, pki, clock, store, {"MC-DATA01": mc})
    r = row(store)
    assert r.state is DeliveryState.FAILED and r.error_code == "A01060"
    assert r.remote.remote_id is not None      # the unit is there and recorded for the DUO target
    assert sim.offering_codes() == []


def test_soap_faults_are_retried_and_succeed(sim, pki, clock, store) -> None:
    sim.fail_next("aanleveren_opleidingseenheid", code="Server.DK0050", times=2)
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    assert row(store).state is DeliveryState.SYNCED
    assert [c.operation for c in sim.writes()].count("aanleveren_opleidingseenheid") == 3
    assert len(sim.unit_codes(definition().rio_eigen_sleutel(ISSUER.brin))) == 1


def test_persistent_fault_stops_the_target_and_the_next_run_succeeds(sim, pki, clock, store) -> None:
    sim.fail_next("aanleveren_opleidingseenheid", code="Server.DK0051", times=3)
    with pytest.raises(TargetUnavailable, match="DK0051") as caught:
        deliver(sim, pki, clock, store, {"MC-DATA01": definition(), "MC-ZZ": definition("MC-ZZ")}, concurrency=1)
    assert "unavailable" in caught.value.hint
    r = row(store)
    assert r.state is DeliveryState.PENDING and "DK0051" in (r.note or "")     # not applied: plain pending
    assert row(store, catalogue_key("MC-ZZ")).state is DeliveryState.PENDING     # left queued, untouched
    assert [c.operation for c in sim.writes()] == ["aanleveren_opleidingseenheid"] * 3
    deliver(sim, pki, clock, store, {"MC-DATA01": definition(), "MC-ZZ": definition("MC-ZZ")})
    assert {r.state for r in store.rows("rio", [KEY, catalogue_key("MC-ZZ")]).values()} == {DeliveryState.SYNCED}


def test_signature_refused_by_duo_stops_the_target(pki, clock, store) -> None:
    sim = RioSimulator(clock=clock.now)
    with pytest.raises(TargetUnavailable, match="EK0031") as caught:
        deliver(sim, pki, clock, store, {"MC-DATA01": definition()}, sign=False)
    assert "signature" in caught.value.hint
    assert row(store).state is DeliveryState.PENDING


def test_a_message_duo_finds_not_schema_valid_stays_with_its_microcredential(sim, pki, clock, store) -> None:
    sim.fail_next("aanleveren_opleidingseenheid", code="Client.DK0004", text="Bericht is niet XSD-conform",
                  times=3)
    deliver(sim, pki, clock, store, {"MC-DATA01": definition(), "MC-ZZ": definition("MC-ZZ")}, concurrency=1)
    assert row(store).state is DeliveryState.PENDING and row(store).error_code is None
    assert "DK0004" in (row(store).note or "")
    assert row(store, catalogue_key("MC-ZZ")).state is DeliveryState.SYNCED


def test_temporary_rejection_is_retried_then_parked_after_max_attempts(sim, pki, clock, store) -> None:
    sim.reject_next("aanleveren_opleidingseenheid", code="P02070", text="Perioden sluiten niet aan", times=10)
    for _ in range(3):
        deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
        assert row(store).state is DeliveryState.PENDING
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    r = row(store)
    assert r.state is DeliveryState.FAILED and r.error_code == "P02070"
    assert "gave up after 4 attempts" in (r.note or "")


def test_crash_after_aanleveren_before_recording_resolves_by_own_key(sim, pki, clock, store) -> None:
    mc = definition()
    own_key = mc.rio_eigen_sleutel(ISSUER.brin)
    sim.drop_next("aanleveren_opleidingseenheid")     # applied by RIO, answer lost
    deliver(sim, pki, clock, store, {"MC-DATA01": mc})
    r = row(store)
    assert r.state is DeliveryState.IN_FLIGHT
    assert r.remote.data["progress"]["pending"]["op"] == "unit"
    assert len(sim.unit_codes(own_key)) == 1

    before = len(sim.calls)
    deliver(sim, pki, clock, store, {"MC-DATA01": mc})
    r = row(store)
    assert r.state is DeliveryState.SYNCED
    assert sim.unit_codes(own_key) == [r.remote.remote_id]          # no duplicate unit
    new = [c.operation for c in sim.calls[before:]]
    assert new[0] == "opvragen_rioIdentificatiecode"                 # looked up before anything else
    assert "aanleveren_opleidingseenheid" not in new                 # RIO already holds this content
    assert "opvragen_opleidingseenheid" in new


def test_crash_while_rio_hides_the_unit_never_creates_a_second_one(pki, clock, store) -> None:
    sim = RioSimulator(visibility_delay=500.0, clock=clock.now)
    mc = definition()
    own_key = mc.rio_eigen_sleutel(ISSUER.brin)
    sim.drop_next("aanleveren_opleidingseenheid")
    deliver(sim, pki, clock, store, {"MC-DATA01": mc}, confirm_timeout=30.0)
    assert row(store).state is DeliveryState.IN_FLIGHT

    clock.advance(60)   # past confirm_timeout, RIO still hides the unit: the create is repeated
    deliver(sim, pki, clock, store, {"MC-DATA01": mc}, confirm_timeout=30.0)
    r = row(store)
    assert r.state is DeliveryState.SUBMITTED
    assert "own key is in use" in (r.note or "") or "although its own key is in use" in (r.note or "")
    assert len(sim.unit_codes(own_key)) == 1

    clock.advance(600)     # RIO shows the first unit: adopted, its offering goes out (slow as well)
    deliver(sim, pki, clock, store, {"MC-DATA01": mc}, confirm_timeout=30.0)
    assert sim.unit_codes(own_key) == [row(store).remote.remote_id]
    clock.advance(600)
    deliver(sim, pki, clock, store, {"MC-DATA01": mc}, confirm_timeout=30.0)
    r = row(store)
    assert r.state is DeliveryState.SYNCED
    assert sim.unit_codes(own_key) == [r.remote.remote_id]
    assert [c.operation for c in sim.writes()].count("aanleveren_opleidingseenheid") == 2  # 2nd got P01081


def test_dropped_offering_answer_is_reconciled(sim, pki, clock, store) -> None:
    sim.drop_next("aanleveren_aangebodenOpleiding")
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    r = row(store)
    assert r.state is DeliveryState.IN_FLIGHT and r.remote.remote_id is not None
    clock.advance(10)
    before = len(sim.writes())
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    assert row(store).state is DeliveryState.SYNCED
    assert sim.writes()[before:] == []          # the lookup showed the first create landed
    assert len(sim.offering_codes()) == 1


def test_withdrawal_deletes_offering_then_unit(sim, pki, clock, store) -> None:
    mc = definition()
    deliver(sim, pki, clock, store, {"MC-DATA01": mc})
    clock.advance(10)
    deliver(sim, pki, clock, store, {"MC-DATA01": None})
    r = row(store)
    assert r.state is DeliveryState.SYNCED and r.delivered_hash is None and r.desired_hash is None
    assert r.remote.remote_id is None and "opleidingseenheidcode" not in r.remote.data
    ops = [c.operation for c in sim.writes()]
    assert ops[-2:] == ["verwijderen_aangebodenOpleiding", "verwijderen_opleidingseenheid"]
    assert sim.unit_codes(mc.rio_eigen_sleutel(ISSUER.brin)) == []
    assert sim.offering_codes() == []
    for call in sim.writes()[-2:]:
        assert duo_errors(body_of(call.envelope)) == []


def test_private_unit_flow(sim, pki, clock, store) -> None:
    mc = definition("MC-PRIV", rio={"kind": "particuliereOpleiding"}, isced=None)
    deliver(sim, pki, clock, store, {"MC-PRIV": mc})
    r = row(store, catalogue_key("MC-PRIV"))
    assert r.state is DeliveryState.SYNCED
    kinds = [body_of(c.envelope)[4].tag.split("}")[1] for c in sim.writes()]
    assert kinds == ["particuliereOpleiding", "aangebodenParticuliereOpleiding"]


def test_fractional_ects_is_reported_before_sending(sim, pki, clock, store) -> None:
    deliver(sim, pki, clock, store, {"MC-DATA01": definition(ects=Decimal("7.5"))})
    r = row(store)
    assert r.state is DeliveryState.FAILED
    assert "7.5" in (r.note or "") and "study_load_hours" in (r.note or "")
    assert sim.calls == []


def test_fractional_ects_with_hours_goes_as_sbu(sim, pki, clock, store) -> None:
    deliver(sim, pki, clock, store, {"MC-DATA01": definition(ects=Decimal("7.5"), study_load_hours=210)})
    assert row(store).state is DeliveryState.SYNCED
    unit = body_of(sim.writes()[0].envelope)
    ns = {"d": "http://duo.nl/schema/DUO_RIO_Beheren_OnderwijsOrganisatie_V4"}
    assert unit.findtext(".//d:studielast", namespaces=ns) == "210"
    assert unit.findtext(".//d:studielasteenheid", namespaces=ns) == "SBU"


def test_too_long_title_is_reported_not_truncated(sim, pki, clock, store) -> None:
    long_title = " ".join(["Microcredential"] * 16)      # 255 characters
    deliver(sim, pki, clock, store, {"MC-DATA01": definition(title={"nl": long_title})})
    r = row(store)
    assert r.state is DeliveryState.FAILED
    assert "255 characters" in (r.note or "") and "225" in (r.note or "")
    assert sim.calls == []


def test_many_microcredentials_at_once(sim, pki, clock, store) -> None:
    defs = {f"MC-{i:02d}": definition(f"MC-{i:02d}") for i in range(6)}
    deliver(sim, pki, clock, store, defs, concurrency=3)
    rows = store.rows("rio", [catalogue_key(c) for c in defs])
    assert {r.state for r in rows.values()} == {DeliveryState.SYNCED}
    assert len({r.remote.remote_id for r in rows.values()}) == 6


def test_unreachable_rio_stops_the_target_and_keeps_the_work(pki, clock, store) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    target = RioTarget(settings(pki), context(), transport=httpx.MockTransport(refuse), sleep=clock.sleep,
                       clock=clock.now)
    with pytest.raises(TargetUnavailable):
        run(_sync_and_close(target, store, {"MC-DATA01": definition(), "MC-2": definition("MC-2")}))
    rows = store.rows("rio", [KEY, catalogue_key("MC-2")])
    assert {r.state for r in rows.values()} == {DeliveryState.PENDING}


def test_configuration_needs_the_sender_oin(pki) -> None:
    from mcsync.record import Issuer
    with pytest.raises(ConfigError, match=r"institution\.oin"):
        RioTarget(settings(pki), context(issuer=Issuer(name="X", country="NL", brin="30GB")))


def test_desired_is_none_without_a_rio_section(pki) -> None:
    target = RioTarget(settings(pki), context())
    try:
        assert target.desired(definition(rio=None)) is None
        assert target.desired(definition()) == target.desired(definition())
        assert target.desired(definition()) != target.desired(definition(ects=Decimal(6)))
        # a change outside what RIO stores is no change
        assert target.desired(definition()) == target.desired(definition(assessment_type="oral_exam"))
    finally:
        run(target.aclose())


def test_a_row_handed_over_again_without_changes_makes_no_calls(sim, pki, clock, store) -> None:
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    r = row(store)
    store.ledger("rio").defer(KEY, reason="queued again by hand", remote=r.remote)
    assert row(store).state is DeliveryState.PENDING
    before = len(sim.calls)
    target = target_for(sim, pki, clock)
    item = WorkItem(key=KEY, state=DeliveryState.PENDING, desired_hash=r.desired_hash,
                    delivered_hash=r.delivered_hash, attempts=0, remote=r.remote, definition=definition())

    async def go() -> None:
        try:
            await target.deliver([item], store.ledger("rio"))
        finally:
            await target.aclose()

    run(go())
    assert len(sim.calls) == before                   # RIO is known to hold exactly this: nothing sent
    assert row(store).state is DeliveryState.SYNCED


def test_state_lost_unit_is_adopted_not_duplicated(sim, pki, clock, store, tmp_path) -> None:
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    code = row(store).remote.remote_id
    fresh = SqliteStateStore(tmp_path / "fresh.db")    # the state file was lost
    try:
        before = len(sim.writes())
        deliver(sim, pki, clock, fresh, {"MC-DATA01": definition()})
        r = row(fresh)
        assert r.state is DeliveryState.SYNCED and r.remote.remote_id == code
        # the unit was found by its own key and read back: not written again; the offering is an upsert
        assert [c.operation for c in sim.writes()[before:]] == ["aanleveren_aangebodenOpleiding"]
    finally:
        fresh.close()


def test_changing_the_kind_of_a_registered_unit_parks_with_a_reason(sim, pki, clock, store) -> None:
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    before = len(sim.writes())
    deliver(sim, pki, clock, store, {"MC-DATA01": definition(rio={"kind": "particuliereOpleiding"})})
    r = row(store)
    assert r.state is DeliveryState.FAILED
    assert "cannot turn it into a particuliereOpleiding" in (r.note or "")
    assert len(sim.writes()) == before


def test_logs_carry_no_keys_certificates_or_envelopes(sim, pki, clock, store, caplog) -> None:
    caplog.set_level("DEBUG")
    sim.drop_next("aanleveren_aangebodenOpleiding")
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})
    text = caplog.text
    assert "RIO" in text
    certificate_b64 = "".join(pki.client_cert.read_text().splitlines()[1:3])
    for secret in ("PRIVATE KEY", "BEGIN CERTIFICATE", certificate_b64[:40], "<soapenv", "SignatureValue",
                   "BinarySecurityToken"):
        assert secret not in text


def test_describe_and_probe(sim, pki, clock) -> None:
    target = target_for(sim, pki, clock)

    async def go() -> str:
        try:
            return await target.probe()
        finally:
            await target.aclose()

    assert run(go()) == "RIO answered (signed lookup accepted)"
    lines = target.describe()
    assert any("mcsync.hz.example" in line and "valid until" in line for line in lines)
    assert [c.operation for c in sim.calls] == ["opvragen_rioIdentificatiecode"]


def test_an_expired_certificate_is_a_configuration_error(pki, tmp_path) -> None:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=400)).not_valid_after(now - timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="expired on"):
        RioTarget(settings(pki, cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem"), context())



def test_slow_deletes_are_waited_for_not_repeated(pki, clock, store) -> None:
    sim = RioSimulator(visibility_delay=100.0, clock=clock.now)
    mc = definition()
    deliver(sim, pki, clock, store, {"MC-DATA01": mc}, confirm_timeout=150.0)
    assert row(store).state is DeliveryState.SYNCED
    deliver(sim, pki, clock, store, {"MC-DATA01": None}, confirm_timeout=20.0)
    r = row(store)
    assert r.state is DeliveryState.SUBMITTED and "still shows the deleted offering" in (r.note or "")
    clock.advance(100)
    deliver(sim, pki, clock, store, {"MC-DATA01": None}, confirm_timeout=20.0)   # offering gone: unit deleted
    clock.advance(100)
    deliver(sim, pki, clock, store, {"MC-DATA01": None}, confirm_timeout=20.0)
    r = row(store)
    assert r.state is DeliveryState.SYNCED and r.delivered_hash is None
    deletes = [c.operation for c in sim.writes() if c.operation.startswith("verwijderen")]
    assert deletes == ["verwijderen_aangebodenOpleiding", "verwijderen_opleidingseenheid"]   # once each


def test_definition_back_during_its_withdrawal_is_registered_afresh(pki, clock, store) -> None:
    sim = RioSimulator(visibility_delay=100.0, clock=clock.now)
    mc = definition()
    own_key = mc.rio_eigen_sleutel(ISSUER.brin)
    deliver(sim, pki, clock, store, {"MC-DATA01": mc}, confirm_timeout=150.0)
    old_code = row(store).remote.remote_id
    deliver(sim, pki, clock, store, {"MC-DATA01": None}, confirm_timeout=20.0)
    assert row(store).state is DeliveryState.SUBMITTED
    for _ in range(4):                                   # back again: deletion finishes first, then a new unit
        clock.advance(100)
        deliver(sim, pki, clock, store, {"MC-DATA01": mc}, confirm_timeout=20.0)
    r = row(store)
    assert r.state is DeliveryState.SYNCED
    assert r.remote.remote_id != old_code
    assert sim.unit_codes(own_key) == [r.remote.remote_id]


def test_a_unit_of_another_kind_under_our_key_is_not_overwritten(sim, pki, clock, store, tmp_path) -> None:
    deliver(sim, pki, clock, store, {"MC-DATA01": definition()})          # registered as hoOnderwijseenheid
    fresh = SqliteStateStore(tmp_path / "fresh.db")                       # state lost, and the kind changed
    try:
        before = len(sim.writes())
        deliver(sim, pki, clock, fresh, {"MC-DATA01": definition(rio={"kind": "particuliereOpleiding"})})
        r = row(fresh)
        assert r.state is DeliveryState.FAILED
        assert "RIO holds a hoOnderwijseenheid" in (r.note or "")
        assert len(sim.writes()) == before
    finally:
        fresh.close()


class Crash(Exception):
    """The process dies: nothing after this point is recorded."""


class CrashingLedger:
    """A real SQLite ledger whose process 'dies' right after RIO accepted a write, before recording it."""

    def __init__(self, inner: SqliteLedger, at: str) -> None:
        self.inner, self.at = inner, at
        self.target = inner.target

    def submitted(self, key: str, **kwargs: object) -> None:
        if self.at in str(kwargs.get("note")):
            raise Crash(self.at)
        self.inner.submitted(key, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_process_dies_after_aanleveren_before_recording(sim, pki, clock, store) -> None:
    mc = definition()
    own_key = mc.rio_eigen_sleutel(ISSUER.brin)
    key = catalogue_key("MC-DATA01")
    store.set_desired("rio", [(key, RioTarget(settings(pki), context()).desired(mc))])
    r = row(store)
    item = WorkItem(
        key=key, state=r.state, desired_hash=r.desired_hash, delivered_hash=None, attempts=0, remote=r.remote,
        definition=mc)
    target = target_for(sim, pki, clock)

    async def crash() -> None:
        try:
            await target.deliver([item], CrashingLedger(store.ledger("rio"), "unit"))
        finally:
            await target.aclose()

    with pytest.raises(Crash):
        run(crash())
    r = row(store)
    assert r.state is DeliveryState.IN_FLIGHT and r.attempts == 1          # begin() was committed
    assert r.remote.data["progress"]["pending"] == {
        "op": "unit", "hash": r.remote.data["progress"]["pending"]["hash"], "create": True,
        "at": r.remote.data["progress"]["pending"]["at"]}
    assert len(sim.unit_codes(own_key)) == 1                                 # RIO has it; we do not know its code

    writes = len(sim.writes())
    deliver(sim, pki, clock, store, {"MC-DATA01": mc})
    r = row(store)
    assert r.state is DeliveryState.SYNCED
    assert sim.unit_codes(own_key) == [r.remote.remote_id]                   # adopted, not duplicated
    assert [c.operation for c in sim.writes()[writes:]] == ["aanleveren_aangebodenOpleiding"]
