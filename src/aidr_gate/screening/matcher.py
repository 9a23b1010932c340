"""Fuzzy name matching against a list snapshot: a blocking index, then rapidfuzz scores.

Every screenable name of every entry (its name and its aka/fka/nka aliases; weak aliases are not
screened) is normalized once (``names.py``) and indexed under blocking keys: each folded token,
its first and last four letters (a typo elsewhere in the word still meets), and the first five
letters of the name written without spaces. A query name is compared only with the list names
that share one of its selective keys, so 100k registry names take seconds, not hours.

Candidates are scored by rapidfuzz (normalized Indel similarity, 0-100) on the sorted folded
tokens (word order and spelling variants do not count) and on the compact form (spacing does not
count); for listed individuals, also on the name parts given (a first and last name without the
patronymic). A score at or above the threshold is a match, with the reasons it matched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rapidfuzz import fuzz, process

from aidr_gate.screening.entries import AliasKind, EntryType, ListEntry
from aidr_gate.screening.names import NameForm, normalize_name
from aidr_gate.settings.screening import DEFAULT_THRESHOLD

# Keys shared by more list names than this are too common to select candidates by ("bank", "al").
SELECTIVE_POSTING = 400
# A name whose every key is common still meets the names under its rarest key, up to this many.
MAX_POSTING = 4000
# Two words are "spelled alike" at this rapidfuzz ratio or above (nacional/nacionel 87.5;
# horizon/orion 83, landmark/landtek 53 are other words).
TOKEN_CUTOFF = 85.0
COMPACT_CUTOFF = 95.0


@dataclass(frozen=True, slots=True)
class NameMatch:
    """One list name a screened name matched, and why."""

    entry: str  # "list:id"
    listed_name: str  # the list's name or alias that matched, as listed
    listed_field: str  # "name", "aka", "fka" or "nka"
    score: float  # 0-100
    method: str  # "exact", "normalized", "spelling", "fuzzy" or "name-parts"
    reasons: tuple[str, ...]  # what the match ignored: word order, company form, script, ...

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form."""
        return {
            "entry": self.entry,
            "listed_name": self.listed_name,
            "listed_field": self.listed_field,
            "score": self.score,
            "method": self.method,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class _Listed:
    entry: str
    field: str
    form: NameForm
    individual: bool


def _keys(form: NameForm) -> list[str]:
    keys = []
    for token in form.folded:
        keys.append("t:" + token)
        if len(token) >= 6:
            keys += ("p:" + token[:4], "s:" + token[-4:])
    if len(form.compact) >= 6:
        keys.append("c:" + form.compact[:5])
    return keys


class NameIndex:
    """The screenable names of a list snapshot, indexed for fuzzy lookup."""

    def __init__(self, entries: Iterable[ListEntry], threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self._names: list[_Listed] = []
        self._postings: dict[str, list[int]] = {}
        for entry in entries:
            individual = entry.type is EntryType.INDIVIDUAL
            for field, text in entry.names():
                if field == AliasKind.WEAK.value or not text.strip():
                    continue
                form = normalize_name(text)
                if not form.tokens:
                    continue
                number = len(self._names)
                self._names.append(_Listed(entry.key, field, form, individual))
                for key in dict.fromkeys(_keys(form)):
                    self._postings.setdefault(key, []).append(number)
        self._sorted = [n.form.sorted_folded for n in self._names]
        self._compact = [n.form.compact for n in self._names]

    def __len__(self) -> int:
        return len(self._names)

    def candidates(self, form: NameForm) -> set[int]:
        """The list names sharing a selective blocking key with *form* (bounded in size)."""
        empty: list[int] = []
        postings = [self._postings.get(key, empty) for key in dict.fromkeys(_keys(form))]
        chosen = [p for p in postings if 0 < len(p) <= SELECTIVE_POSTING]
        if not chosen:
            rarest = min((p for p in postings if p), key=len, default=empty)
            chosen = [rarest] if len(rarest) <= MAX_POSTING else []
        out: set[int] = set()
        for posting in chosen:
            out.update(posting)
        return out

    def match(self, text: str) -> list[NameMatch]:
        """Every list name *text* matches at or above the threshold, best first, one per entry."""
        form = normalize_name(text)
        if not form.tokens:
            return []
        numbers = sorted(self.candidates(form))
        if not numbers:
            return []
        scores: dict[int, float] = {}
        # Written without spaces, names lose their word boundaries: only a near-identical compact
        # form counts ("AERO-CARIBBEAN" and "AEROCARIBBEAN", not "Velux Investment" and
        # "VELINVESTMENT").
        for query, choices, cutoff in (
            (form.sorted_folded, self._sorted, self.threshold),
            (form.compact, self._compact, max(self.threshold, COMPACT_CUTOFF)),
        ):
            found = process.extract(
                query,
                [choices[n] for n in numbers],
                scorer=fuzz.ratio,
                score_cutoff=cutoff,
                limit=None,
            )
            for _, score, position in found:
                number = numbers[position]
                scores[number] = max(scores.get(number, 0.0), score)
        if len(form.tokens) >= 2:
            self._name_parts(form, numbers, scores)
        best: dict[str, NameMatch] = {}
        for number, score in scores.items():
            found_match = _explain(form, self._names[number], score)
            if found_match is None:
                continue
            known = best.get(found_match.entry)
            if known is None or found_match.score > known.score:
                best[found_match.entry] = found_match
        return sorted(best.values(), key=lambda m: (-m.score, m.entry))

    def _name_parts(self, form: NameForm, numbers: Sequence[int], scores: dict[int, float]) -> None:
        """A listed person named by fewer parts: every given part is one of the listed ones."""
        query = set(form.folded)
        for number in numbers:
            listed = self._names[number]
            if not listed.individual or number in scores:
                continue
            # One listed part may be missing (a patronymic, a second surname), not more: "Maria
            # Garcia" is not "GARCIA DURAN, Maria Del Rosario".
            extra = len(listed.form.folded) - len(form.folded)
            if extra == 1 and query <= set(listed.form.folded):
                # Scored below exact: the missing parts are for the reviewer to weigh.
                scores[number] = min(
                    95.0, fuzz.token_set_ratio(form.sorted_folded, self._sorted[number])
                )


def _covered(tokens: Sequence[str], others: Sequence[str]) -> int:
    """How many of *tokens* have a counterpart among *others* spelled alike."""
    return sum(
        1
        for token in tokens
        if process.extractOne(token, others, scorer=fuzz.ratio, score_cutoff=TOKEN_CUTOFF)
    )


def _words_agree(form: NameForm, other: NameForm) -> bool:
    """Every word of the shorter name, and all but one of the longer, is matched by a word of
    the other spelled alike: a name that shares its common words with a listed one ("Ningbo New
    Era Import and Export" and "Ningbo New Century Import and Export") but not its distinctive
    word is a different party, however close the whole strings are."""
    short, long = sorted((form.folded, other.folded), key=len)
    if _covered(short, long) < len(short):
        return False
    return _covered(long, short) >= len(long) - 1 if len(long) > len(short) else True


def _explain(form: NameForm, listed: _Listed, score: float) -> NameMatch | None:
    other = listed.form
    reasons: list[str] = []
    if form.tokens != other.tokens and sorted(form.tokens) == sorted(other.tokens):
        reasons.append("word order")
    if form.forms_removed or other.forms_removed:
        dropped = sorted(set(form.forms_removed) | set(other.forms_removed))
        reasons.append("company form ignored: " + ", ".join(dropped))
    if form.transliterated or other.transliterated:
        reasons.append("diacritics or script folded to ASCII")
    if sorted(form.tokens) == sorted(other.tokens):
        exact = " ".join(form.tokens) == " ".join(other.tokens) and not reasons
        method, score = ("exact" if exact else "normalized"), 100.0
    elif sorted(form.folded) == sorted(other.folded):
        method, score = "spelling", 100.0
        reasons.append("transliteration variant")
    elif form.compact == other.compact:
        method, score = "spelling", 100.0
        reasons.append("spacing or hyphenation")
    elif set(form.folded) < set(other.folded) and listed.individual:
        method = "name-parts"
        reasons.append("names given are part of the listed name")
    elif _words_agree(form, other):
        method = "fuzzy"
        reasons.append(f"similar spelling ({score:.0f}/100)")
    else:
        return None
    return NameMatch(
        entry=listed.entry,
        listed_name=other.text,
        listed_field=listed.field,
        score=round(score, 1),
        method=method,
        reasons=tuple(reasons),
    )
