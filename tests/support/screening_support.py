"""The real restricted-party lists, spelled variants derived from them, and a labelled set of
distinct but similar names: shared by the screening tests and ``bench/screening.py``."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aidr_gate.screening.entries import EntryType, ListEntry
from aidr_gate.screening.names import normalize_name
from aidr_gate.screening.store import ListSnapshot, load_snapshot, sources_for
from support.environment import SHARED_TESTDATA

SANCTIONS = SHARED_TESTDATA / "sanctions"
SDN = SANCTIONS / "ofac-sdn.csv"
CSL_LEGACY = SANCTIONS / "csl-legacy.csv"
CSL_CURRENT = SANCTIONS / "csl-consolidated.csv"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MISSING = f"the real sanctions lists are absent ({SANCTIONS}; ../shared/testdata/sanctions)"


def sanctions_present() -> bool:
    """True when ../shared/testdata/sanctions holds the lists (always under CI)."""
    return SDN.is_file() and CSL_LEGACY.is_file() and CSL_CURRENT.is_file()


def require_sanctions() -> Path:
    """The folder of real lists; a test without it skips, naming the folder, and fails under CI."""
    import pytest  # only the tests call this; bench/screening.py checks for itself

    if not sanctions_present():
        if IN_CI:
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return SANCTIONS


def load_all() -> ListSnapshot:
    """Every real list in the folder: OFAC's SDN set and both CSL samples."""
    return load_snapshot(sources_for([SANCTIONS]))


# --- spelled variants, derived from a listed name ----------------------------------------------

_ACCENTS = str.maketrans({"a": "á", "e": "é", "i": "í", "o": "ö", "u": "ü", "n": "ñ", "c": "ç"})
_SUFFIXES = ("LLC", "Ltd.", "GmbH", "OOO", "JSC", "Co.", "S.A.", "Limited")
# Latin → Cyrillic, longest first: how a Russian registry would write a romanized name.
_CYRILLIC = (
    ("shch", "щ"), ("kh", "х"), ("zh", "ж"), ("ts", "ц"), ("ch", "ч"), ("sh", "ш"), ("yu", "ю"),
    ("ya", "я"), ("iy", "ий"), ("yy", "ый"), ("a", "а"), ("b", "б"), ("v", "в"),
    ("g", "г"), ("d", "д"), ("e", "е"), ("z", "з"), ("i", "и"), ("y", "й"), ("k", "к"),
    ("l", "л"), ("m", "м"), ("n", "н"), ("o", "о"), ("p", "п"), ("r", "р"), ("s", "с"),
    ("t", "т"), ("u", "у"), ("f", "ф"), ("c", "к"), ("h", "х"), ("w", "в"), ("x", "кс"),
    ("j", "дж"), ("q", "к"),
)  # fmt: skip
# Other romanizations of the same Russian sounds (German, French, scholarly spellings).
_ROMANIZATIONS = (
    ("shch", "schtsch"), ("kh", "ch"), ("zh", "j"), ("ts", "tz"), ("yu", "iu"), ("ya", "ia"),
    ("iy", "ij"), ("y", "i"), ("v", "w"),
)  # fmt: skip


def to_cyrillic(text: str) -> str:
    """A Latin transliteration written back in Cyrillic letters."""
    out: list[str] = []
    lower, index = text.lower(), 0
    while index < len(lower):
        following = lower[index + 1 : index + 2]
        if lower[index] == "y" and out and out[-1] not in "аеиоуыэюя " and following not in "aeiou":
            out.append("ы")  # y after a consonant is ы (SPETSIALNYKH), after a vowel й
            index += 1
            continue
        for latin, cyrillic in _CYRILLIC:
            if lower.startswith(latin, index):
                out.append(cyrillic)
                index += len(latin)
                break
        else:
            out.append(lower[index])
            index += 1
    return "".join(out)


_OTHERWISE = re.compile("|".join(latin for latin, _ in _ROMANIZATIONS))


def romanized_otherwise(text: str) -> str:
    """The same name under another romanization convention (``KH`` → ``CH``, ``V`` → ``W``...)."""
    table = dict(_ROMANIZATIONS)
    return _OTHERWISE.sub(lambda m: table[m.group(0)], text.lower()).title()


def variants(entry: ListEntry, seed: int = 0) -> dict[str, str]:
    """Spelled variants of the entry's name, by the kind of change each makes."""
    name = entry.name
    words = re.split(r"[\s,]+", name.strip())
    words = [w for w in words if w]
    chooser = random.Random(f"{entry.key}:{seed}")
    suffix = chooser.choice(_SUFFIXES)
    accented = "".join(c.lower().translate(_ACCENTS) if chooser.random() < 0.3 else c for c in name)
    # Reordered, the distinctive words move; a company form stays where company forms stand.
    form = normalize_name(name)
    reordered = " ".join(reversed(form.tokens)).upper()
    if form.forms_removed:
        reordered = f"{form.forms_removed[0].upper()} {reordered}"
    out = {
        "order": reordered,
        "case": name.swapcase() if not name.isupper() else name.title(),
        "punctuation": "-".join(words) if len(words) > 1 else f"{name}.",
        "suffix": f"{' '.join(words)}, {suffix}",
        "diacritics": accented,
    }
    if _romanized_russian(entry):
        out["cyrillic"] = to_cyrillic(name)
        out["romanization"] = romanized_otherwise(name)
    return out


_RUSSIAN_FORMS = re.compile(
    r"^(?:OOO|OAO|ZAO|PAO|AO|AKTSIONERNOE|OBSHCHESTVO|OTKRYTOE|ZAKRYTOE|PUBLICHNOE|FEDERALNOE|"
    r"NAUCHNO)\b|\b(?:OOO|OAO|ZAO|PAO)$"
)


def _is_russian(entry: ListEntry) -> bool:
    return "RU" in entry.countries or any(
        p.startswith(("UKRAINE", "RUSSIA")) for p in entry.programs
    )


def _romanized_russian(entry: ListEntry) -> bool:
    """A name that is Russian written in Latin letters: a Russian person, or a Russian company
    form (English names of Russian parties, "JOINT STOCK COMPANY ... BANK", are not)."""
    if not _is_russian(entry):
        return False
    if entry.type is EntryType.INDIVIDUAL:
        return "RU" in entry.countries
    return bool(_RUSSIAN_FORMS.search(entry.name.upper()))


def screenable(entry: ListEntry) -> bool:
    """An entry whose name makes a fair test: two or more distinctive words, letters only."""
    form = normalize_name(entry.name)
    if entry.type in (EntryType.VESSEL, EntryType.AIRCRAFT) or len(form.tokens) < 2:
        return False
    return all(t.isalpha() and len(t) >= 3 for t in form.tokens)


def sample_entries(snapshot: ListSnapshot, count: int, seed: int = 7) -> list[ListEntry]:
    """A deterministic sample of screenable entries from every list, SDN and CSL alike."""
    pool = sorted((e for e in snapshot if screenable(e)), key=lambda e: e.key)
    csl = [e for e in pool if e.list != "sdn"]
    russian = [e for e in pool if e.list == "sdn" and _is_russian(e)]
    rest = [e for e in pool if e.list == "sdn" and not _is_russian(e)]
    chooser = random.Random(seed)
    share = max(count // 3, 1)
    picked = chooser.sample(csl, min(share, len(csl)))
    picked += chooser.sample(russian, min(share, len(russian)))
    picked += chooser.sample(rest, min(count - len(picked), len(rest)))
    return picked


# --- distinct but similar names (labelled by hand: none of them is the listed party) -----------


@dataclass(frozen=True, slots=True)
class Distinct:
    """A name that is not the listed party it resembles."""

    name: str
    resembles: str  # the listed name it is close to, for the reader of a failure
    why: str


DISTINCT: tuple[Distinct, ...] = (
    Distinct("Malta Directory Services Ltd", "MALTA DIRECTORIES LTD.", "another business"),
    Distinct("Persian Gulf Shipping Agency", "PERSIAN GULF SHIPPING LINES LTD", "an agency"),
    Distinct(
        "Ningbo New Era Import and Export Company", "NINGBO NEW CENTURY IMPORT AND EXPORT", "era"
    ),
    Distinct("Bank of Kunming", "BANK OF KUNLUN CO LTD", "another city's bank"),
    Distinct("Banco Nacional de Costa Rica", "BANCO NACIONAL DE CUBA", "another country's bank"),
    Distinct("Banco Nacional de Panama", "BANCO NACIONAL DE CUBA", "another country's bank"),
    Distinct("National Bank of Cambodia", "NATIONAL BANK OF CUBA", "another country's bank"),
    Distinct("Blue Point Software GmbH", "BLUE POINT SALT, S.A. DE C.V.", "software, not salt"),
    Distinct("Landmark Developers", "LANDTEK DEVELOPERS", "another name"),
    Distinct("Casa del Granjero S.A.", "CASA DEL GANADERO S.A.", "another word"),
    Distinct("Grawe Limited", "GRAWIT LIMITED", "another name"),
    Distinct("Gulf Eagle Construction", "Gulf Eagle Contracting (GEC)", "another business"),
    Distinct(
        "Guangdong Institute of Technology", "Guangdong University of Technology", "institute"
    ),
    Distinct("Caribbean Airlines Limited", "AEROCARIBBEAN AIRLINES", "Trinidad's airline"),
    Distinct("Camino Euro Ltda", "CAMBIOS EURO LTDA", "another word"),
    Distinct("Sumitomo-Kai", "SUMIYOSHI-KAI", "another name"),
    Distinct("Velux Investment d.o.o.", "VELINVESTMENT D.O.O.", "another name"),
    Distinct("Roseville Investments Holdings", "ROSEVILLE INVESTMENTS S.A.", "holdings"),
    Distinct("Ghadir Investment Partners", "GHADIR INVESTMENT COMPANY", "partners"),
    Distinct("Havana Club International", "HAVANA INTERNATIONAL BANK, LTD.", "a rum brand"),
    Distinct("Achmea Development", "ACHIM DEVELOPMENT, OOO", "a Dutch insurer's name"),
    Distinct("Kohl AG", "KOHAS AG", "another name"),
    Distinct("Islamic Relief Foundation", "PAKISTANI RELIEF FOUNDATION", "another charity"),
    Distinct("Thae Pyong Trading Co Ltd", "HESONG TRADING CORPORATION", "another name"),
    Distinct("Elena Khusnutdinova", "KHUSYAYNOVA, Elena Alekseevna", "another surname"),
    Distinct("Alexander Malkin", "MALKEVICH, Alexander Aleksandrovich", "another surname"),
    Distinct("Mehr Finance Group", "MEHR EQTESAD FINANCIAL GROUP", "another group"),
    Distinct("Caribe Sol Hotels", "CARIBE SOL", "hotels, not the tour operator"),
    Distinct("Bank Melli Investments", "BANK MELLI IRAN INVESTMENT COMPANY", "fewer words"),
    Distinct(
        "Sinobright Electronics Company", "Sinobright Import and Export Company", "electronics"
    ),
    Distinct("Atlas Copco AB", "Atlas Sanatgaran", "a Swedish manufacturer"),
    Distinct("Gulf Gate Hotel", "Gulf Gate Shipping Co. LLC", "a hotel"),
    Distinct("Rosneft Trading Academy", "ROSNEFT TRADE LIMITED", "a school"),
    Distinct("Horizon Star S.A.", "ORION STAR", "another word"),
    Distinct("Maria Garcia", "GARCIA DURAN, Maria Del Rosario", "two listed names missing"),
)


# --- generated registries (for bench/screening.py and the scale tests) --------------------------

_WORDS = [
    "nordic",
    "data",
    "systems",
    "alpine",
    "cloud",
    "analytics",
    "pacific",
    "harbor",
    "green",
    "valley",
    "summit",
    "blue",
    "river",
    "quantum",
    "logic",
    "vertex",
    "solar",
    "bright",
    "north",
    "star",
    "lake",
    "forest",
    "crystal",
    "maple",
    "silver",
    "oak",
    "iron",
    "stone",
    "meadow",
    "coral",
    "delta",
    "orbit",
    "nova",
    "terra",
    "prime",
    "atlas",
    "apex",
    "cedar",
    "willow",
    "falcon",
    "eagle",
    "horizon",
    "sierra",
    "aurora",
    "boreal",
    "metro",
    "urban",
    "coastal",
    "global",
    "trading",
    "holdings",
    "partners",
    "group",
    "capital",
    "labs",
    "robotics",
    "software",
    "media",
    "energy",
    "logistics",
    "research",
    "ventures",
    "networks",
]
_FIRST = [
    "anna",
    "maria",
    "john",
    "peter",
    "li",
    "wei",
    "ahmed",
    "fatima",
    "ivan",
    "olga",
    "carlos",
    "sofia",
    "kenji",
    "yuki",
]
_LAST = [
    "smith",
    "garcia",
    "müller",
    "novak",
    "kim",
    "chen",
    "patel",
    "rossi",
    "ivanova",
    "haddad",
    "tanaka",
    "silva",
]
_FORMS = ("GmbH", "LLC", "Ltd", "Inc.", "S.A.", "AB", "Oy", "K.K.", "B.V.", "PLC", "")
_COUNTRIES = ("US", "DE", "GB", "FR", "JP", "SE", "NL", "CA", "AU", "IN", "BR", "SG", "AE", "CN")


def generated_registry(
    count: int, seed: int = 1, plant: list[str] | None = None
) -> Iterator[dict[str, object]]:
    """*count* registry entities as YAML-ready dicts: made-up company names with aliases and
    named owners; the names in *plant* are given to some of them (as listed parties would be)."""
    chooser = random.Random(seed)
    planted = list(plant or ())
    for number in range(count):
        words = chooser.sample(_WORDS, chooser.choice((2, 2, 3, 3, 4)))
        name = " ".join(w.title() for w in words) + f" {chooser.choice(_FORMS)}"
        if planted and number % max(count // len(planted), 1) == 0:
            name = planted.pop()
        entity: dict[str, object] = {
            "name": name.strip(),
            "headquarters": chooser.choice(_COUNTRIES),
        }
        if chooser.random() < 0.3:
            entity["aliases"] = [" ".join(w.upper() for w in words)]
        if chooser.random() < 0.4:
            person = f"{chooser.choice(_FIRST).title()} {chooser.choice(_LAST).title()}"
            entity["owners"] = [
                {"name": person, "country": chooser.choice(_COUNTRIES), "share": 60}
            ]
        yield {"id": f"gen-{number:06d}", **entity}
