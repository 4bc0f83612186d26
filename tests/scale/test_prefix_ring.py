"""Consistent hashing with bounded loads among an engine's workers (backends/prefix_ring.py)."""

from __future__ import annotations

from dataclasses import dataclass

from backends.prefix_ring import PREFIX_CHARS, PrefixRing, prompt_prefix


@dataclass(eq=False)
class W:
    name: str
    inflight: int = 0


def ring_of(members: list[W]) -> PrefixRing:
    ring = PrefixRing()
    for m in members:
        ring.add(m)
    return ring


def test_a_key_goes_to_the_same_worker_and_keys_spread_over_all():
    members = [W(f"w{i}") for i in range(4)]
    ring = ring_of(members)
    owners = {f"prompt {k}": ring.pick(f"prompt {k}", members).name for k in range(400)}
    assert all(ring.pick(key, members).name == name for key, name in owners.items())
    counts = [list(owners.values()).count(m.name) for m in members]
    assert min(counts) >= 40, counts  # no worker starved (400 keys, 4 workers, 64 virtual nodes each)


def test_an_overloaded_worker_is_passed_over_until_its_load_drops():
    members = [W(f"w{i}") for i in range(3)]
    ring = ring_of(members)
    owner = ring.pick("shared prefix", members)
    owner.inflight = 5  # bound: ceil(1.25 * (5 + 1) / 3) = 3
    other = ring.pick("shared prefix", members)
    assert other is not owner
    owner.inflight = 1
    assert ring.pick("shared prefix", members) is not owner  # ceil(1.25 * 2 / 3) = 1: full
    assert ring.pick("shared prefix", members, floor=2) is owner  # a light load keeps the affinity
    owner.inflight = 0
    assert ring.pick("shared prefix", members) is owner


def test_removing_a_worker_moves_only_its_own_keys():
    members = [W(f"w{i}") for i in range(4)]
    ring = ring_of(members)
    before = {k: ring.pick(f"p{k}", members).name for k in range(300)}
    ring.remove(members[1])
    left = [m for m in members if m.name != "w1"]
    after = {k: ring.pick(f"p{k}", left).name for k in range(300)}
    assert all(after[k] == before[k] for k in before if before[k] != "w1")
    assert "w1" not in after.values()


def test_the_key_is_the_start_of_the_prompt():
    system = "You are a careful assistant. " * 20
    first = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "one"}]}
    second = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": "two"},
        ]
    }
    assert prompt_prefix(first) == prompt_prefix(second) and len(prompt_prefix(first)) == PREFIX_CHARS
    assert prompt_prefix({"prompt": "abc"}) == "abc"
    assert prompt_prefix({"messages": [{"role": "user", "content": "x"}]}) != prompt_prefix(
        {"messages": [{"role": "user", "content": "y"}]}
    )
