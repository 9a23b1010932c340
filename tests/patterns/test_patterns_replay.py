"""``replay`` under a pack that tests pattern signals: recomputed from the trail in record order."""

from __future__ import annotations

from pathlib import Path

from aidr_gate.catalog import Model, Weights
from aidr_gate.decision import Decision
from aidr_gate.facts import CountrySource, Identity, Origin
from aidr_gate.gate import Gate, state_for
from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import Entity
from aidr_gate.replay import ReplayOptions, build_report, replay_files
from support.environment import EXAMPLES
from support.replay_support import write_trail

T0 = 1_767_225_600.0
MODELS = [Model("aurora-frontier", training_ops=4e26, weights=Weights.CLOSED)]
ENTITIES = [Entity("acme-us", "US")]
HOPS = [("DE", "5.1.0.9"), ("SE", "89.160.20.10"), ("JP", "1.0.16.9"), ("JP", "1.0.16.9")]


def decisions(pack: str | Path) -> list[Decision]:
    gate = Gate(state_for(load_pack(pack), entities=ENTITIES, models=MODELS))
    out = []
    steady = Identity("acme-us", subject="bob")
    for minute in range(5):
        origin = Origin(ip="8.8.8.8", country="US", country_source=CountrySource.GEOIP)
        out.append(
            gate.decide(
                identity=steady, origin=origin, model_id="aurora-frontier", at=T0 + minute * 60
            )
        )
    alice = Identity("acme-us", subject="alice")
    for i, (country, ip) in enumerate(HOPS):
        origin = Origin(ip=ip, country=country, country_source=CountrySource.GEOIP)
        out.append(
            gate.decide(identity=alice, origin=origin, model_id="aurora-frontier", at=T0 + 400 + i)
        )
    return out  # fmt: skip


def test_replay_under_a_pattern_pack_flips_the_hop(tmp_path: Path) -> None:
    files = write_trail(tmp_path, decisions("aidr-2025-01"))
    result = replay_files(files, ReplayOptions(load_pack(EXAMPLES / "patterns.yaml")))
    report = build_report(result)
    assert report["signals"]["recomputed"] == 9
    assert report["signals"]["compared_with_recorded"] == 0  # the old pack tested none
    flips = {(t["from"], t["to"]): t["count"] for t in report["transitions"]}
    # The third and fourth hop (three countries within a minute) are now denied; bob is not.
    assert flips[("allow", "deny")] == 2
    assert flips[("allow", "allow")] == 7


def test_replay_under_the_recording_pack_recomputes_the_recorded_signals(tmp_path: Path) -> None:
    pack = EXAMPLES / "patterns.yaml"
    recorded = decisions(pack)
    assert recorded[-1].reasons == ("ORIGIN_VELOCITY",)
    files = write_trail(tmp_path, recorded)
    report = build_report(replay_files(files, ReplayOptions(load_pack(pack))))
    assert report["signals"]["compared_with_recorded"] == 9
    assert report["signals"]["differ_from_recorded"] == 0
    assert report["totals"]["flips"] == 0


def test_a_pack_without_signals_replays_as_before(tmp_path: Path) -> None:
    files = write_trail(tmp_path, decisions("aidr-2025-01"))
    report = build_report(replay_files(files, ReplayOptions(load_pack("aidr-2025-01"))))
    assert report["signals"] is None and report["totals"]["flips"] == 0
