"""Re-deciding recorded requests under another pack, and counting what flips.

Each record is sorted first: a policy decision is re-decided; a refusal by a gate stage before the
policy ran (bad token, bad body, audit unavailable: rule ``gate/...``) and a model listing are
counted apart, since no pack would decide them differently; a record without the evidence to
re-decide is counted and listed with the reason, never guessed at.

Speed comes from sharing: records of one gate repeat a few thousand distinct combinations of
entity, model, country and flags (:class:`Inputs`, memoised by ``evidence``), and for one
combination the verdict can only change at a handful of instants (the pack's dated tier changes,
its legal window, the entity's agreement windows). The verdict is computed once per combination
and stretch of time between those instants, then reused: most records cost a parse, a hash check
and a few dictionary updates.

One process does it all: on the 2-core machine the project is measured on, two worker processes
ran slower than one (the cores do not scale), and most of the remaining cost is the hash check
and the JSON parse, which a process pool would only duplicate.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aidr_gate.audit.reader import RecordReader
from aidr_gate.audit.verify import Finding
from aidr_gate.catalog import ModelCatalog
from aidr_gate.decision import Effect
from aidr_gate.gate import LISTING_RULE
from aidr_gate.patterns.replay import SignalReplay
from aidr_gate.policy.engine import PolicyEngine
from aidr_gate.policy.pack import Pack
from aidr_gate.registry import EntityRegistry
from aidr_gate.replay.evidence import (
    Clock,
    EvidenceReader,
    Inputs,
    MissingEvidence,
    check_schema,
    is_checkpoint,
)
from aidr_gate.replay.reader import BLOCK, AuditReader, FileChain

# Least to most restrictive, the order reports list them in.
EFFECTS: tuple[str, ...] = (Effect.ALLOW.value, Effect.LOG.value, Effect.DENY.value)
# How restrictive an effect is: a flip towards a higher rank cuts someone off (or flags them).
RANK = {Effect.ALLOW.value: 0, Effect.LOG.value: 1, Effect.DENY.value: 2}
UNKNOWN = "(unknown)"
NONE = "(none)"
MAX_LISTED = 1000  # records listed one by one (cannot-decide); the counts are always complete
PROGRESS_EVERY = 8192  # records between progress reports


# (kind, entity, country, effective tier, model, old model tier, new model tier, old reason,
#  new reason): one row of the flips table.
FlipKey = tuple[str, str, str, str, str, str, str, str, str]
# What a verdict comes down to: effect, reason, rule, effective tier, model tier, in window.
Verdict = tuple[str, str, str, str, str, bool]


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What to re-decide with: the pack, optional registry and catalogue, optional fixed time."""

    pack: Pack
    registry: EntityRegistry | None = None
    catalog: ModelCatalog | None = None
    at: float | None = None  # re-decide every record as if at this time
    registry_source: str | None = None  # file names, for the report
    registry_revision: str | None = None  # the --registry store's revision when it was read
    catalog_source: str | None = None


class Progress(Protocol):
    """Hears how far a replay is: bytes of input done and in all, records read, flips found."""

    def update(self, done: int, total: int, records: int, flips: int) -> None:
        """Called every few thousand records and once at the end."""
        ...


@dataclass(slots=True)
class FlipStats:
    """One row of the flips table: how many, when first and last, one decision id to look up."""

    count: int
    first: float
    last: float
    sample: str


@dataclass(slots=True)
class Tally:
    """Everything counted during a replay."""

    lines: int = 0
    records: int = 0  # lines that are JSON objects (checkpoints included)
    checkpoints: int = 0
    unreadable: int = 0  # lines that are not JSON objects
    not_records: int = 0  # JSON objects without an aidr tree that are not checkpoints
    listings: int = 0
    outside_window: int = 0
    flip_count: int = 0
    first_at: float | None = None
    last_at: float | None = None
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    flips: dict[FlipKey, FlipStats] = field(default_factory=dict)
    entity_records: Counter[str] = field(default_factory=Counter)
    reason_changes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    refusals: Counter[tuple[str, str, int | None]] = field(default_factory=Counter)
    recorded_packs: Counter[tuple[object, object, object]] = field(default_factory=Counter)
    recorded_registries: Counter[str] = field(default_factory=Counter)  # revision -> records
    cannot_decide: Counter[str] = field(default_factory=Counter)
    cannot_before: Counter[str] = field(default_factory=Counter)
    cannot_list: list[dict[str, Any]] = field(default_factory=list)
    # Re-decided records by the screening list version they saw ("(none)": no screening).
    list_versions: Counter[str] = field(default_factory=Counter)

    @property
    def replayed(self) -> int:
        """Policy decisions re-decided."""
        return sum(self.transitions.values())


@dataclass(slots=True)
class ReplayResult:
    """A finished replay: the tally, each file's chain summary, the chain findings, the time."""

    options: ReplayOptions
    tally: Tally
    chains: list[FileChain]
    findings: list[Finding]
    elapsed: float
    signals: dict[str, Any] | None = None  # pattern signals recomputed (a pack testing them)

    @property
    def records_per_second(self) -> float:
        """Throughput over every line read."""
        return self.tally.lines / self.elapsed if self.elapsed > 0 else 0.0


class Replayer:
    """Re-decides audit records under one pack; feed it lines, then read :attr:`tally`."""

    def __init__(self, options: ReplayOptions) -> None:
        self.options = options
        self.engine = PolicyEngine(options.pack)
        pack = options.pack
        bounds = set(self.engine.countries_changing())
        bounds.update(t for t in (pack.effective_from, pack.effective_until) if t is not None)
        self.evidence = EvidenceReader(
            registry=options.registry,
            catalog=options.catalog,
            pack_bounds=tuple(sorted(bounds)),
        )
        self.clock = Clock()
        self.tally = Tally()
        self.records = RecordReader()  # keeps the shared facts met, for the records after them
        # A pack testing pattern signals: recomputed in record order, decided record by record.
        self.patterns = SignalReplay(self.engine) if self.engine.pattern_keys else None

    def feed(self, line: bytes, file: str, number: int) -> None:
        """Sort and re-decide one record line (the hot path: kept free of needless work)."""
        tally = self.tally
        tally.lines += 1
        tree = self.records.tree(line)
        if tree is None:
            # Not a record at all: counted as unreadable, never as a policy decision.
            if line.strip():
                tally.unreadable += 1
            return
        tally.records += 1
        decision = tree.get("decision")
        if type(decision) is not dict:
            self._not_a_decision(tree, line, file, number)
            return
        at = self.clock.parse(decision.get("at"))
        self._note_seen(at, tree)
        rule = decision.get("rule")
        reasons = decision.get("reasons")
        old_reason = reasons[0] if type(reasons) is list and reasons else UNKNOWN
        if type(rule) is str and rule.startswith("gate/"):
            self._gate_record(rule, decision, old_reason)
            return
        self._redecide(tree, decision, at, old_reason, file, number)

    def _redecide(
        self,
        tree: dict[str, Any],
        decision: dict[str, Any],
        at: float | None,
        old_reason: object,
        file: str,
        number: int,
    ) -> None:
        """A policy decision: re-decided from its evidence, or listed as one that cannot be."""
        old = decision.get("effect")
        try:
            check_schema(tree)
            if type(old) is not str or old not in RANK:
                raise MissingEvidence(f"aidr.decision.effect is not an effect: {old!r}")
            if at is None:
                raise MissingEvidence("missing or unreadable aidr.decision.at")
            inputs = self.evidence.inputs(tree)
        except MissingEvidence as exc:
            self._cannot(decision, at, old, file, number, exc.why)
            return
        verdict = self._verdict(tree, inputs, at)
        new = verdict[0]
        tally = self.tally
        tally.transitions[(old, new)] += 1
        tally.entity_records[inputs.entity_label] += 1
        tally.list_versions[inputs.list_version or NONE] += 1
        if not verdict[5]:
            tally.outside_window += 1
        if new == old:
            if old_reason != verdict[1]:
                tally.reason_changes[(new, str(old_reason), verdict[1])] += 1
            return
        self._flip(
            (
                f"{old}->{new}",
                inputs.entity_label,
                inputs.network_country or UNKNOWN,
                verdict[3],
                inputs.model_label,
                inputs.old_model_tier,
                verdict[4],
                str(old_reason),
                verdict[1],
            ),
            at,
            decision,
        )

    def _verdict(self, tree: dict[str, Any], inputs: Inputs, at: float) -> Verdict:
        """The new verdict: shared by the combination's records in one stretch of time, unless
        the pack tests pattern signals, which change record by record."""
        when = at if self.options.at is None else self.options.at
        if self.patterns is not None:
            signals = self.patterns.signals(
                tree,
                at=at,
                when=when,
                network_country=inputs.network_country,
                headquarters=inputs.headquarters,
                anonymizer=inputs.anonymizer,
            )
            return self._decide(inputs, when, signals)
        slot = bisect_right(inputs.bounds, when)
        known = inputs.verdicts.get(slot)
        if known is None:
            known = inputs.verdicts[slot] = self._decide(inputs, when)
        return known

    def _not_a_decision(self, tree: dict[str, Any], line: bytes, file: str, number: int) -> None:
        """A JSON object without ``aidr.decision``: a checkpoint, a foreign line or a bad record."""
        tally = self.tally
        if not tree:
            # No aidr tree: a checkpoint, or a JSON line the gate did not write as a record.
            if is_checkpoint(line):
                tally.checkpoints += 1
            else:
                tally.not_records += 1
            return
        why = "the record has no aidr.decision"
        try:
            check_schema(tree)
        except MissingEvidence as exc:
            why = exc.why
        self._cannot(None, None, None, file, number, why)

    def _note_seen(self, at: float | None, tree: dict[str, Any]) -> None:
        """The time range read, the pack the record was decided under and the registry's
        revision it saw."""
        tally = self.tally
        registry = tree.get("registry")
        if type(registry) is dict:
            revision = registry.get("revision")
            tally.recorded_registries[revision if type(revision) is str else "unknown"] += 1
        policy = tree.get("policy")
        if at is not None:
            first = tally.first_at
            if first is None or at < first:
                tally.first_at = at
            last = tally.last_at
            if last is None or at > last:
                tally.last_at = at
        if type(policy) is dict:
            ref = (policy.get("id"), policy.get("digest"), policy.get("status"))
            try:
                tally.recorded_packs[ref] += 1
            except TypeError:  # a garbled record: a list where a name should be
                tally.recorded_packs[(str(ref[0]), str(ref[1]), str(ref[2]))] += 1

    def _gate_record(self, rule: str, decision: dict[str, Any], old_reason: object) -> None:
        """A decision the gate made before the policy (a refusal), or a model listing."""
        tally = self.tally
        if rule == LISTING_RULE:
            tally.listings += 1
            return
        status = decision.get("status")
        tally.refusals[(str(old_reason), rule, status if type(status) is int else None)] += 1

    def _flip(self, key: FlipKey, at: float, decision: dict[str, Any]) -> None:
        """One more record whose effect changes, counted in its group."""
        tally = self.tally
        tally.flip_count += 1
        stats = tally.flips.get(key)
        if stats is None:
            tally.flips[key] = FlipStats(1, at, at, str(decision.get("id")))
        else:
            stats.count += 1
            if at < stats.first:
                stats.first = at
            elif at > stats.last:
                stats.last = at

    def _decide(
        self, inputs: Inputs, when: float, signals: dict[str, float] | None = None
    ) -> Verdict:
        verdict = self.engine.evaluate(
            entity=inputs.entity,
            headquarters=inputs.headquarters,
            parent=inputs.parent,
            model=inputs.model,
            network_country=inputs.network_country,
            anonymizer=inputs.anonymizer,
            at=when,
            screening=inputs.screening,
            region=inputs.region,
            signals=signals,
        )
        outcome = verdict.outcome
        return (
            outcome.effect.value,
            outcome.reason,
            outcome.rule,
            verdict.facts.effective_tier or NONE,
            verdict.facts.model_tier,
            verdict.policy.in_window,
        )

    def _cannot(
        self,
        decision: dict[str, Any] | None,
        at: float | None,
        effect: Any,
        file: str,
        number: int,
        why: str,
    ) -> None:
        tally = self.tally
        tally.cannot_decide[why] += 1
        known = type(effect) is str and effect in RANK
        tally.cannot_before[effect if known else UNKNOWN] += 1
        if len(tally.cannot_list) < MAX_LISTED:
            decision_id = decision.get("id") if decision else None
            tally.cannot_list.append(
                {
                    "decision_id": decision_id if isinstance(decision_id, str) else None,
                    "at": at,
                    "effect": effect if known else None,
                    "file": file,
                    "line": number,
                    "why": why,
                }
            )


def replay_files(
    paths: Iterable[Path],
    options: ReplayOptions,
    *,
    progress: Progress | None = None,
    block: int = BLOCK,
) -> ReplayResult:
    """Replay audit files (any order; rotated and compressed too) under ``options.pack``."""
    started = time.perf_counter()
    reader = AuditReader.open(list(paths), block=block)
    replayer = Replayer(options)
    feed = replayer.feed
    names = [str(chain.path) for chain in reader.chains]
    tally = replayer.tally
    for count, (line, index, number) in enumerate(reader, 1):
        feed(line, names[index], number)
        if progress is not None and count % PROGRESS_EVERY == 0:
            progress.update(reader.bytes_done, reader.bytes_total, tally.lines, tally.flip_count)
    if progress is not None:
        progress.update(reader.bytes_total, reader.bytes_total, tally.lines, tally.flip_count)
    return ReplayResult(
        options=options,
        tally=tally,
        chains=reader.chains,
        findings=reader.findings(),
        elapsed=time.perf_counter() - started,
        signals=replayer.patterns.summary() if replayer.patterns is not None else None,
    )
