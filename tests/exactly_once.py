"""What both exactly-once proofs share: an institution whose exports the proof edits, and the audit of
what the three sandbox systems hold against those exports.

`Exports` is the truth the proofs steer: learners and their results in an Osiris-style CSV plus the
learner directory, rows that vanished from the export and results revoked with `mcsync revoke`,
written to an institution folder (`Institution`) whose mcsync.toml points at a sandbox. `audit()`
never asks mcsync: it reads the simulators and compares them with `Exports`:

- Edubadges: every result that should be awarded (passed, in the export, not revoked) is one award the
  learner holds or can claim (unclaimed direct awards plus unrevoked badges, `awards_for`), every
  other result none, and no award for anyone else;
- RIO: every microcredential is exactly one unit (counting every unit RIO ever issued a code for,
  deleted ones too) under its own key, shown by RIO with the mapping's current name, with its offering;
- the DUO register: every awarded result registered (`geregistreerd`) against a unit code RIO shows,
  every other result never registered or `ingetrokken`.

`settle_parked()` is the person reading `mcsync failures`: it does what the hints of the parkings the
design allows say, and returns every other failure as unexplained.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from mcsync.config import Config, load_config
from mcsync.mapping import Mapping, load_mapping
from mcsync.record import MicrocredentialDefinition, make_record_id
from mcsync.sandbox import DEMO_CLIENT, Sandbox
from mcsync.state import SqliteStateStore
from mcsync.targets.base import DeliveryState
from mcsync.targets.edubadges.target import AWARD_NOT_FOUND, OUTCOME_UNKNOWN

DEMO = Path(__file__).resolve().parents[1] / "src" / "mcsync" / "demo"
BRIN = "30GB"
EPPN = "{number}@student.hz.nl"
PASS = Decimal("5.5")

CONFIG = """\
[institution]
name = "Hogeschool Zeeland"
country = "NL"
brin = "{brin}"
oin = "0000000700030GB00000"
onderwijsaanbiedercode = "110A133"
eppn_template = "{{student_number}}@student.hz.nl"

[state]
path = "{state}"

[[learners]]
adapter = "learners-csv"
path = "exports/learners.csv"

[[sources]]
name = "osiris"
adapter = "csv"
mapping = "mapping.toml"
[sources.options]
path = "exports/results.csv"
delimiter = ";"
[sources.options.columns]
student_number = "studentnummer"
course_code = "cursuscode"
grade = "resultaat"
date = "datum_behaald"
given_name = "voornaam"
family_name_prefix = "tussenvoegsel"
family_name = "achternaam"
email = "email"

[targets.rio]
beheren_url = "{url}/rio/beheren4.0"
raadplegen_url = "{url}/rio/raadplegen4.0"
recipient_oin = "00000001800866472000"
{signing}
{rio}

[targets.edubadges]
api_url = "{url}/edubadges"
token_url = "{url}/edubadges/oidc/token"
client_id = "mcsync-demo"
client_secret = "demo-secret-not-for-production"
{edubadges}

[targets.duo]
api_url = "{url}/duo/rmc/v1"
{duo}
"""


@dataclass(frozen=True)
class Learner:
    number: str
    date_of_birth: str
    given_name: str
    family_name: str


#: The demo's learner directory, people with a date of birth (the register knows them by it).
KNOWN = [Learner("2210451", "2001-03-14", "Sanne", "Vries"), Learner("2245610", "2002-08-30", "Zoë", "Berg"),
         Learner("2198733", "1999-11-02", "Mohammed", "El Amrani"), Learner("2287341", "1997-01-19", "Søren", "Jørgensen"),
         Learner("2276502", "1995-12-07", "Anaïs", "Dijk")]
CODES = ("MC-DATA01", "MC-CIRC02", "MC-ZORG03")
PASSED, FAILED = "8,0", "4,0"


@dataclass
class Exports:
    """The institution's exports: who is in the directory, and who got which grade for what."""

    learners: dict[str, Learner] = field(default_factory=dict)
    grades: dict[tuple[str, str], str] = field(default_factory=dict)       # (number, code) → grade
    gone: set[tuple[str, str]] = field(default_factory=set)                # removed from the export
    revoked: set[tuple[str, str]] = field(default_factory=set)             # `mcsync revoke`d
    added: int = 0

    @classmethod
    def initial(cls, cohort: int = 0) -> Exports:
        """Six results of five known learners (one failed), plus a `cohort` of generated passed learners."""
        exports = cls({learner.number: learner for learner in KNOWN})
        for (number, code, grade) in [("2210451", "MC-DATA01", "7,5"), ("2245610", "MC-ZORG03", "7,0"),
                                      ("2198733", "MC-CIRC02", "6,8"), ("2287341", "MC-DATA01", "8,4"),
                                      ("2276502", "MC-CIRC02", "5,5"), ("2210451", "MC-ZORG03", "4,9")]:
            exports.grades[(number, code)] = grade
        for n in range(cohort):
            learner = Learner(str(2500000 + n), f"1998-02-{n % 28 + 1:02d}", "Cohort", f"Student {n}")
            exports.learners[learner.number] = learner
            exports.grades[(learner.number, CODES[n % len(CODES)])] = PASSED
        return exports

    def passed(self, key: tuple[str, str]) -> bool:
        return Decimal(self.grades[key].replace(",", ".")) >= PASS

    def awarded(self, key: tuple[str, str]) -> bool:
        """Whether the targets should hold this result: passed, still in the export, not revoked."""
        return self.passed(key) and key not in self.gone and key not in self.revoked

    def keys(self) -> list[tuple[str, str]]:
        """Every result the exports ever held (the audit checks removed ones too)."""
        return sorted(self.grades)

    def present(self) -> list[tuple[str, str]]:
        """The results in the export now."""
        return [key for key in self.keys() if key not in self.gone]

    def regrade(self, key: tuple[str, str], *, passed: bool) -> None:
        self.grades[key] = PASSED if passed else FAILED

    def remove(self, key: tuple[str, str]) -> None:
        """The row disappears from the export (a vanished record: mcsync withdraws it)."""
        self.gone.add(key)

    def add_learner(self, code: str) -> tuple[str, str]:
        """A learner new to the directory, who passed `code`."""
        self.added += 1
        learner = Learner(str(2400000 + self.added), f"1990-01-{self.added % 28 + 1:02d}", "Nieuwe",
                          f"Student {self.added}")
        self.learners[learner.number] = learner
        self.grades[(learner.number, code)] = PASSED
        return (learner.number, code)

    def write(self, folder: Path) -> None:
        """Write both files whole, through a temporary file each (a sync never reads half a file)."""
        learners = ["student_number,bsn,onderwijsnummer,date_of_birth,given_name,family_name_prefix,family_name,"
                    "email,eppn"]
        learners += [f"{p.number},,,{p.date_of_birth},{p.given_name},,{p.family_name},{p.number}@student.hz.nl,"
                     for p in self.learners.values()]
        results = ["studentnummer;cursuscode;resultaat;datum_behaald;voornaam;tussenvoegsel;achternaam;email"]
        for (number, code), grade in sorted(self.grades.items()):
            if (number, code) in self.gone:
                continue
            p = self.learners[number]
            results.append(f"{number};{code};{grade};2025-06-27;{p.given_name};;{p.family_name};"
                           f"{number}@student.hz.nl")
        for name, lines in (("learners.csv", learners), ("results.csv", results)):
            path = folder / "exports" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".tmp")
            partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
            partial.replace(path)


def _toml(values: dict[str, Any]) -> str:
    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        return repr(value) if isinstance(value, (int, float)) else f'"{value}"'
    return "\n".join(f"{key} = {literal(value)}" for key, value in values.items())


@dataclass
class Institution:
    """A folder with mcsync.toml, mapping.toml, the exports and the state, pointed at `sandbox`."""

    folder: Path
    sandbox: Sandbox
    exports: Exports
    mapping: Mapping

    @classmethod
    def create(cls, folder: Path, sandbox: Sandbox, exports: Exports, *, url: str,
               settings: dict[str, dict[str, Any]]) -> Institution:
        """Write the institution; its targets talk to `url` (the sandbox's, or any stand-in for in-process use)."""
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEMO / "mapping.toml", folder / "mapping.toml")
        inst = cls(folder, sandbox, exports, load_mapping(folder / "mapping.toml"))

        def write(signing: dict[str, Any]) -> None:
            inst.config_path.write_text(CONFIG.format(
                brin=BRIN, state=inst.state_path, url=url, signing=_toml(signing),
                rio=_toml(settings.get("rio", {})), edubadges=_toml(settings.get("edubadges", {})),
                duo=_toml(settings.get("duo", {}))), encoding="utf-8")

        write({})
        # the sandbox makes RIO's throw-away signing certificate, as it does for `mcsync demo`
        rio = sandbox.point_config_here(load_config(inst.config_path), state_path=inst.state_path).target_table("rio")
        assert rio is not None
        write({"cert_file": str(rio["cert_file"]), "key_file": str(rio["key_file"])})
        exports.write(folder)
        return inst

    def config(self) -> Config:
        return load_config(self.config_path)

    def retitle(self, code: str, version: int) -> None:
        """The microcredential gets a revised Dutch title in the mapping file (RIO gets its unit again)."""
        path = self.folder / "mapping.toml"
        old = self.definitions[code].title["nl"]
        new = f"{old.split(' (herzien')[0]} (herzien {version})"
        text = path.read_text(encoding="utf-8")
        assert text.count(f'title = {{ nl = "{old}"') == 1
        path.write_text(text.replace(f'title = {{ nl = "{old}"', f'title = {{ nl = "{new}"'), encoding="utf-8")
        self.mapping = load_mapping(path)

    @property
    def config_path(self) -> Path:
        return self.folder / "mcsync.toml"

    @property
    def state_path(self) -> Path:
        return self.folder / "state" / "mcsync.db"

    @property
    def definitions(self) -> dict[str, MicrocredentialDefinition]:
        """The mapping's microcredentials by their code."""
        return {d.code: d for d in self.mapping.definitions.values()}

    def badgeclass(self, code: str) -> str:
        definition = self.definitions[code]
        assert definition.edubadges is not None
        return definition.edubadges.badgeclass

    def record_id(self, key: tuple[str, str]) -> str:
        return str(make_record_id(BRIN, *key))

    def eppn(self, key: tuple[str, str]) -> str:
        return EPPN.format(number=key[0])

    def unclaimed(self, key: tuple[str, str]) -> list[str]:
        """The learner's unclaimed direct awards for this result (ids), oldest first."""
        awards = self.sandbox.edubadges.direct_awards(eppn=self.eppn(key), badgeclass=self.badgeclass(key[1]))
        return [a.entity_id for a in sorted(awards, key=lambda a: (a.created_at, a.entity_id))
                if a.status == "Unaccepted"]


@dataclass
class Audit:
    """What the sandbox holds, measured against the exports. Empty lists: exactly once everywhere."""

    checked: int = 0
    duplicates: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    not_withdrawn: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.duplicates + self.missing + self.not_withdrawn

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "duplicates": self.duplicates, "missing": self.missing,
                "not_withdrawn": self.not_withdrawn}


def audit(inst: Institution) -> Audit:
    found = Audit()
    edu, rio, duo = inst.sandbox.edubadges, inst.sandbox.rio, inst.sandbox.duo
    exports = inst.exports
    # RIO: one unit and one offering per microcredential, ever
    created = rio.units_created()
    for code, definition in sorted(inst.definitions.items()):
        if definition.rio is None:
            continue
        found.checked += 1
        units = [c for c, own in created.items() if own == definition.rio_eigen_sleutel(BRIN)]
        if len(units) > 1:
            found.duplicates.append(f"RIO: {code} has {len(units)} units: {', '.join(sorted(units))}")
        elif not units or not rio.is_known_unit_code(units[0]):
            found.missing.append(f"RIO: {code} has no unit RIO shows")
        else:
            shown = rio.unit_element(units[0], visible_only=True)
            name = shown.findtext(".//{*}naamLang") if shown is not None else None
            if name != definition.title.get("nl"):
                found.missing.append(f"RIO: {code} shows the name {name!r}, not {definition.title.get('nl')!r}")
        if definition.rio_offering_code(BRIN) not in rio.offering_codes():
            found.missing.append(f"RIO: {code} has no offering")
    strays = [c for c, own in created.items()
              if own not in {d.rio_eigen_sleutel(BRIN) for d in inst.mapping.definitions.values()}]
    if strays:
        found.duplicates.append(f"RIO: units under no microcredential's own key: {', '.join(sorted(strays))}")
    # Edubadges and the register, per result in the exports
    live = 0
    for key in exports.keys():
        found.checked += 1
        held = edu.awards_for(inst.eppn(key), inst.badgeclass(key[1]))
        live += held
        rid = inst.record_id(key)
        registration = duo.registered(rid)
        state = "removed" if key in exports.gone else "revoked" if key in exports.revoked else exports.grades[key]
        what = f"{key[0]} {key[1]} ({state}, record {rid})"
        if exports.awarded(key):
            if held > 1:
                found.duplicates.append(f"Edubadges: {what}: {held} awards")
            elif held == 0:
                found.missing.append(f"Edubadges: {what}: no award")
            if registration is None or registration.status != "geregistreerd":
                found.missing.append(f"DUO register: {what}: "
                                     f"{'not registered' if registration is None else registration.status}")
            elif not rio.is_known_unit_code(registration.text("opleidingseenheidcode") or ""):
                found.missing.append(f"DUO register: {what}: registered against a unit RIO does not show")
        else:
            if held:
                found.not_withdrawn.append(f"Edubadges: {what}: {held} awards")
            if registration is not None and registration.status != "ingetrokken":
                found.not_withdrawn.append(f"DUO register: {what}: still {registration.status}")
    everywhere = sum(1 for a in edu.direct_awards() if a.status in ("Unaccepted", "Scheduled")) + \
        sum(1 for a in edu.assertions() if not a.revoked)
    if everywhere != live:
        found.duplicates.append(f"Edubadges: {everywhere - live} awards to learners without such a result")
    return found


def open_work(store: SqliteStateStore) -> dict[str, dict[str, int]]:
    """Per target, the rows still under way (pending, in_flight, submitted)."""
    states = (DeliveryState.PENDING, DeliveryState.IN_FLIGHT, DeliveryState.SUBMITTED)
    found: dict[str, dict[str, int]] = {}
    for target, counts in store.counts().items():
        busy = {s.value: counts[s.value] for s in states if counts.get(s.value)}
        if busy:
            found[target] = busy
    return found


def settle_parked(inst: Institution, store: SqliteStateStore) -> list[str]:
    """Act on `mcsync failures` as their hints say. Returns the failures no hint covers (none is expected).

    Two parkings follow from what Edubadges does not show a SIS client (edubadges-api.md §1.2, §4):
    - `outcome_unknown`: a create whose answer was lost while awards of its badge class were claimed,
      so mcsync cannot tell whether this learner holds it. The person checks the learner's badges: a
      passed result without one is sent by `mcsync retry`; a corrected result's badge is revoked by
      hand, then `mcsync retry` closes the item. A passed learner who holds it keeps the failure.
    - `award_not_found`: a withdrawal of an award mcsync knew without its bundle, claimed meanwhile.
      The person revokes the learner's badge by hand; the failure stays, as the record of that.
    """
    unexplained: list[str] = []
    retry: list[str] = []
    records = {inst.record_id(key): key for key in inst.exports.keys()}
    edu = inst.sandbox.edubadges
    for failure in store.failures():
        key = records.get(failure.record_id or "")
        # read the way a person reads it: the words (a later correction keeps the words, not the code)
        lost = failure.code == OUTCOME_UNKNOWN or "may have claimed the lost award" in failure.reason
        if failure.target != "edubadges" or key is None or not (lost or failure.code == AWARD_NOT_FOUND):
            unexplained.append(f"{failure.target} {failure.record_id}: {failure.reason}")
            continue
        eppn, badgeclass = inst.eppn(key), inst.badgeclass(key[1])
        if not inst.exports.awarded(key):
            for badge in edu.assertions(eppn=eppn, badgeclass=badgeclass):
                if not badge.revoked:
                    edu.revoke_by_hand(badge.entity_id)
            if lost:
                retry.append(failure.record_id or "")
        elif lost and edu.awards_for(eppn, badgeclass) == 0:
            retry.append(failure.record_id or "")
    if retry:
        store.retry(retry, "edubadges")
    return unexplained


def new_sandbox(**kwargs: Any) -> Sandbox:
    """A sandbox that knows the demo mapping's badge classes and the demo's Edubadges client."""
    mapping = load_mapping(DEMO / "mapping.toml")
    badgeclasses = {d.edubadges.badgeclass: d.code for d in mapping.definitions.values() if d.edubadges}
    return Sandbox(badgeclasses=badgeclasses, clients=dict([DEMO_CLIENT]), **kwargs)


def seconds_until_due(store: SqliteStateStore) -> float | None:
    """How long until the earliest queued row waiting for a Retry-After is due (None: none waits)."""
    row = store.conn.execute("SELECT min(not_before) FROM deliveries WHERE state = 'pending' "
                             "AND not_before IS NOT NULL").fetchone()
    if row is None or row[0] is None:
        return None
    due = datetime.strptime(row[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return max(0.0, (due - datetime.now(UTC)).total_seconds())
