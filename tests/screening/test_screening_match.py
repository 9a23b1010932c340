"""Name matching on the real lists: names, aliases and spelled variants derived from the lists are
found; a labelled set of distinct but similar names is not; each hit says why it matched."""

from __future__ import annotations

import pytest
from rapidfuzz import fuzz

from aidr_gate.screening.matcher import MAX_POSTING, SELECTIVE_POSTING, NameIndex
from aidr_gate.screening.names import fold_token, normalize_name
from aidr_gate.screening.store import ListSnapshot
from support.screening_support import (
    DISTINCT,
    load_all,
    require_sanctions,
    romanized_otherwise,
    sample_entries,
    to_cyrillic,
    variants,
)


@pytest.fixture(scope="module")
def snapshot() -> ListSnapshot:
    require_sanctions()
    return load_all()


@pytest.fixture(scope="module")
def index(snapshot: ListSnapshot) -> NameIndex:
    return NameIndex(snapshot)


@pytest.mark.parametrize(
    ("name", "entry", "field"),
    [
        ("BANCO NACIONAL DE CUBA", "sdn:306", "name"),  # OFAC's sdn.csv
        ("NATIONAL BANK OF CUBA", "sdn:306", "aka"),  # OFAC's alt.csv
        ("KHUSYAYNOVA, Elena Alekseevna", "sdn:26233", "name"),
        ("CARIBE SOL", "sdn:8124", "aka"),  # the CSL's alt_names
        ("Gulf Gate Spedition GmbH", "el:58e7366830267581", "name"),  # legacy CSL, BIS list
        ("Academy of Aerospace Solid Propulsion Technology (AASPT)", None, "name"),  # MEU
        ("Hebei Semiconductor Research Institute", None, "aka"),  # current CSL, an alias
        ("TNK TRADE LIMITED", "ssi:18300", "aka"),
    ],
)
def test_known_entries_are_found_under_their_names_and_aliases(
    index: NameIndex, snapshot: ListSnapshot, name: str, entry: str | None, field: str
) -> None:
    matches = index.match(name)
    assert matches, name
    best = matches[0]
    if entry is not None:
        assert best.entry == entry
    listed = snapshot.get(best.entry)
    assert listed is not None and best.score == 100.0 and best.listed_field == field
    assert best.listed_name in {listed.name, *(a.name for a in listed.aliases)}


def test_every_derived_variant_finds_its_entry(index: NameIndex, snapshot: ListSnapshot) -> None:
    sampled = sample_entries(snapshot, 90)
    assert {e.list for e in sampled} >= {"sdn", "ssi", "el"}
    kinds: set[str] = set()
    missed = []
    for entry in sampled:
        for kind, text in variants(entry).items():
            kinds.add(kind)
            if entry.key not in {m.entry for m in index.match(text)}:
                missed.append((kind, entry.name, text))
    assert kinds == {"order", "case", "punctuation", "suffix", "diacritics", "cyrillic",
                     "romanization"}  # fmt: skip
    assert missed == []


@pytest.mark.parametrize(
    ("text", "entry", "method", "reason"),
    [
        ("Cuba Banco Nacional", "sdn:306", "normalized", "word order"),
        ("Achim Development LLC", "ssi:19692", "normalized", "company form ignored: llc, ooo"),
        ("ООО Ачим Девелопмент", "ssi:19692", "normalized", "diacritics or script folded"),
        ("Aero-Caribbean Airlines", "sdn:36", "spelling", "spacing or hyphenation"),
        ("Aktzionernoe Obschtschestwo Rossiiski Bank Podderzhki Malogo i Srednego "
         "Predprinimatelstwa", "ssi:18283", "spelling", "transliteration variant"),
        ("Elena Khusiainova", "sdn:26233", "name-parts", "part of the listed name"),
        ("Banco Nacionel de Cuba", "sdn:306", "fuzzy", "similar spelling"),
    ],
)  # fmt: skip
def test_each_hit_says_why_it_matched(
    index: NameIndex, text: str, entry: str, method: str, reason: str
) -> None:
    best = index.match(text)[0]
    assert (best.entry, best.method) == (entry, method)
    assert any(reason in r for r in best.reasons), best.reasons
    assert 88 <= best.score <= 100


def test_distinct_but_similar_names_are_not_flagged(index: NameIndex) -> None:
    flagged = {d.name: index.match(d.name) for d in DISTINCT}
    assert {name: m for name, m in flagged.items() if m} == {}
    # They are close to the listed names they resemble (as whole strings, word order aside),
    # so the labels test the matcher, not the distance.
    close = [
        d.name
        for d in DISTINCT
        if fuzz.ratio(
            normalize_name(d.name).sorted_folded, normalize_name(d.resembles).sorted_folded
        )
        >= 75
    ]
    assert len(close) >= len(DISTINCT) // 2, close


def test_the_variant_helpers_write_what_registries_write() -> None:
    assert to_cyrillic("KHUSYAYNOVA") == "хусяйнова"
    assert romanized_otherwise("OBSHCHESTVO") == "Obschtschestwo"
    assert fold_token("khusyaynova") == fold_token("husiainova")
    assert normalize_name("Gui\x92an New District").tokens[0] == "guian"


def test_blocking_bounds_the_candidates(index: NameIndex) -> None:
    # A name made of the most common words still meets a bounded number of list names.
    for text in ("Al Mohammed Trading Company", "Bank", "International Group", "Ali Abu"):
        assert len(index.candidates(normalize_name(text))) <= 4 * SELECTIVE_POSTING + MAX_POSTING
    assert index.candidates(normalize_name("Zzyzx Qwv")) == set()
    assert index.match("") == [] and index.match("(—)") == []
