"""From a canonical record to what Edubadges is asked to award, and what must never change afterwards.

An issued award cannot be updated in Edubadges (there is no edit call for direct awards or assertions),
so the desired hash covers only what identifies the award there: the badge class and the learner's eppn.
A corrected grade or name is no reason for a new award; a new badge class or eppn is (the old award is
then withdrawn first, see the target).

The eppn is the learner's own (`learner.eppn`, e.g. from the SIS learners export), else the institution's
`eppn_template` filled in with the student number; Edubadges lower-cases it, and so does mcsync.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from json.encoder import encode_basestring

from ...errors import ConfigError
from ...record import MicrocredentialRecord
from .models import AwardRequest

#: The fields an `eppn_template` may use.
TEMPLATE_FIELDS = frozenset({"student_number", "brin"})


def check_template(template: str | None) -> None:
    """Refuse a template with fields mcsync cannot fill in, before anything is sent."""
    if template is None:
        return
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{template!r} is not a valid template: {exc}", key="institution.eppn_template") from None
    unknown = sorted(n for n in names if n not in TEMPLATE_FIELDS)
    if unknown or not names:
        raise ConfigError(f"{template!r} uses {', '.join(unknown) or 'no field'}",
                          key="institution.eppn_template",
                          hint="write it like \"{student_number}@student.example.nl\"; fields: "
                               + ", ".join(sorted(TEMPLATE_FIELDS)))


def eppn_of(record: MicrocredentialRecord, template: str | None) -> str | None:
    """The learner's eppn, lower-cased: their own, else the template's; None if neither exists."""
    learner = record.learner
    own = learner.eppn.strip() if learner.eppn else None
    if own:
        return own.lower()
    if template is None:
        return None
    return template.format(student_number=learner.student_number.strip(),
                           brin=record.issuer.brin.lower()).strip().lower()


def badgeclass_of(record: MicrocredentialRecord) -> str | None:
    ref = record.microcredential.edubadges
    return ref.badgeclass if ref is not None else None


def desired_hash(record: MicrocredentialRecord, template: str | None) -> str | None:
    """None unless the record leads to an award; else a hash of badge class and eppn only.

    The value is `stable_hash({"badgeclass": ..., "eppn": ...})` (see `_award_hash`): it must never change,
    or every award already delivered would look changed after an upgrade.
    """
    badgeclass = badgeclass_of(record)
    if not record.awardable or badgeclass is None:
        return None
    return _award_hash(badgeclass, eppn_of(record, template))


def _award_hash(badgeclass: str, eppn: str | None) -> str:
    """`stable_hash({"badgeclass": badgeclass, "eppn": eppn})`, without json.dumps' set-up per call (it runs
    for every record at every plan). `stable_hash` writes sorted keys, no spaces and no ASCII escaping;
    json's own `encode_basestring` is what it writes each string with, so the text (and hash) is the same."""
    eppn_json = "null" if eppn is None else encode_basestring(eppn)
    text = f'{{"badgeclass":{encode_basestring(badgeclass)},"eppn":{eppn_json}}}'
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Unsendable:
    """Why a record cannot be offered to Edubadges, and what a person should add where."""

    reason: str
    hint: str


class AwardBuilder:
    """Builds the award for a record, or says why there cannot be one (checked before any call)."""

    def __init__(self, template: str | None, eppn_pattern: str) -> None:
        check_template(template)
        self.template = template
        self._pattern = re.compile(eppn_pattern, re.IGNORECASE)
        self._pattern_text = eppn_pattern

    def build(self, record: MicrocredentialRecord) -> AwardRequest | Unsendable:
        learner = record.learner
        eppn = eppn_of(record, self.template)
        if eppn is None:
            return Unsendable(
                "the learner has no eppn, and no eppn_template is configured",
                "add an eppn column to the learners export ([[learners]]), or set institution.eppn_template "
                "in the configuration, e.g. \"{student_number}@student.example.nl\"; then `mcsync retry`")
        if not self._pattern.match(eppn):
            source = "learner's eppn" if learner.eppn else "eppn made from institution.eppn_template"
            return Unsendable(
                f"the {source} {eppn!r} does not fit the institution's eppn pattern {self._pattern_text!r}",
                "correct the eppn in the learners export or institution.eppn_template (or "
                "targets.edubadges.eppn_pattern if the institution's pattern changed); then `mcsync retry`")
        if not learner.email:
            return Unsendable(
                "the learner has no e-mail address; Edubadges needs recipient_email for every award",
                "add the learner's e-mail address (column email) to the learners export ([[learners]]) or "
                "to the source export; then `mcsync retry`")
        prefix, family = learner.family_name_prefix, learner.family_name
        surname = f"{prefix} {family}" if prefix and family else (prefix or family or None)
        return AwardRequest(eppn=eppn, recipient_email=learner.email.strip().lower(),
                            first_name=learner.given_name or None, surname=surname,
                            grade_achieved=record.result.grade_raw or None)
