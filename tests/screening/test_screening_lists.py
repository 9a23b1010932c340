"""The list readers on the real published files, their errors at file:line, and the list store."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from aidr_gate.errors import ConfigError
from aidr_gate.screening.csl import list_code, read_csl
from aidr_gate.screening.entries import AliasKind, DateBasis, EntryType
from aidr_gate.screening.ofac import OfacFiles, read_ofac
from aidr_gate.screening.store import (
    CSL,
    OFAC_SDN,
    ListSource,
    ListStore,
    load_snapshot,
    sources_for,
)
from support.screening_support import CSL_CURRENT, CSL_LEGACY, SDN, require_sanctions


@pytest.fixture(scope="module")
def lists() -> Path:
    return require_sanctions()


def test_the_sdn_set_is_read_with_aliases_addresses_and_remarks(lists: Path) -> None:
    read = read_ofac(OfacFiles.beside(SDN))
    entries = {e.id: e for e in read.entries}
    assert len(entries) == 7379  # every row of the 2019 snapshot, ids unique
    bank = entries["306"]
    assert bank.key == "sdn:306" and bank.type is EntryType.ENTITY and bank.programs == ("CUBA",)
    assert bank.name == "BANCO NACIONAL DE CUBA"
    assert ("aka", "NATIONAL BANK OF CUBA") in [(a.kind.value, a.name) for a in bank.aliases]
    # The low-quality a.k.a. OFAC quotes in the remarks is kept, marked weak.
    assert [a.name for a in bank.aliases if a.kind is AliasKind.WEAK] == ["BNC"]
    assert {"CH", "ES", "JP", "PA"} <= bank.countries
    assert any("Zurich" in a.text and a.country == "CH" for a in bank.addresses)
    person = entries["26233"]
    assert person.type is EntryType.INDIVIDUAL and person.birth_dates == ("17 Feb 1974",)
    assert person.countries == {"RU"} and person.line == 7377
    # Programs in OFAC's bracketed form are split.
    assert any(len(e.programs) > 1 for e in entries.values())
    # The comments file carries remarks of entries a later list has; those are counted.
    assert read.orphans["sdn_comments"] == 10 and read.orphans["alt"] == 0


def test_both_csl_layouts_are_read(lists: Path) -> None:
    legacy, _ = read_csl(str(CSL_LEGACY))
    current, _ = read_csl(str(CSL_CURRENT))
    assert len(legacy) == 115 and len(current) == 13
    by_key = {e.key: e for e in legacy + current}
    # A Treasury entry keeps its OFAC number, so the CSL and OFAC's files name one party alike.
    assert by_key["sdn:8124"].aliases[0].name == "CARIBE SOL"
    assert by_key["ssi:18300"].name == "ROSNEFT TRADE LIMITED"
    assert by_key["ssi:18300"].countries == {"CY"}
    # The current layout's _id; BIS lists without one get a digest of the row.
    assert "uvl:1b5979e8fd3920a1a0985bf5088dad930a6a5562d1513f9e4b015e42" in by_key
    gulf = [e for e in legacy if e.name == "Gulf Gate Spedition GmbH"]
    assert len(gulf) == 1 and gulf[0].list == "el" and len(gulf[0].id) == 16
    assert gulf[0].start_date == "2016-06-21" and gulf[0].countries == {"AT"}
    # "; and any successor, sub-unit, or subsidiary thereof" is not part of the name.
    assert any(e.name == "Sinobright Import and Export Company" for e in current)
    again, _ = read_csl(str(CSL_LEGACY))
    assert [e.key for e in again] == [e.key for e in legacy]  # derived ids are stable


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("Entity List (EL) - Bureau of Industry and Security", "el"),
        ("Military End User (MEU) List - Bureau of Industry and Security", "meu"),
        ("Specially Designated Nationals (SDN) - Treasury Department", "sdn"),
        ("Non-SDN Menu-Based Sanctions List (NS-MBS List) - Treasury Department", "ns-mbs"),
    ],
)
def test_list_codes(source: str, code: str) -> None:
    assert list_code(source) == code


def test_a_snapshot_merges_one_party_from_two_files_and_has_a_version(lists: Path) -> None:
    snapshot = load_snapshot(sources_for([lists]))
    assert {s.format for s in snapshot.version.sources} == {OFAC_SDN, CSL}
    assert snapshot.version.digest.startswith("sha256:") and len(snapshot.version.digest) == 71
    # 2904977 CANADA, INC. is in OFAC's set and in the CSL: one entry with both's names.
    entry = snapshot.get("sdn:8124")
    assert entry is not None and "HAVANTUR CANADA INC." in [a.name for a in entry.aliases]
    assert any("merged by key" in note for note in snapshot.notes)
    csl = next(s for s in snapshot.version.sources if s.name.endswith("csl-legacy.csv"))
    assert csl.date_basis is DateBasis.NEWEST_ENTRY and csl.date == "2019-08-13"
    stated = load_snapshot([ListSource(CSL_LEGACY, CSL, date="2026-11-30")])
    assert stated.version.date == "2026-11-30"
    assert stated.version.sources[0].date_basis is DateBasis.STATED


def _copy_set(lists: Path, target: Path) -> Path:
    for name in ("ofac-sdn.csv", "ofac-alt.csv", "ofac-add.csv", "csl-consolidated.csv"):
        shutil.copy(lists / name, target / name)
    return target


def test_a_broken_file_keeps_the_last_good_lists(
    lists: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _copy_set(lists, tmp_path)
    store = ListStore(sources_for([folder]))
    good = store.load()
    assert store.reload_if_changed() is None  # nothing changed on disk
    sdn = folder / "ofac-sdn.csv"
    original = sdn.read_text()  # OFAC's file ends without a newline
    sdn.write_text(original + '\n99999,"HALF A ROW",-0- \n')
    with caplog.at_level(logging.WARNING, logger="aidr_gate.screening"):
        outcome = store.reload_if_changed()
    assert outcome is not None and not outcome.ok and not outcome.changed
    assert "keeping the last good lists" in outcome.detail and good.version.label in outcome.detail
    assert "ofac-sdn.csv:7380" in outcome.detail and "columns" in outcome.detail
    assert "keeping the last good lists" in caplog.text
    assert store.snapshot is good and "columns" in str(store.last_error)
    # Fixed: the reload takes, and the version names the new content.
    sdn.write_text(original)
    (folder / "ofac-alt.csv").write_text(
        (folder / "ofac-alt.csv").read_text() + '\n306,99999,"aka","BNC BANK",-0- \n'
    )
    fixed = store.reload()
    assert fixed.ok and fixed.changed and store.snapshot.version.digest != good.version.digest
    assert store.last_error is None
    entry = store.snapshot.get("sdn:306")
    assert entry is not None and "BNC BANK" in [a.name for a in entry.aliases]


def test_a_missing_file_on_reload_keeps_the_lists(lists: Path, tmp_path: Path) -> None:
    folder = _copy_set(lists, tmp_path)
    store = ListStore(sources_for([folder]))
    store.load()
    os.remove(folder / "csl-consolidated.csv")
    outcome = store.reload()
    assert not outcome.ok and "cannot read file" in outcome.detail
    assert store.snapshot.get("meu:66f6ab3f26234b75a9093fce79ef0ce0") is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('36,"AEROCARIBBEAN AIRLINES",-0- ,"CUBA"\n', "1: sdn row has 4 columns, not 12"),
        ('x,"A",-0- ,"CUBA",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \n', "ent_num 'x'"),
        ('1,"A\n', "not valid CSV"),
        ("1,A,-0- ,P,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \n" * 2, "2: ent_num 1 appears twice"),
    ],
)
def test_bad_sdn_files_are_refused_at_their_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "sdn.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_snapshot([ListSource(path, OFAC_SDN)])
    assert expected in str(caught.value), str(caught.value)


def test_bad_csl_files_and_unknown_files_are_refused(tmp_path: Path) -> None:
    no_header = tmp_path / "csl.csv"
    no_header.write_text("name,whatever\nA,B\n")
    with pytest.raises(ConfigError, match="not a Consolidated Screening List header"):
        read_csl(str(no_header))
    short = tmp_path / "short.csv"
    short.write_text("source,name,alt_names,addresses\nEntity List (EL),A\n")
    with pytest.raises(ConfigError, match=r"short.csv:2: row has 2 columns, the header 4"):
        read_csl(str(short))
    binary = tmp_path / "list.csv"
    binary.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ConfigError, match="NUL bytes"):
        sources_for([binary])
    orphan = tmp_path / "x-alt.csv"
    orphan.write_text('1,2,"aka","A",-0- \n')
    with pytest.raises(ConfigError, match=r"an OFAC alt file without its sdn\.csv"):
        sources_for([orphan])
    with pytest.raises(ConfigError, match="no list files"):
        load_snapshot([])


def test_a_cp1252_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "sdn.csv"
    path.write_bytes('1,"MU\xd1OZ TRADING",-0- ,"P",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \n\x1a'
                     .encode("cp1252"))  # fmt: skip
    (entry,) = load_snapshot([ListSource(path, OFAC_SDN)])
    assert entry.name == "MUÑOZ TRADING"
