"""Name normalization for screening: the forms a registry name and a list name are compared in.

A name is turned into tokens that ignore what does not tell parties apart:

- case, punctuation, diacritics, and script: every script is folded to ASCII with anyascii, so
  ``ООО Акме`` is ``ooo akme`` and ``Muñoz`` is ``munoz``; cp1252 characters that reached a list as
  C1 control codes (``Gui\\x92an``) are repaired first;
- company forms at either end (``LLC``, ``Ltd``, ``GmbH``, ``OOO``, ``JSC``, ``Co.``, ``S.A. de
  C.V.``, ``Obshchestvo s Ogranichennoi Otvetstvennostyu``, ...) and a few function words;
- word order: the compared strings hold the tokens sorted.

The *folded* form also rewrites each token's spelling to one canonical transliteration (``kh`` and
``h``, ``shch`` and ``sh``, ``ts`` and ``tz``, ``y`` and ``i``, ``x`` and ``ks``, doubled letters, ...),
so the variants that Russian (and German, French, English) romanizations of one name produce meet.
Scoring itself is rapidfuzz's (``matcher.py``); nothing here measures distance.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from anyascii import anyascii

# Company forms, removed at either end of a name, longest first, repeatedly ("Gulf Gate Shipping
# Co. LLC" loses both). Compared on folded tokens, so each form's romanizations match too.
_COMPANY_WORDS = """
llc ltd limited inc incorporated corp corporation co company cia gmbh mbh ag kg ohg ug sa sas
sarl srl spa sl bv nv plc llp lp pte pty pvt ooo oao zao pao ao tov pat prat jsc ojsc cjsc pjsc
fze fzco fzc fzllc wll bsc kk bhd ab asa oy oyj aps sro kft zrt doo ead eood ltda sac eirl
sapi cv sc se
"""
_COMPANY_PHRASES = """
limited liability company | limited liability partnership | limited company | company limited
joint stock company | open joint stock company | closed joint stock company
public joint stock company | private joint stock company | joint stock co
co ltd | co limited | pvt ltd | pte ltd | pty ltd | sdn bhd | public limited company
sa de cv | s de rl de cv | s de rl | sapi de cv | srl de cv | sa de rl | s en c | s a
gmbh and co kg | gmbh co kg | ag and co kg
obshchestvo s ogranichennoi otvetstvennostyu
aktsionernoe obshchestvo | otkrytoe aktsionernoe obshchestvo | zakrytoe aktsionernoe obshchestvo
publichnoe aktsionernoe obshchestvo | nepublichnoe aktsionernoe obshchestvo
sociedad anonima | sociedad limitada | sociedad de responsabilidad limitada | societe anonyme
"""
# Words that carry no identity, dropped anywhere (unless nothing else is left).
_FUNCTION_WORDS = frozenset(
    ["the", "of", "and", "de", "del", "la", "el", "y", "for", "und", "et", "des", "du"]
)

# Spelling folds, in order: each maps the variants romanizations produce onto one spelling.
_FOLDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        ("tsch", "ch"),
        ("shch", "sh"),
        ("sch", "sh"),
        ("tch", "ch"),
        ("dzh", "j"),
        ("zh", "j"),
        ("kh", "h"),
        ("ph", "f"),
        ("ck", "k"),
        ("q", "k"),
        ("x", "ks"),
        ("w", "v"),
        ("tz", "c"),
        ("ts", "c"),
        ("our$", "or"),  # British and American spellings: Harbour / Harbor
        ("([^aeiou])re$", r"\1er"),  # Centre / Center
        ("ou", "u"),
        ("oo", "u"),
        ("ee", "i"),
        ("y", "i"),
        (r"(.)\1+", r"\1"),  # doubled letters: Mohammed / Mohamed, Rossiiskii / Rossiski
        ("^ie", "e"),  # Yelena / Elena, Yevgeny / Evgeniy
    )
)
_APOSTROPHES = re.compile(r"['`´ʹʼ’‘\"]")
_PARENTHESES = re.compile(r"\([^)]*\)|\[[^]]*\]")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=65536)
def fold_token(token: str) -> str:
    """One token's canonical spelling (``khusyaynova`` → ``husainova``)."""
    # Twice: a fold can make what an earlier one folds (German "schtsch" for "shch").
    for _ in range(2):
        for pattern, replacement in _FOLDS:
            token = pattern.sub(replacement, token)
    return token


def _forms() -> tuple[tuple[str, ...], ...]:
    phrases = [p for line in _COMPANY_PHRASES.splitlines() for p in line.split("|")]
    forms: set[tuple[str, ...]] = {(fold_token(w),) for w in _COMPANY_WORDS.split()}
    forms |= {tuple(fold_token(w) for w in p.split()) for p in phrases if p.strip()}
    return tuple(sorted(forms, key=len, reverse=True))


def _repair(text: str) -> str:
    """C1 control characters are cp1252 bytes decoded as Latin-1: give them their meaning."""
    if not any("\x80" <= ch <= "\x9f" for ch in text):
        return text
    return "".join(
        bytes([ord(ch)]).decode("cp1252", errors="ignore") if "\x80" <= ch <= "\x9f" else ch
        for ch in text
    )


def ascii_tokens(text: str) -> list[str]:
    """The name's words in ASCII lower case, without punctuation or parenthesized asides."""
    ascii_text = anyascii(unicodedata.normalize("NFKC", _repair(text))).lower()
    ascii_text = _PARENTHESES.sub(" ", _APOSTROPHES.sub("", ascii_text))
    ascii_text = ascii_text.replace("&", " and ").replace(".", "")
    return [t for t in _NOT_WORD.split(ascii_text) if t]


@dataclass(frozen=True, slots=True)
class NameForm:
    """A name in the forms it is compared in."""

    text: str
    tokens: tuple[str, ...]  # ASCII words, company forms and function words removed, in order
    folded: tuple[str, ...]  # the same tokens, spelling folded
    forms_removed: tuple[str, ...]  # the company forms dropped ("llc", "ooo", ...)
    transliterated: bool  # the name was not plain ASCII (another script, or diacritics)

    @property
    def sorted_plain(self) -> str:
        """The tokens sorted and joined: word order no longer counts."""
        return " ".join(sorted(self.tokens))

    @property
    def sorted_folded(self) -> str:
        """The folded tokens sorted and joined."""
        return " ".join(sorted(self.folded))

    @property
    def compact(self) -> str:
        """The folded tokens in order with no spaces: ``AERO-CARIBBEAN`` meets ``AEROCARIBBEAN``."""
        return "".join(self.folded)


_FORMS = _forms()


def _strip_forms(folded: list[str]) -> tuple[int, int, list[slice]]:
    """Where the name is left once company forms are taken off its ends, and where they were."""
    start, end = 0, len(folded)
    removed: list[slice] = []
    changed = True
    while changed and end - start > 1:
        changed = False
        for form in _FORMS:
            size = len(form)
            if end - start - size < 1:
                continue
            if tuple(folded[start : start + size]) == form:
                removed.append(slice(start, start + size))
                start += size
            elif tuple(folded[end - size : end]) == form:
                removed.append(slice(end - size, end))
                end -= size
            else:
                continue
            changed = True
            break
    return start, end, removed


def normalize_name(text: str) -> NameForm:
    """The forms *text* is compared in (see the module's docstring)."""
    words = ascii_tokens(text)
    folded_all = [fold_token(w) for w in words]
    start, end, removed = _strip_forms(folded_all)
    keep = [i for i in range(start, end) if words[i] not in _FUNCTION_WORDS]
    if not keep:
        keep = list(range(start, end))
    return NameForm(
        text=text,
        tokens=tuple(words[i] for i in keep),
        folded=tuple(folded_all[i] for i in keep),
        forms_removed=tuple(" ".join(words[part]) for part in removed),
        transliterated=not text.isascii() or any("\x80" <= ch <= "\x9f" for ch in text),
    )
