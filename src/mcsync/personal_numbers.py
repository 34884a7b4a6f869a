"""Dutch personal numbers: the BSN's elfproef, the onderwijsnummer's check, keeping them out of texts.

A BSN (burgerservicenummer) has 9 digits d1..d9 with 9*d1 + 8*d2 + ... + 2*d8 - 1*d9 ≡ 0 (mod 11);
older 8-digit BSNs are written with a leading zero. The register rejects a BSN that fails this test
(signal R002), so mcsync checks it before sending and parks the record instead.

BSNs and onderwijsnummers are secrets here: they never appear in logs, notes or error texts. Texts
that come from the register are passed through `redact()` before they are stored or logged, in case
the remote quotes a number back.
"""

from __future__ import annotations

import re

_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2, -1)
_SEPARATORS = re.compile(r"[\s.\-]")
_NINE_DIGITS = re.compile(r"(?<!\d)\d{9}(?!\d)")
REDACTED = "[nummer verborgen]"


def normalise(number: str) -> str:
    """Digits only (spaces, dots and hyphens removed); an 8-digit number gets its leading zero."""
    digits = _SEPARATORS.sub("", number)
    if len(digits) == 8 and digits.isdigit():
        digits = "0" + digits
    return digits


def is_nine_digits(number: str) -> bool:
    return len(number) == 9 and number.isascii() and number.isdigit()


def passes_elfproef(number: str) -> bool:
    """True when `number` (already normalised) is 9 digits passing the BSN elfproef."""
    if not is_nine_digits(number) or number == "000000000":
        return False
    return sum(int(d) * w for d, w in zip(number, _WEIGHTS, strict=True)) % 11 == 0


def redact(text: str) -> str:
    """`text` with every stand-alone 9-digit number replaced (a BSN or onderwijsnummer, likely)."""
    return _NINE_DIGITS.sub(REDACTED, text)


def passes_onderwijsnummer_check(number: str) -> bool:
    """True when `number` is 9 digits weighted like the elfproef but leaving remainder 5 (DUO's rule
    for onderwijsnummers, which it hands out to learners without a BSN)."""
    if not is_nine_digits(number):
        return False
    total = sum(int(d) * w for d, w in zip(number, _WEIGHTS, strict=True))
    return total % 11 == 5
