"""Traffic routing policies, as pure functions of hashes: weighted split, shadow, interleaving.

Weighted split (:class:`WeightedRouter`) uses **weighted rendezvous hashing** (highest random
weight). For a unit key ``k`` (a user, an aircraft tail number...) every arm ``a`` gets the score

    ``score(a, k) = -weight(a) / ln(u(a, k))``

where ``u(a, k)`` is in ``(0, 1)``, read from the first 8 bytes of a BLAKE2b hash of
``(salt, arm name, key)`` (each part length-prefixed, so no two triples share an input). The
arm with the highest score wins (ties, which need a hash collision, go to the first arm in the
given order). Because ``-1 / ln(u)`` for uniform ``u`` is the inverse of an exponential draw, arm
``a`` wins with probability ``weight(a) / sum(weights)``. The choice is:

- deterministic and sticky: it depends only on the salt, the arms and the key, never on the
  process, the order of requests or Python's per-process ``hash`` seed;
- stable when arms are added: existing arms keep their scores, so a key moves only if the new
  arm beats them, i.e. only to the new arm (removing an arm moves only that arm's keys).

:class:`ShadowPolicy` mirrors a share of requests, chosen by the same kind of hash of the request
id. :func:`team_draft_interleave` merges two rankings with the team-draft method of Radlinski,
Kurup and Joachims ("How does clickthrough data reflect retrieval quality?", CIKM 2008), drawing
its coin flips from a hash of the key, and :func:`credit` counts the clicks each team earned.

:func:`parse_routing_spec` reads the ``routing`` section of a deployment spec (see
``serving/runtime.py``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel.errors import ValidationError
from flywheel.naming import validate_name

__all__ = [
    "Arm",
    "ArmSpec",
    "Interleaving",
    "RoutingSpec",
    "ShadowPolicy",
    "ShadowSpec",
    "WeightedRouter",
    "credit",
    "parse_routing_spec",
    "team_draft_interleave",
    "unit_hash",
]

TEAM_A = "a"
TEAM_B = "b"
_SCALE = float(2**64)


def unit_hash(*parts: str) -> float:
    """Return a deterministic number in ``(0, 1)`` from ``parts`` (BLAKE2b, length-prefixed).

    Examples:
        >>> unit_hash("control", "N123") == unit_hash("control", "N123")
        True
        >>> 0.0 < unit_hash("x") < 1.0
        True
    """
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return (int.from_bytes(digest.digest(), "big") + 0.5) / _SCALE


def _check_weight(field_name: str, weight: object) -> float:
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight <= 0
    ):
        raise ValidationError(field_name, f"expected a finite number > 0, got {weight!r}")
    return float(weight)


@dataclass(frozen=True)
class Arm:
    """One arm of a weighted split: a name and a positive, finite weight."""

    name: str
    weight: float

    def __post_init__(self) -> None:
        validate_name("arm.name", self.name)
        _check_weight(f"arms[{self.name}].weight", self.weight)


class WeightedRouter:
    """Choose an arm for a unit key by weighted rendezvous hashing (see the module docstring).

    Examples:
        >>> router = WeightedRouter([Arm("a", 90), Arm("b", 10)])
        >>> router.choose("N123") is router.choose("N123")
        True

    Raises:
        ValidationError: ``arms`` is empty, or two arms share a name (weights are checked by
            :class:`Arm`).
    """

    def __init__(self, arms: Sequence[Arm], *, salt: str = "") -> None:
        arms = list(arms)
        if not arms:
            raise ValidationError("arms", "expected at least one arm")
        seen: set[str] = set()
        for arm in arms:
            if not isinstance(arm, Arm):
                raise ValidationError("arms", f"expected Arm objects, got {type(arm).__name__}")
            if arm.name in seen:
                raise ValidationError("arms", f"arm name {arm.name!r} appears twice")
            seen.add(arm.name)
        if not isinstance(salt, str):
            raise ValidationError("salt", "expected a string")
        self.arms: tuple[Arm, ...] = tuple(arms)
        self.salt = salt

    def score(self, arm: Arm, key: str) -> float:
        """Return ``-weight / ln(u)`` for ``arm`` and ``key`` (higher wins)."""
        return -arm.weight / math.log(unit_hash(self.salt, arm.name, key))

    def choose(self, key: str) -> Arm:
        """Return the arm ``key`` is routed to."""
        best = self.arms[0]
        best_score = self.score(best, key)
        for arm in self.arms[1:]:
            score = self.score(arm, key)
            if score > best_score:
                best, best_score = arm, score
        return best


@dataclass(frozen=True)
class ShadowPolicy:
    """Mirror a ``share`` (0 to 1) of requests, chosen by a hash of the request id.

    ``name`` is what the mirrored predictions are logged under (arm ``shadow:<name>``).

    Examples:
        >>> ShadowPolicy(1.0).mirrors("r1"), ShadowPolicy(0.0).mirrors("r1")
        (True, False)
    """

    share: float
    name: str = "shadow"

    def __post_init__(self) -> None:
        share = self.share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= share <= 1.0:
            raise ValidationError("shadow.share", f"expected a number from 0 to 1, got {share!r}")
        validate_name("shadow.name", self.name)

    def mirrors(self, request_id: str) -> bool:
        """Return True if the request with this id is mirrored to the shadow."""
        if self.share >= 1.0:
            return True
        return unit_hash("shadow", self.name, request_id) < self.share


@dataclass(frozen=True)
class Interleaving:
    """A merged ranking: ``items`` in order, and the team (``"a"`` or ``"b"``) of each item."""

    items: tuple[str, ...]
    team_of: Mapping[str, str] = field(default_factory=dict)


def team_draft_interleave(
    a: Sequence[str], b: Sequence[str], *, key: str, limit: int | None = None
) -> Interleaving:
    """Merge rankings ``a`` and ``b`` by team draft; the same inputs and key give the same result.

    Each round both teams pick once, in an order decided by a coin flip hashed from ``key`` and
    the round number (the team with fewer picks goes first, so picks stay balanced); a team picks
    its highest-ranked item not yet in the result. Merging stops when either ranking has nothing
    left to contribute, or at ``limit`` items.

    Examples:
        >>> team_draft_interleave(["x", "y"], ["y", "z"], key="q1").items in (
        ...     ("x", "y"), ("y", "x"))
        True

    Raises:
        ValidationError: ``key`` is not a string or ``limit`` is negative.
    """
    if not isinstance(key, str):
        raise ValidationError("key", "expected a string")
    if limit is not None and (isinstance(limit, bool) or limit < 0):
        raise ValidationError("limit", f"expected a count >= 0, got {limit!r}")
    rankings = {TEAM_A: list(a), TEAM_B: list(b)}
    positions = {TEAM_A: 0, TEAM_B: 0}
    picks = {TEAM_A: 0, TEAM_B: 0}
    items: list[str] = []
    team_of: dict[str, str] = {}

    def next_item(team: str) -> str | None:
        ranking = rankings[team]
        while positions[team] < len(ranking) and ranking[positions[team]] in team_of:
            positions[team] += 1
        return ranking[positions[team]] if positions[team] < len(ranking) else None

    while limit is None or len(items) < limit:
        if next_item(TEAM_A) is None or next_item(TEAM_B) is None:
            break
        if picks[TEAM_A] != picks[TEAM_B]:
            team = TEAM_A if picks[TEAM_A] < picks[TEAM_B] else TEAM_B
        else:
            round_no = picks[TEAM_A]
            team = TEAM_A if unit_hash("team-draft", key, str(round_no)) < 0.5 else TEAM_B
        item = next_item(team)
        assert item is not None
        items.append(item)
        team_of[item] = team
        picks[team] += 1
    return Interleaving(tuple(items), team_of)


def credit(interleaving: Interleaving, clicked: Iterable[str]) -> dict[str, int]:
    """Count the distinct clicked items of each team; clicks on items not shown are ignored.

    Examples:
        >>> shown = Interleaving(("x", "y", "z"), {"x": "a", "y": "b", "z": "a"})
        >>> credit(shown, ["x", "z", "x", "w"])
        {'a': 2, 'b': 0}
    """
    counts = {TEAM_A: 0, TEAM_B: 0}
    for item in set(clicked):
        team = interleaving.team_of.get(item)
        if team is not None:
            counts[team] = counts.get(team, 0) + 1
    return counts


@dataclass(frozen=True)
class ArmSpec:
    """One arm of a deployment's routing section: its name, model alias and weight."""

    name: str
    alias: str
    weight: float


@dataclass(frozen=True)
class ShadowSpec:
    """The shadow of a deployment's routing section: model alias, share and logged name."""

    alias: str
    share: float
    name: str


@dataclass(frozen=True)
class RoutingSpec:
    """A deployment's parsed ``routing`` section."""

    unit_key: str
    arms: tuple[ArmSpec, ...]
    shadow: ShadowSpec | None = None
    salt: str = ""

    def router(self) -> WeightedRouter:
        """Return the router over the arms."""
        return WeightedRouter([Arm(a.name, a.weight) for a in self.arms], salt=self.salt)

    def shadow_policy(self) -> ShadowPolicy | None:
        """Return the shadow policy, or None without a shadow."""
        if self.shadow is None:
            return None
        return ShadowPolicy(self.shadow.share, name=self.shadow.name)


def _require(section: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ValidationError(f"{where}.{key}", "is required")
    return section[key]


def parse_routing_spec(routing: object) -> RoutingSpec:
    """Parse and check a ``routing`` section, naming the offending field on error.

    Examples:
        >>> spec = parse_routing_spec({"unit_key": "tailnum", "arms": [
        ...     {"name": "a", "alias": "production", "weight": 90},
        ...     {"name": "b", "alias": "challenger", "weight": 10}],
        ...     "shadow": {"alias": "staging", "share": 0.1}})
        >>> [a.alias for a in spec.arms], spec.shadow.name if spec.shadow else None
        (['production', 'challenger'], 'staging')

    Raises:
        ValidationError: A field is missing, of the wrong type or out of range.
    """
    if not isinstance(routing, Mapping):
        raise ValidationError("routing", "expected an object")
    unknown = sorted(set(routing) - {"unit_key", "arms", "shadow", "salt"})
    if unknown:
        raise ValidationError(f"routing.{unknown[0]}", "is not a routing setting")
    unit_key = _require(routing, "unit_key", "routing")
    if not isinstance(unit_key, str) or not unit_key:
        raise ValidationError("routing.unit_key", "expected a request field name")
    salt = routing.get("salt", "")
    if not isinstance(salt, str):
        raise ValidationError("routing.salt", "expected a string")
    raw_arms = _require(routing, "arms", "routing")
    if not isinstance(raw_arms, list) or not raw_arms:
        raise ValidationError("routing.arms", "expected a non-empty list of arms")
    arms: list[ArmSpec] = []
    for i, raw in enumerate(raw_arms):
        where = f"routing.arms[{i}]"
        if not isinstance(raw, Mapping):
            raise ValidationError(where, "expected an object with name, alias and weight")
        name = validate_name(f"{where}.name", _require(raw, "name", where))
        alias = validate_name(f"{where}.alias", _require(raw, "alias", where))
        weight = _check_weight(f"{where}.weight", raw.get("weight", 1))
        if any(a.name == name for a in arms):
            raise ValidationError(f"{where}.name", f"arm name {name!r} appears twice")
        arms.append(ArmSpec(name, alias, weight))
    shadow: ShadowSpec | None = None
    raw_shadow = routing.get("shadow")
    if raw_shadow is not None:
        if not isinstance(raw_shadow, Mapping):
            raise ValidationError("routing.shadow", "expected an object with alias and share")
        alias = validate_name(
            "routing.shadow.alias", _require(raw_shadow, "alias", "routing.shadow")
        )
        share = _require(raw_shadow, "share", "routing.shadow")
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ValidationError("routing.shadow.share", f"expected 0 to 1, got {share!r}")
        name = validate_name("routing.shadow.name", raw_shadow.get("name", alias))
        policy = ShadowPolicy(share, name=name)
        shadow = ShadowSpec(alias, policy.share, policy.name)
    return RoutingSpec(unit_key, tuple(arms), shadow, salt)
