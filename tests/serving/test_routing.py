"""Routing policies: weighted rendezvous split, shadow sampling, team-draft interleaving."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from flywheel.errors import ValidationError
from flywheel.serving.routing import (
    Arm,
    Interleaving,
    ShadowPolicy,
    WeightedRouter,
    credit,
    parse_routing_spec,
    team_draft_interleave,
)

KEYS = [f"N{i:05d}" for i in range(10_000)]


def shares(router: WeightedRouter, keys: list[str]) -> dict[str, float]:
    counts = Counter(router.choose(key).name for key in keys)
    return {name: n / len(keys) for name, n in counts.items()}


def test_ten_thousand_keys_at_90_10_split_within_two_points() -> None:
    observed = shares(WeightedRouter([Arm("a", 90), Arm("b", 10)]), KEYS)
    assert abs(observed["a"] - 0.90) <= 0.02
    assert abs(observed["b"] - 0.10) <= 0.02


@pytest.mark.parametrize("weights", [(1, 1), (3, 1, 1), (0.5, 0.25, 0.25), (70, 20, 10)])
def test_shares_follow_any_weights(weights: tuple[float, ...]) -> None:
    arms = [Arm(f"arm{i}", w) for i, w in enumerate(weights)]
    observed = shares(WeightedRouter(arms), KEYS)
    total = sum(weights)
    for arm in arms:
        assert abs(observed.get(arm.name, 0.0) - arm.weight / total) <= 0.02, arm


def test_same_key_same_arm_across_router_instances_and_arm_order() -> None:
    first = WeightedRouter([Arm("a", 90), Arm("b", 10)])
    second = WeightedRouter([Arm("b", 10), Arm("a", 90)])
    for key in KEYS[:2000]:
        arm = first.choose(key)
        assert first.choose(key) == arm
        assert second.choose(key) == arm


def test_choice_is_the_same_in_another_process_with_another_hash_seed() -> None:
    keys = KEYS[:300]
    here = [WeightedRouter([Arm("a", 90), Arm("b", 10)]).choose(k).name for k in keys]
    code = (
        "import json, sys\n"
        "from flywheel.serving.routing import Arm, WeightedRouter\n"
        "r = WeightedRouter([Arm('a', 90), Arm('b', 10)])\n"
        "print(json.dumps([r.choose(k).name for k in json.loads(sys.stdin.read())]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(keys),
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    assert json.loads(out.stdout) == here


def test_adding_an_arm_moves_keys_only_to_the_new_arm() -> None:
    before = WeightedRouter([Arm("a", 90), Arm("b", 10)])
    after = WeightedRouter([Arm("a", 90), Arm("b", 10), Arm("c", 10)])
    moved = 0
    for key in KEYS:
        old, new = before.choose(key).name, after.choose(key).name
        if old != new:
            assert new == "c", key
            moved += 1
    # The new arm takes its weight's share (10 / 110), taken from both old arms.
    assert abs(moved / len(KEYS) - 10 / 110) <= 0.02
    assert {before.choose(k).name for k in KEYS if after.choose(k).name == "c"} == {"a", "b"}


def test_removing_an_arm_moves_only_its_keys() -> None:
    three = WeightedRouter([Arm("a", 50), Arm("b", 30), Arm("c", 20)])
    two = WeightedRouter([Arm("a", 50), Arm("c", 20)])
    for key in KEYS[:3000]:
        old = three.choose(key).name
        if old != "b":
            assert two.choose(key).name == old


def test_salt_reshuffles_units_but_keeps_shares() -> None:
    plain = WeightedRouter([Arm("a", 50), Arm("b", 50)])
    salted = WeightedRouter([Arm("a", 50), Arm("b", 50)], salt="experiment-2")
    differ = sum(plain.choose(k) != salted.choose(k) for k in KEYS)
    assert 0.4 <= differ / len(KEYS) <= 0.6
    assert abs(shares(salted, KEYS)["a"] - 0.5) <= 0.02


def test_scores_are_weighted_rendezvous() -> None:
    router = WeightedRouter([Arm("a", 3), Arm("b", 1)])
    for key in KEYS[:100]:
        scores = {arm.name: router.score(arm, key) for arm in router.arms}
        assert all(s > 0 and math.isfinite(s) for s in scores.values())
        assert router.choose(key).name == max(scores, key=lambda n: scores[n])


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: WeightedRouter([]), "arms"),
        (lambda: WeightedRouter([Arm("a", 1), Arm("a", 2)]), "arms"),
        (lambda: Arm("a", 0), "arms[a].weight"),
        (lambda: Arm("a", -1), "arms[a].weight"),
        (lambda: Arm("a", math.nan), "arms[a].weight"),
        (lambda: Arm("a", math.inf), "arms[a].weight"),
        (lambda: Arm("a", True), "arms[a].weight"),
        (lambda: Arm("../a", 1), "arm.name"),
        (lambda: ShadowPolicy(1.5), "shadow.share"),
        (lambda: ShadowPolicy(-0.1), "shadow.share"),
    ],
)
def test_invalid_routing_is_refused_naming_the_field(make: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make()
    assert info.value.field == field


def test_shadow_mirrors_its_share_of_requests_deterministically() -> None:
    policy = ShadowPolicy(0.1)
    ids = [f"req-{i}" for i in range(10_000)]
    mirrored = [i for i in ids if policy.mirrors(i)]
    assert abs(len(mirrored) / len(ids) - 0.1) <= 0.02
    assert mirrored == [i for i in ids if ShadowPolicy(0.1).mirrors(i)]
    assert all(ShadowPolicy(1.0).mirrors(i) for i in ids[:100])
    assert not any(ShadowPolicy(0.0).mirrors(i) for i in ids[:100])


def first_unused(ranking: list[str], used: set[str]) -> str | None:
    return next((item for item in ranking if item not in used), None)


def random_rankings(rng: random.Random) -> tuple[list[str], list[str]]:
    pool = [f"d{i}" for i in range(rng.randint(0, 12))]
    a = rng.sample(pool, rng.randint(0, len(pool)))
    b = rng.sample(pool, rng.randint(0, len(pool)))
    return a, b


def test_team_draft_properties_on_random_rankings() -> None:
    rng = random.Random(7)
    for case in range(500):
        a, b = random_rankings(rng)
        key = f"query-{case}"
        result = team_draft_interleave(a, b, key=key)
        assert result == team_draft_interleave(a, b, key=key)  # deterministic per key
        assert len(set(result.items)) == len(result.items)  # no duplicates
        assert set(result.team_of) == set(result.items)
        used: set[str] = set()
        picks = {"a": 0, "b": 0}
        for i, item in enumerate(result.items):
            team = result.team_of[item]
            # A team picks its highest-ranked item not shown yet.
            assert item == first_unused(a if team == "a" else b, used), (case, i)
            used.add(item)
            picks[team] += 1
            if i % 2 == 1:  # each round, both teams have picked once
                assert picks["a"] == picks["b"], (case, i)
        # Merging stops only when one side has nothing left to add.
        assert first_unused(a, used) is None or first_unused(b, used) is None


def test_team_draft_first_pick_depends_on_the_key() -> None:
    a, b = ["x1", "x2", "x3"], ["y1", "y2", "y3"]
    results = [team_draft_interleave(a, b, key=f"k{i}") for i in range(400)]
    starters = Counter(r.team_of[r.items[0]] for r in results)
    assert 140 <= starters["a"] <= 260
    assert 140 <= starters["b"] <= 260


def test_team_draft_of_disjoint_rankings_pairs_picks_and_respects_limit() -> None:
    a, b = ["x1", "x2", "x3"], ["y1", "y2", "y3"]
    result = team_draft_interleave(a, b, key="q")
    # Pairs of picks (one per team) until one ranking runs out: 5 or 6 items, each side in order.
    assert len(result.items) in (5, 6)
    assert [i for i in result.items if i in a] == a[: len([i for i in result.items if i in a])]
    assert [i for i in result.items if i in b] == b[: len([i for i in result.items if i in b])]
    for first, second in zip(result.items[::2], result.items[1::2], strict=False):
        assert {result.team_of[first], result.team_of[second]} == {"a", "b"}
    limited = team_draft_interleave(a, b, key="q", limit=3)
    assert limited.items == result.items[:3]
    with pytest.raises(ValidationError) as info:
        team_draft_interleave(a, b, key="q", limit=-1)
    assert info.value.field == "limit"


def test_identical_rankings_interleave_to_the_same_ranking() -> None:
    ranking = ["p", "q", "r", "s"]
    result = team_draft_interleave(ranking, ranking, key="same")
    assert result.items == tuple(ranking)


def test_credit_counts_distinct_clicks_per_team() -> None:
    shown = Interleaving(("x", "y", "z", "w"), {"x": "a", "y": "b", "z": "a", "w": "b"})
    assert credit(shown, []) == {"a": 0, "b": 0}
    assert credit(shown, ["x", "z", "x"]) == {"a": 2, "b": 0}
    assert credit(shown, ["y", "x", "not-shown"]) == {"a": 1, "b": 1}
    result = team_draft_interleave(["x1", "x2", "x3"], ["y1", "y2", "y3"], key="q")
    by_team = Counter(result.team_of[item] for item in result.items)
    assert credit(result, result.items) == {"a": by_team["a"], "b": by_team["b"]}
    assert credit(result, ["x1", "y1"]) == {"a": 1, "b": 1}


EXAMPLE: dict[str, Any] = {
    "unit_key": "tailnum",
    "arms": [
        {"name": "a", "alias": "production", "weight": 90},
        {"name": "b", "alias": "challenger", "weight": 10},
    ],
    "shadow": {"alias": "staging", "share": 0.1},
}


def test_routing_spec_parses_the_documented_example() -> None:
    spec = parse_routing_spec(EXAMPLE)
    assert spec.unit_key == "tailnum"
    assert [(a.name, a.alias, a.weight) for a in spec.arms] == [
        ("a", "production", 90.0),
        ("b", "challenger", 10.0),
    ]
    assert spec.shadow is not None
    assert (spec.shadow.alias, spec.shadow.share, spec.shadow.name) == ("staging", 0.1, "staging")
    assert [a.name for a in spec.router().arms] == ["a", "b"]
    assert spec.shadow_policy() == ShadowPolicy(0.1, name="staging")
    assert parse_routing_spec({**EXAMPLE, "shadow": None}).shadow_policy() is None


def with_arm(i: int, **changes: Any) -> dict[str, Any]:
    arms = [dict(arm) for arm in EXAMPLE["arms"]]
    arms[i].update(changes)
    arms[i] = {k: v for k, v in arms[i].items() if v is not None}
    return {**EXAMPLE, "arms": arms}


@pytest.mark.parametrize(
    ("routing", "field"),
    [
        ([], "routing"),
        ({**EXAMPLE, "unit_key": ""}, "routing.unit_key"),
        ({k: v for k, v in EXAMPLE.items() if k != "unit_key"}, "routing.unit_key"),
        ({**EXAMPLE, "arms": []}, "routing.arms"),
        ({**EXAMPLE, "arms": ["a"]}, "routing.arms[0]"),
        ({**EXAMPLE, "colour": "red"}, "routing.colour"),
        ({**EXAMPLE, "salt": 3}, "routing.salt"),
        (with_arm(1, weight=0), "routing.arms[1].weight"),
        (with_arm(1, weight="10"), "routing.arms[1].weight"),
        (with_arm(1, name="a"), "routing.arms[1].name"),
        (with_arm(0, alias=None), "routing.arms[0].alias"),
        (with_arm(0, alias="../x"), "routing.arms[0].alias"),
        ({**EXAMPLE, "shadow": {"alias": "staging", "share": 2}}, "routing.shadow.share"),
        ({**EXAMPLE, "shadow": {"alias": "staging"}}, "routing.shadow.share"),
        ({**EXAMPLE, "shadow": {"share": 0.1}}, "routing.shadow.alias"),
        ({**EXAMPLE, "shadow": "staging"}, "routing.shadow"),
    ],
)
def test_malformed_routing_spec_is_refused_naming_the_field(routing: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_routing_spec(routing)
    assert info.value.field == field
