"""bench/decisions.py: its pycasbin and Cedar formulations of aidr-2025-01 stay equivalent to the engine.

Not a timing test: it decides a small seeded mix with all three and requires the same effect, status,
reason code and rule for every request, so a change to the pack or the engine that the foreign
formulations do not follow (or the reverse) fails here rather than in a benchmark run.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from aidr_gate.policy.pack import load_pack
from aidr_gate.registry import Agreement, AgreementStatus, Entity
from support.environment import ROOT

BENCH = ROOT / "bench" / "decisions.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script, imported as a module (``bench/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_decisions", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_casbin_and_cedar_agree_on_every_decision(bench: ModuleType, seed: int) -> None:
    pack = bench.bench_pack()
    table = bench.country_table(pack)
    mix = bench.generate_mix(seed, entities=150, models=60, requests=400, table=table)

    problems, tally = bench.disagreements(mix.requests, bench.build_deciders(pack, mix))

    assert problems == []
    # The mix is only a check if it reaches every rule of the pack and its default.
    reached = {rule for _effect, _status, _reason, rule in tally}
    assert reached == {rule.id for rule in pack.rules} | {"default"}


def test_mix_straddles_every_tier_change(bench: ModuleType) -> None:
    table = bench.country_table(bench.bench_pack())
    changes = bench.tier_changes(table)
    mix = bench.generate_mix(1, entities=150, models=60, requests=400, table=table)

    assert changes  # KH leaves Tier 3 on 2026-02-03
    for change in changes:
        assert any(r.at == change - 1 for r in mix.requests)
        assert any(r.at == change for r in mix.requests)


def test_a_drifted_formulation_is_caught(bench: ModuleType) -> None:
    # The engine under the rescinded-rule pack against casbin and Cedar written for aidr-2025-01.
    pack = bench.bench_pack()
    table = bench.country_table(pack)
    mix = bench.generate_mix(1, entities=150, models=60, requests=400, table=table)
    deciders = (
        bench.EngineDecider(load_pack("aidr-2025-05-rescinded"), mix),
        bench.CasbinDecider(table, mix),
        bench.CedarDecider(table, mix),
    )

    problems, _ = bench.disagreements(mix.requests, deciders, limit=5)

    assert len(problems) == 5
    assert "aidr_gate=" in problems[0]
    assert "pycasbin=" in problems[0]
    assert "cedarpy=" in problems[0]


def test_cedar_formulation_refuses_more_agreements_than_it_has_slots(bench: ModuleType) -> None:
    table = bench.country_table(bench.bench_pack())
    agreements = tuple(
        Agreement(id=f"a{i}", type="uveu", status=AgreementStatus.ACTIVE)
        for i in range(bench.MAX_AGREEMENTS + 1)
    )
    crowded = Entity(id="crowded", headquarters="SE", agreements=agreements)

    with pytest.raises(ValueError, match="more than 3 agreements"):
        bench.cedar_entities(table, bench.Mix((crowded,), (), ()))
