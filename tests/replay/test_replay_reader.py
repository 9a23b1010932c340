"""Reading audit files for replay: order, gzip, rotation, and the chain checked as it is read."""

from __future__ import annotations

import gzip
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aidr_gate.audit import verify_files
from aidr_gate.policy.pack import load_pack
from aidr_gate.replay import AuditReader, ReplayOptions, build_report, replay_files
from aidr_gate.replay.reader import order_files, suspects
from aidr_gate.replay.report import summary
from aidr_gate.settings.audit import SigningConfig
from support.audit_support import lines, rehash
from support.replay_support import decide, gate_for, requests, write_trail

COUNT = 400


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A plain (uncompressed) trail rotated into several files, kept pristine."""
    directory = tmp_path_factory.mktemp("source")
    gate = gate_for("aidr-2025-01")
    files = write_trail(
        directory, [decide(gate, r) for r in requests(COUNT, seed=3)], max_bytes=200_000
    )
    assert len(files) >= 4
    assert verify_files(files).ok
    return files


@pytest.fixture
def files(source: list[Path], tmp_path: Path) -> list[Path]:
    """A fresh copy of the trail for a test to damage."""
    out = []
    for path in source:
        target = tmp_path / path.name
        shutil.copyfile(path, target)
        out.append(target)
    return out


def replay(paths: list[Path]) -> dict[str, Any]:
    return build_report(replay_files(paths, ReplayOptions(load_pack("aidr-2025-05-rescinded"))))


def test_files_in_any_order_are_read_in_chain_order(files: list[Path]) -> None:
    shuffled = files[:]
    random.Random(5).shuffle(shuffled)
    assert order_files(shuffled) == files
    reader = AuditReader.open(shuffled)
    seqs = []
    for line, _, _ in reader:
        seqs.append(int(line[line.rfind(b'"seq":') + 6 : line.rfind(b',"prev"')]))
    assert seqs == list(range(COUNT))
    assert reader.findings() == []
    assert reader.bytes_done == reader.bytes_total == sum(p.stat().st_size for p in files)
    assert [c.first_seq for c in reader.chains] == sorted(c.first_seq or 0 for c in reader.chains)


def test_a_file_whose_first_line_is_damaged_keeps_its_place(files: list[Path]) -> None:
    """Files are ordered by their first chained record, as audit verify orders them: a damaged
    first line does not send the file to the end."""
    second = files[1]
    _, rest = second.read_bytes().split(b"\n", 1)
    second.write_bytes(b"{not a record}\n" + rest)
    shuffled = files[::-1]
    assert order_files(shuffled) == files


def test_gzip_and_plain_files_replay_alike(files: list[Path], tmp_path: Path) -> None:
    plain = replay(files)
    zipped_dir = tmp_path / "gz"
    zipped_dir.mkdir()
    mixed = []
    for index, path in enumerate(files):
        if index % 2 == 0:
            target = zipped_dir / (path.name + ".gz")
            target.write_bytes(gzip.compress(path.read_bytes()))
        else:
            target = zipped_dir / path.name
            shutil.copyfile(path, target)
        mixed.append(target)
    zipped = replay(mixed[::-1])
    for key in ("totals", "effects", "transitions", "flips", "range"):
        assert zipped[key] == plain[key], key
    assert zipped["chain"]["ok"] and not zipped["chain"]["findings"]


def test_small_read_blocks_split_lines_correctly(files: list[Path]) -> None:
    whole = replay_files(files, ReplayOptions(load_pack("strict-hypothetical")))
    tiny = replay_files(files, ReplayOptions(load_pack("strict-hypothetical")), block=997)
    assert tiny.tally.lines == whole.tally.lines == COUNT
    assert tiny.tally.transitions == whole.tally.transitions
    assert tiny.findings == []


def test_a_changed_record_is_warned_about_and_still_replayed(files: list[Path]) -> None:
    data = lines(files[1])
    data[3] = data[3].replace(b'"kind":"event"', b'"kind":"Event"', 1)
    files[1].write_bytes(b"".join(data))
    report = replay(files)
    chain = report["chain"]
    assert not chain["ok"]
    changed = [f for f in chain["findings"] if f["kind"] == "changed"]
    assert changed and changed[0]["file"] == str(files[1]) and changed[0]["line"] == 4
    # Named exactly as ``audit verify`` names it.
    assert changed[0]["message"] == verify_files(files).errors[0].message
    assert report["totals"]["lines"] == COUNT


def test_a_forged_rehashed_record_breaks_the_link_to_the_next(files: list[Path]) -> None:
    data = lines(files[2])
    data[5] = rehash(data[5].replace(b'"kind":"event"', b'"kind":"Event"', 1))
    files[2].write_bytes(b"".join(data))
    report = replay(files)
    findings = report["chain"]["findings"]
    assert any(
        f["kind"] == "changed" and f["line"] == 7 and f["file"] == str(files[2]) for f in findings
    )


def test_a_removed_record_is_named(files: list[Path]) -> None:
    data = lines(files[1])
    del data[2]
    files[1].write_bytes(b"".join(data))
    report = replay(files)
    removed = [f for f in report["chain"]["findings"] if f["kind"] == "removed"]
    assert removed and removed[0]["file"] == str(files[1])
    assert report["totals"]["lines"] == COUNT - 1


def test_a_missing_middle_file_is_named_at_the_boundary(files: list[Path]) -> None:
    report = replay([files[0], *files[2:]])
    removed = [f for f in report["chain"]["findings"] if f["kind"] == "removed"]
    assert len(removed) == 1
    assert removed[0]["file"] == str(files[2]) and removed[0]["line"] == 1


def test_later_files_alone_warn_that_the_start_is_missing(files: list[Path]) -> None:
    report = replay(files[2:])
    findings = report["chain"]["findings"]
    assert [f["kind"] for f in findings] == ["start"]
    assert findings[0]["severity"] == "warning" and findings[0]["file"] == str(files[2])
    assert report["chain"]["ok"]


def test_a_torn_final_line_is_a_warning_and_not_a_record(files: list[Path]) -> None:
    last = files[-1]
    torn = lines(files[0])[0][:300]
    last.write_bytes(last.read_bytes() + torn)
    report = replay(files)
    torn_findings = [f for f in report["chain"]["findings"] if f["kind"] == "torn"]
    assert torn_findings and torn_findings[0]["severity"] == "warning"
    assert report["chain"]["ok"]
    assert report["totals"]["lines"] == COUNT
    assert report["files"][-1]["torn"] is True


def test_a_truncated_gzip_file_is_reported_and_the_rest_replayed(files: list[Path]) -> None:
    original = len(lines(files[1]))
    packed = files[1].with_name(files[1].name + ".gz")
    packed.write_bytes(gzip.compress(files[1].read_bytes())[:-200])
    files[1].unlink()
    paths = [files[0], packed, *files[2:]]
    report = replay(paths)
    assert any(f["kind"] == "unreadable" for f in report["chain"]["findings"])
    entry = next(f for f in report["files"] if f["path"] == str(packed))
    assert entry["error"]
    # Every other file is replayed, and whatever of that one could be read before the damage.
    assert entry["lines"] < original
    assert report["totals"]["lines"] == COUNT - original + entry["lines"]


def test_an_unchained_line_is_flagged(files: list[Path]) -> None:
    data = lines(files[0])
    data.insert(2, b'{"hello":"world"}\n')
    files[0].write_bytes(b"".join(data))
    reader = AuditReader.open(files)
    for _ in reader:
        pass
    assert suspects(reader.chains) == [0]
    assert any(f.kind == "changed" and f.line == 3 for f in reader.findings())


def test_signed_checkpoints_are_counted_apart(tmp_path: Path) -> None:
    key = tmp_path / "audit-key.pem"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    gate = gate_for("aidr-2025-01")
    decisions = [decide(gate, r) for r in requests(120, seed=13)]
    files = write_trail(
        tmp_path / "signed",
        decisions,
        batch_size=8,
        signing=SigningConfig(key_file=key, every_records=25, every_seconds=3600),
    )
    report = replay(files)
    totals = report["totals"]
    assert totals["checkpoints"] >= 4
    assert totals["lines"] == len(decisions) + totals["checkpoints"]
    assert totals["policy_decisions"] + totals["gate_refusals"] + totals["listings"] == len(
        decisions
    )
    assert totals["cannot_decide"] == 0
    assert report["chain"]["ok"] and not report["chain"]["findings"]


def test_per_process_slots_replay_as_one_chain_each(tmp_path: Path) -> None:
    """The files of two per_process slots hold two chains: both are read, neither is reported as
    broken by the other, and every record is replayed."""
    gate = gate_for("aidr-2025-01")
    slots = {
        slot: write_trail(
            tmp_path / slot, [decide(gate, r) for r in requests(n, seed=n)], max_bytes=60_000
        )
        for slot, n in (("p0", 120), ("p1", 80))
    }
    mixed = slots["p1"] + slots["p0"]
    random.Random(2).shuffle(mixed)
    reader = AuditReader.open(mixed)
    seqs: dict[int, list[int]] = {}
    for line, index, _ in reader:
        slot = int(reader.paths[index].parent.name[1:])
        seqs.setdefault(slot, []).append(
            int(line[line.rfind(b'"seq":') + 6 : line.rfind(b',"prev"')])
        )
    assert reader.findings() == []
    assert seqs == {0: list(range(120)), 1: list(range(80))}
    report = replay(mixed)
    assert report["chain"]["ok"], report["chain"]["findings"]
    assert report["totals"]["records"] == 200


def test_lines_that_are_not_records_are_never_policy_decisions(files: list[Path]) -> None:
    clean = replay(files)["totals"]
    data = lines(files[0])
    data[2:2] = [b"not json at all\n", b'{"hello":"world"}\n', b"[1,2]\n", b"\n"]
    files[0].write_bytes(b"".join(data))
    report = replay(files)
    totals = report["totals"]
    assert totals["unreadable"] == 2 and totals["not_records"] == 1
    assert totals["records"] == clean["records"] + 1
    for key in ("policy_decisions", "replayed", "cannot_decide", "gate_refusals", "listings"):
        assert totals[key] == clean[key], key
    assert totals["policy_decisions"] + totals["gate_refusals"] + totals["listings"] == COUNT
    assert report["cannot_decide"]["records"] == []
    text = summary(report)
    assert "Not records: 2 line(s) that are not JSON objects, 1 JSON line(s) without" in text


def test_every_file_belongs_to_one_chain_slot(files: list[Path], tmp_path: Path) -> None:
    """AuditReader.findings walks the slots alone: open() always gives them, covering every file
    (one slot for plain files, none empty), so there is no fallback for a reader without slots."""
    for paths in ([], files, files[:1]):
        reader = AuditReader.open(paths)
        assert sum(reader.slots) == len(reader.chains) == len(paths)
        assert reader.slots
        assert reader.findings() == []
