"""Rebuilding the engine's inputs from records: missing evidence, OCSF records, times."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidr_gate.audit import AuditEvent, EcsRenderer, OcsfRenderer
from aidr_gate.audit.chain import Chain
from aidr_gate.audit.reader import RecordReader
from aidr_gate.catalog import Model
from aidr_gate.document import format_timestamp, parse_instant
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import Agreement, AgreementStatus, load_registry
from aidr_gate.replay import Replayer, ReplayOptions, build_report, replay_files
from aidr_gate.replay.evidence import (
    Clock,
    EvidenceReader,
    MissingEvidence,
    aidr_tree,
    recorded_entity,
    recorded_model,
)
from aidr_gate.settings.audit import RecordFormat
from support.replay_support import (
    MODELS,
    LegacyRenderer,
    decide,
    event_for,
    gate_for,
    requests,
    write_trail,
)

Edit = Callable[[dict[str, Any]], None]


def drop(*path: str) -> Edit:
    """An edit that removes one key of the ``aidr`` tree."""

    def edit(tree: dict[str, Any]) -> None:
        node = tree
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


def set_value(value: Any, *path: str) -> Edit:
    """An edit that replaces one value of the ``aidr`` tree."""

    def edit(tree: dict[str, Any]) -> None:
        node = tree
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


class EditingRenderer:
    """The real ECS renderer, with some records' evidence edited (and one that fails to render)."""

    name = "ecs"

    def __init__(self, edits: dict[str, Edit], broken: set[str]) -> None:
        self.inner = LegacyRenderer()
        self.edits = edits
        self.broken = broken

    def new_file(self) -> None:
        """Nothing shared across records."""

    def render(self, event: AuditEvent) -> bytes:
        decision_id = event.decision.decision_id
        if decision_id in self.broken:
            raise RuntimeError("renderer bug")
        body = self.inner.render(event)
        edit = self.edits.get(decision_id)
        if edit is None:
            return body
        record = orjson.loads(body)
        edit(record["aidr"])
        return orjson.dumps(record)


WHY = {
    "missing aidr.entity.agreements": drop("entity", "agreements"),
    "missing aidr.model.weights": drop("model", "weights"),
    "missing aidr.origin": drop("origin"),
    "missing or unreadable aidr.decision.at": set_value("yesterday", "decision", "at"),
    "aidr.model.weights is unknown: 'translucent'": set_value("translucent", "model", "weights"),
    "aidr.schema is 3, this replay reads 1 and 2": set_value(3, "schema"),
    "aidr.origin.anonymizer has an unknown flag: ['carrier-pigeon']": set_value(
        ["carrier-pigeon"], "origin", "anonymizer"
    ),
}


def test_records_without_evidence_are_counted_and_listed_never_guessed(tmp_path: Path) -> None:
    gate = gate_for("aidr-2025-01")
    decisions = [decide(gate, r) for r in requests(600, seed=11, extras=False)]
    known = [d for d in decisions if d.evidence.entity is not None and d.evidence.entity.agreements]
    edits: dict[str, Edit] = {known[0].decision_id: WHY["missing aidr.entity.agreements"]}
    others = [d for d in decisions if d not in known[:1]]
    for decision, edit in zip(others[::50], list(WHY.values())[1:], strict=False):
        edits[decision.decision_id] = edit
    broken = {others[-1].decision_id}
    files = write_trail(tmp_path, decisions, renderer=EditingRenderer(edits, broken))

    report = build_report(replay_files(files, ReplayOptions(load_pack("strict-hypothetical"))))
    cannot = report["cannot_decide"]
    assert cannot["count"] == len(edits) + 1
    whys = Counter({w["why"]: w["count"] for w in cannot["by_why"]})
    assert set(WHY) <= set(whys)
    assert any(w.startswith("the gate could not render this record (RuntimeError)") for w in whys)
    listed = {r["decision_id"]: r for r in cannot["records"]}
    for decision_id in edits:
        assert decision_id in listed
        assert listed[decision_id]["file"] == str(files[0])
        assert listed[decision_id]["line"] >= 1
    # The others are re-decided; the totals add up.
    totals = report["totals"]
    assert totals["replayed"] == len(decisions) - cannot["count"]
    assert totals["policy_decisions"] == totals["replayed"] + totals["cannot_decide"]
    assert sum(cannot["before"].values()) == cannot["count"]


def test_ocsf_records_replay_like_ecs_records(tmp_path: Path) -> None:
    gate = gate_for("aidr-2025-01")
    decisions = [decide(gate, r) for r in requests(500, seed=4)]
    (tmp_path / "ecs").mkdir()
    (tmp_path / "ocsf").mkdir()
    ecs = write_trail(tmp_path / "ecs", decisions)
    ocsf = write_trail(tmp_path / "ocsf", decisions, record_format=RecordFormat.OCSF)
    assert b'"class_uid":6003' in ocsf[0].read_bytes()[:200]
    options = ReplayOptions(load_pack("aidr-2025-05-rescinded"))
    a = build_report(replay_files(ecs, options))
    b = build_report(replay_files(ocsf, options))
    for key in ("totals", "effects", "transitions", "flips", "gate_refusals", "listings", "range"):
        assert a[key] == b[key], key
    assert a["totals"]["flips"] > 0


def test_the_aidr_tree_is_read_whole_from_both_layouts() -> None:
    gate = gate_for("aidr-2025-01")
    for request in requests(40, seed=9):
        event = event_for(decide(gate, request))
        for renderer, where in ((EcsRenderer(), ("aidr",)), (OcsfRenderer(), ("unmapped", "aidr"))):
            line = Chain().link(renderer.render(event)).rstrip(b"\n")
            record = orjson.loads(line)
            for key in where:
                record = record[key]
            assert aidr_tree(line) == record


def test_an_odd_but_valid_line_is_parsed_whole() -> None:
    line = orjson.dumps({"x": 1, "aidr": {"schema": 1, "decision": {"id": "a"}}})
    assert aidr_tree(line) == {"schema": 1, "decision": {"id": "a"}}
    assert aidr_tree(b'{"no":"tree"}') == {}
    assert aidr_tree(b"[1,2]") is None
    assert aidr_tree(b"not json") is None


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-03T00:00:00.000Z",
        "2026-02-02T23:59:59.999Z",
        "2025-01-13T12:34:56.789Z",
        "2024-02-29T23:59:59.001Z",
        "2026-12-31T00:00:00Z",
        "2026-12-31",
    ],
)
def test_clock_parses_like_parse_instant(text: str) -> None:
    clock = Clock()
    first = clock.parse(text)
    again = clock.parse(text)  # memoised minute
    assert first == again == pytest.approx(parse_instant(text), abs=1e-9)


def test_clock_memoises_only_utc_minutes() -> None:
    """A 24-character time with an offset must not seed the minute memo for ``...Z`` times."""
    clock = Clock()
    offset = "2025-01-01T05:00:30.0+05"
    assert len(offset) == 24
    assert clock.parse(offset) == pytest.approx(parse_instant(offset), abs=1e-9)
    utc = "2025-01-01T05:00:45.123Z"
    assert clock.parse(utc) == pytest.approx(parse_instant(utc), abs=1e-9)


def test_clock_refuses_what_is_not_a_time() -> None:
    clock = Clock()
    clock.parse("2026-02-03T00:00:00.000Z")
    for bad in ("2026-02-03T00:00:+5.000Z", "2026-02-03T00:00:xx.000Z", "soon", None, 3):
        value = clock.parse(bad)
        assert value is None or value == parse_instant(bad), bad


def test_every_record_time_round_trips() -> None:
    clock = Clock()
    for request in requests(200, seed=2, extras=False):
        at = round(request.at, 3)
        assert clock.parse(format_timestamp(at)) == pytest.approx(at, abs=1e-6)


def test_recorded_entity_and_model_are_rebuilt_faithfully() -> None:
    gate = gate_for("aidr-2025-01")
    records = RecordReader()
    for request in requests(300, seed=8, extras=False):
        decision = decide(gate, request)
        line = Chain().link(EcsRenderer().render(event_for(decision))).rstrip(b"\n")
        tree = records.tree(line)
        assert tree is not None
        entity, hq, _ = recorded_entity(tree["entity"])
        model = recorded_model(tree["model"])
        original = decision.evidence.entity
        if original is None:
            assert entity is None
        else:
            assert entity is not None
            assert (entity.id, entity.headquarters, entity.denied) == (
                original.id,
                original.headquarters,
                original.denied,
            )
            assert entity.agreements == original.agreements
            assert entity.ultimate_parent == original.ultimate_parent
        assert hq == (decision.evidence.facts.headquarters if decision.evidence.facts else None)
        known = decision.evidence.model
        if known is None:
            assert model is None
        else:
            assert model is not None
            assert (model.id, model.training_ops, model.weights, model.tier) == (
                known.id,
                known.training_ops,
                known.weights,
                known.tier,
            )


def test_inputs_are_shared_between_records_with_the_same_evidence() -> None:
    gate = gate_for("aidr-2025-01")
    reader = EvidenceReader()
    request = requests(1, seed=1, extras=False)[0]
    trees = []
    records = RecordReader()
    renderer = EcsRenderer()
    for _ in range(3):
        tree = records.tree(Chain().link(renderer.render(event_for(decide(gate, request)))))
        assert tree is not None
        trees.append(tree)
    first = reader.inputs(trees[0])
    assert all(reader.inputs(tree) is first for tree in trees[1:])
    with pytest.raises(MissingEvidence):
        reader.inputs({**trees[0], "origin": None})


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


READ_BY_REPLAY = {"schema", "decision", "policy", "identity", "origin", "entity", "model"}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.extend(_paths(value, (*prefix, index)))
    return out


@pytest.fixture(scope="module")
def sample_record() -> dict[str, Any]:
    gate = gate_for("aidr-2025-01")
    # An entity with an agreement, so the agreement's fields are garbled too.
    request = next(r for r in requests(200, seed=5, extras=False) if r.entity == "merlion-sg")
    record: dict[str, Any] = orjson.loads(LegacyRenderer().render(event_for(decide(gate, request))))
    return record


@pytest.fixture(scope="module")
def strict() -> ReplayOptions:
    return ReplayOptions(load_pack("strict-hypothetical"))


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_garbled_records_never_crash_the_replay(
    sample_record: dict[str, Any], strict: ReplayOptions, data: st.DataObject
) -> None:
    record = orjson.loads(orjson.dumps(sample_record))
    for _ in range(data.draw(st.integers(1, 3))):
        # Mostly the parts replay reads; now and then anything.
        paths = _paths(record["aidr"])
        read = [p for p in paths if p[0] in READ_BY_REPLAY]
        path = data.draw(st.sampled_from(read if data.draw(st.integers(0, 4)) else paths))
        node = record["aidr"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = data.draw(JSON_VALUES)
    line = Chain().link(orjson.dumps(record)).rstrip(b"\n")
    replayer = Replayer(strict)
    replayer.feed(line, "fuzz.jsonl", 1)
    tally = replayer.tally
    # Counted in exactly one place: re-decided, refused, listed, or cannot be decided.
    placed = (
        tally.replayed
        + sum(tally.refusals.values())
        + tally.listings
        + sum(tally.cannot_decide.values())
    )
    assert placed == 1


def test_agreements_round_trip_through_their_evidence(examples_dir: Path) -> None:
    agreements = [a for e in load_registry(examples_dir / "entities.yaml") for a in e.agreements]
    assert agreements
    for agreement in agreements:
        assert Agreement.from_dict(orjson.loads(orjson.dumps(agreement.to_dict()))) == agreement


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda d: d.pop("valid_until"), "missing a.valid_until"),
        (lambda d: d.update(status="paused"), "a.status is unknown: 'paused'"),
        (lambda d: d.update(status=[1]), "a.status is unknown: [1]"),
        (lambda d: d.update(id=7), "a.id or .type is not text"),
        (lambda d: d.update(valid_from="soon"), "a.valid_from is not a date or time: 'soon'"),
        (lambda d: d.update(countries=[]), "a.countries is not a list of names"),
    ],
)
def test_garbled_agreement_evidence_names_the_field(
    edit: Callable[[dict[str, Any]], object], why: str
) -> None:
    raw = Agreement("SA-1", "contract", AgreementStatus.ACTIVE, valid_from=0.0).to_dict()
    edit(raw)
    with pytest.raises(ValueError, match="^" + re.escape(why) + "$"):
        Agreement.from_dict(raw, "a")
    with pytest.raises(ValueError, match=r"^a is not an agreement$"):
        Agreement.from_dict(["SA-1"], "a")


def test_models_are_rebuilt_from_their_evidence_block() -> None:
    gate = gate_for("aidr-2025-01")
    for model in MODELS:
        request = replace(requests(1, seed=3, extras=False)[0], model=model.id)
        block = decide(gate, request).evidence.to_dict()["model"]
        rebuilt = Model.from_evidence(orjson.loads(orjson.dumps(block)))
        assert rebuilt is not None
        assert (rebuilt.id, rebuilt.training_ops, rebuilt.weights, rebuilt.tier) == (
            model.id,
            model.training_ops,
            model.weights,
            model.tier,
        )
    unknown = replace(requests(1, seed=3, extras=False)[0], model="no-such-model")
    assert Model.from_evidence(decide(gate, unknown).evidence.to_dict()["model"]) is None
    with pytest.raises(ValueError, match=r"^m\.weights is unknown: 'x'$"):
        Model.from_evidence({"known": True, "id": "m", "training_ops": None, "weights": "x"}, "m")
    with pytest.raises(ValueError, match=r"^missing m$"):
        Model.from_evidence(None, "m")


PAST_YEAR_9999 = ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00")


@pytest.mark.parametrize("text", PAST_YEAR_9999)
def test_a_time_outside_the_years_1_to_9999_is_not_a_time(text: str) -> None:
    assert parse_instant(text) is None
    assert Clock().parse(text) is None
    assert parse_instant("9999-12-31T23:59:59.999Z") is not None
    assert parse_instant("0001-01-01T00:00:00Z") is not None


def test_the_clock_memo_refuses_seconds_past_59() -> None:
    clock = Clock()
    assert clock.parse("9999-12-31T23:59:00.000Z") is not None  # seeds the minute
    assert clock.parse("9999-12-31T23:59:60.000Z") is None
    assert clock.parse("2026-02-03T00:00:00.000Z") is not None
    assert clock.parse("2026-02-03T00:00:75.000Z") is None


@pytest.mark.parametrize("text", [*PAST_YEAR_9999, "9999-12-31T23:59:60.000Z"])
def test_a_record_time_past_the_year_9999_cannot_be_decided_and_the_report_is_made(
    sample_record: dict[str, Any], strict: ReplayOptions, tmp_path: Path, text: str
) -> None:
    chain = Chain()
    path = tmp_path / "audit.jsonl"
    with path.open("wb") as handle:
        for at in ("9999-12-31T23:59:00.000Z", text):
            record = orjson.loads(orjson.dumps(sample_record))
            record["aidr"]["decision"]["at"] = at
            handle.write(chain.link(orjson.dumps(record)))
    report = build_report(replay_files([path], strict))
    assert report["range"]["last"] == "9999-12-31T23:59:00.000Z"
    assert report["cannot_decide"]["by_why"] == [
        {"why": "missing or unreadable aidr.decision.at", "count": 1}
    ]


@pytest.mark.parametrize("record_format", [RecordFormat.ECS, RecordFormat.OCSF])
def test_compact_records_replay_as_the_records_before_them(
    tmp_path: Path, record_format: RecordFormat
) -> None:
    """The same decisions, written as schema 1 records (the whole tree in each) and as compact
    records (shared facts once per file, rotated and gzipped): the same flips, counts and ranges.
    """
    gate = gate_for("aidr-2025-01")
    decisions = [decide(gate, r) for r in requests(1500, seed=21)]
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = write_trail(tmp_path / "old", decisions, record_format=record_format, legacy=True)
    new = write_trail(
        tmp_path / "new",
        decisions,
        record_format=record_format,
        max_bytes=200_000,
        compress=True,
    )
    assert len(new) >= 3  # facts are written again in each file
    assert b'"schema":1' in old[0].read_bytes()[:4000]
    options = ReplayOptions(load_pack("strict-hypothetical"))
    a = build_report(replay_files(old, options))
    b = build_report(replay_files(new, options))
    for key in ("effects", "transitions", "flips", "gate_refusals", "listings", "range"):
        assert a[key] == b[key], key
    assert a["totals"]["flips"] > 0
    assert a["cannot_decide"] == b["cannot_decide"]
    # Each file alone is readable: its records' shared facts are in it.
    last = build_report(replay_files(new[-1:], options))
    assert last["cannot_decide"]["count"] == 0
    assert last["totals"]["replayed"] > 0
