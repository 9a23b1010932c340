"""Replay throughput: one million audit records re-decided under another pack.

Run: ``.venv/bin/python bench/replay.py [--records N] [--distinct N] [--gzip] [--keep DIR]``.

Generation (not timed as replay): a few thousand distinct, real decisions under ``aidr-2025-01``
(the replay tests' generator, ``tests/support/replay_support.py``: every country tier, agreement states,
anonymizer flags, unknown models and entities, times over 2025-2026, gate refusals and model
listings), each rendered once by the real ECS renderer into a template; the records are those
templates with a fresh decision id and time filled in, linked through the real hash chain and
written to rotated files. Every 10,000th record
is rendered again by the renderer itself and compared byte for byte with the template's output,
so the file is exactly what a gate would have written.

Measured in the same run, on the same files:

- floor: read the files, check every hash (``parse_link``) and parse every record (orjson), no
  decision: what any replay must spend; timed on the first files (bounded);
- verify: ``audit verify`` (``verify_files``) over the same first files;
- replay: ``replay_files`` over everything, to ``strict-hypothetical``, and the report built.

Prints records per second for each, the ratios, and the time for the whole input against the
target (one million records in under 60 s on a 2-core machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

from aidr_gate.audit import EcsRenderer, verify_files
from aidr_gate.audit.chain import Chain
from aidr_gate.decision import Decision
from aidr_gate.policy.pack import load_pack
from aidr_gate.replay import ReplayOptions, build_report, replay_files
from aidr_gate.replay.evidence import aidr_tree
from aidr_gate.replay.reader import FileChain, read_file

# The traffic generator the replay tests use: every tier, agreement state, model kind, flag.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import replay_support

TARGET_SECONDS = 60.0
FILE_BYTES = 256 << 20  # rotate like a journal: a new file every 256 MiB
FLOOR_FILES = 2  # files the floor and verify baselines read (bounded in time)
CHECK_EVERY = 10_000  # records re-rendered by the real renderer to check the templates
PLACEHOLDER_ID = "ffffffffffffeeeeeeee00000000"


def distinct_decisions(count: int, seed: int = 1) -> list[Decision]:
    """*count* real decisions under aidr-2025-01 over the tests' matrix of facts, in time order."""
    gate = replay_support.gate_for("aidr-2025-01")
    return [replay_support.decide(gate, r) for r in replay_support.requests(count, seed)]


def redated(decision: Decision, decision_id: str, at: float) -> Decision:
    """*decision* with another id and time (a dataclass or a msgspec Struct alike)."""
    names = getattr(type(decision), "__struct_fields__", None) or tuple(
        f.name for f in dataclasses.fields(decision)
    )
    values = {name: getattr(decision, name) for name in names}
    return type(decision)(**{**values, "decision_id": decision_id, "at": at})


_MARK = re.compile(rb"(\x00I\x00|\x00T\x00)")


class Template:
    """One decision's rendered record with its id and time left open, in both forms: with its
    class's shared facts inline (the first record of the class in a file) and naming them."""

    def __init__(self, renderer: EcsRenderer, decision: Decision) -> None:
        self.decision = decision
        stamp = renderer.clock.format(decision.at).encode()
        event = replay_support.event_for(redated(decision, PLACEHOLDER_ID, decision.at))
        self.forms = []
        for inline in (True, False):
            body = orjson.dumps(renderer.document(event, facts_inline=inline))
            marked = body.replace(PLACEHOLDER_ID.encode(), b"\x00I\x00").replace(
                stamp, b"\x00T\x00"
            )
            self.forms.append(_MARK.split(marked))

    def fill(self, decision_id: bytes, stamp: bytes, inline: bool) -> bytes:
        """The record for this decision with another id and time."""
        return b"".join(
            decision_id if p == b"\x00I\x00" else stamp if p == b"\x00T\x00" else p
            for p in self.forms[0 if inline else 1]
        )


def generate(directory: Path, records: int, distinct: int, compress: bool) -> list[Path]:
    """Write *records* chained records into rotated files in *directory*; the files in order."""
    renderer = EcsRenderer()
    templates = [Template(renderer, d) for d in distinct_decisions(distinct)]
    chain = Chain()
    files: list[Path] = []
    handle = None
    size = 0
    batch: list[bytes] = []
    in_file: set[int] = set()  # templates whose facts this file holds already
    per = max(1, records // len(templates))
    for index in range(records):
        template = templates[min(index // per, len(templates) - 1)]
        # Records of one template are a few milliseconds apart: their recorded decision holds.
        at = template.decision.at + (index % per) / 1000
        decision_id = f"{int(at * 1000):012x}5eed0000{index & 0xFFFFFFFF:08x}"
        if handle is None or size >= FILE_BYTES:
            if handle is not None:
                handle.writelines(batch)
                batch.clear()
                handle.close()
            path = directory / f"audit-{len(files):03d}.jsonl"
            files.append(path)
            in_file.clear()
            handle = open(path, "wb")  # noqa: SIM115 - closed on rotation and at the end
            size = 0
        stamp = renderer.clock.format(at)
        inline = id(template) not in in_file  # the class's first record in this file
        in_file.add(id(template))
        body = template.fill(decision_id.encode(), stamp.encode(), inline)
        if index % CHECK_EVERY == 0:
            event = replay_support.event_for(redated(template.decision, decision_id, at))
            real = orjson.dumps(renderer.document(event, facts_inline=inline))
            if real != body:
                raise SystemExit(f"template output differs from the renderer at record {index}")
        line = chain.link(body)
        batch.append(line)
        size += len(line)
        if len(batch) >= 4096:
            handle.writelines(batch)
            batch.clear()
    if handle is not None:
        handle.writelines(batch)
        handle.close()
    if compress:
        zipped = []
        for path in files:
            target = path.with_name(path.name + ".gz")
            with open(path, "rb") as src, gzip.open(target, "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
            path.unlink()
            zipped.append(target)
        files = zipped
    return files


def floor(files: list[Path]) -> tuple[int, float]:
    """Records read, hash-checked and parsed (no decision), and the seconds it took."""
    started = time.perf_counter()
    count = 0
    for path in files:
        for line in read_file(FileChain(path)):
            aidr_tree(line)
            count += 1
    return count, time.perf_counter() - started


def main() -> int:
    """Generate, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=4000, help="distinct decisions")
    parser.add_argument("--gzip", action="store_true", help="gzip the files (level 1) first")
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    args = parser.parse_args()
    if args.records < 1 or args.distinct < 1:
        parser.error("--records and --distinct must be positive")
    directory = args.keep or Path(tempfile.mkdtemp(prefix="aidr-replay-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        files = generate(directory, args.records, args.distinct, args.gzip)
        written = sum(p.stat().st_size for p in files)
        print(
            f"generated {args.records:,} records from {args.distinct:,} distinct decisions in "
            f"{time.perf_counter() - started:.1f} s: {len(files)} files, {written / 2**20:,.0f} MiB"
            + (" (gzip)" if args.gzip else "")
        )
        first = files[:FLOOR_FILES]
        floor_count, floor_seconds = floor(first)
        floor_rate = floor_count / floor_seconds
        print(
            f"floor  (read, hash check, parse; {floor_count:,} records): {floor_rate:>9,.0f} records/s"
        )
        started = time.perf_counter()
        verified = verify_files(first)
        verify_seconds = time.perf_counter() - started
        verify_rate = verified.records / verify_seconds
        print(f"verify (audit verify, same files):                 {verify_rate:>9,.0f} records/s")
        options = ReplayOptions(load_pack("strict-hypothetical"))
        started = time.perf_counter()
        result = replay_files(files, options)
        report = build_report(result)
        seconds = time.perf_counter() - started
        rate = result.tally.lines / seconds
        print(f"replay (to strict-hypothetical, report built):    {rate:>9,.0f} records/s")
        print(
            f"  replay costs {floor_rate / rate:.2f}x the floor and {verify_rate / rate:.2f}x "
            "audit verify per record"
        )
        totals = report["totals"]
        print(
            f"  {totals['lines']:,} records: {totals['replayed']:,} re-decided, "
            f"{totals['flips']:,} flips, {totals['gate_refusals']:,} refusals, "
            f"{totals['listings']:,} listings, {totals['cannot_decide']:,} cannot decide, "
            f"chain {'intact' if report['chain']['ok'] else 'BROKEN'}"
        )
        million = seconds * 1_000_000 / max(1, result.tally.lines)
        verdict = "met" if million < TARGET_SECONDS else "MISSED"
        print(
            f"{args.records:,} records replayed in {seconds:.1f} s; one million at this rate: "
            f"{million:.1f} s (target < {TARGET_SECONDS:.0f} s: {verdict})"
        )
        if not report["chain"]["ok"] or totals["lines"] != args.records:
            print("unexpected: the generated trail did not replay whole", file=sys.stderr)
            return 1
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
