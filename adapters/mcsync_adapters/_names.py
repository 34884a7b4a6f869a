"""Dutch personal names: finding the tussenvoegsel ("de", "van der") where an export hides it.

Dutch registration keeps the surname prefix apart from the surname ("Sanne de Vries" is given
name "Sanne", prefix "de", surname "Vries"); most exports do not. A prefix is recognised only as
a run of *lower-case* words from the list below, so "El Amrani" or "Van Gogh" (capitalised, part
of the surname as registered) are left alone, and at least one word always stays in the surname
and in the given names.
"""

from __future__ import annotations

from typing import NamedTuple

#: Words that make up Dutch (and Flemish/French/German/Spanish/Portuguese) surname prefixes.
PREFIX_WORDS = frozenset({
    "'s", "'t", "a", "aan", "af", "al", "bij", "d'", "da", "dal", "de", "del", "della", "den", "der",
    "des", "di", "die", "do", "dos", "du", "het", "in", "l'", "la", "le", "les", "onder", "op", "over",
    "te", "ten", "ter", "tot", "uit", "uijt", "van", "vande", "vanden", "vander", "voor", "von", "zu",
})


class PersonName(NamedTuple):
    given_name: str | None
    family_name_prefix: str | None
    family_name: str | None


def _is_prefix_word(word: str) -> bool:
    return word.islower() and word in PREFIX_WORDS


def split_family_name(family: str | None) -> tuple[str | None, str | None]:
    """("de", "Vries") from "de Vries"; (None, family) when there is no lower-case prefix."""
    if not family:
        return None, family or None
    words = family.split()
    count = 0
    while count < len(words) - 1 and _is_prefix_word(words[count]):
        count += 1
    if not count:
        return None, " ".join(words)
    return " ".join(words[:count]), " ".join(words[count:])


def split_trailing_prefix(given: str | None) -> tuple[str | None, str | None]:
    """("Sanne", "de") from "Sanne de" (Canvas's "Vries, Sanne de"); (given, None) otherwise."""
    if not given:
        return given or None, None
    words = given.split()
    count = 0
    while count < len(words) - 1 and _is_prefix_word(words[len(words) - 1 - count]):
        count += 1
    if not count:
        return " ".join(words), None
    return " ".join(words[: len(words) - count]), " ".join(words[len(words) - count:])


def is_prefix(text: str | None) -> bool:
    """True for text that consists of prefix words only ("de", "van der")."""
    return bool(text) and all(_is_prefix_word(word) for word in (text or "").split())


def from_parts(given: str | None, family: str | None, prefix: str | None = None) -> PersonName:
    """Given and family name as exported, with the prefix split off the family name if needed."""
    if prefix:
        return PersonName(given or None, prefix, family or None)
    found_prefix, rest = split_family_name(family)
    return PersonName(given or None, found_prefix, rest)


def from_sortable(name: str | None) -> PersonName:
    """A name as "Family, Given" (Canvas's sortable name) or "Given [prefix] Family"."""
    if not name or not name.strip():
        return PersonName(None, None, None)
    if "," in name:
        family_part, given_part = (part.strip() for part in name.split(",", 1))
        given, trailing = split_trailing_prefix(given_part)
        leading, family = split_family_name(family_part)
        return PersonName(given, trailing or leading, family)
    words = name.split()
    if len(words) == 1:
        return PersonName(None, None, words[0])
    for position in range(1, len(words) - 1):
        if _is_prefix_word(words[position]):
            end = position
            while end < len(words) - 1 and _is_prefix_word(words[end]):
                end += 1
            return PersonName(" ".join(words[:position]), " ".join(words[position:end]), " ".join(words[end:]))
    return PersonName(" ".join(words[:-1]), None, words[-1])
