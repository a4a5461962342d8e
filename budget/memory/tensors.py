"""The model's tensors as placement sees them: grouped by layer, override and kind.

``--fit`` and the what-if search plan one model hundreds of times with a handful of
override lists; matching every tensor name against every pattern each time took seconds
on a 70B. The groups of one (model, overrides) pair are computed once and cached, so a
plan walks about one group per layer and override target (``benchmarks/bench_plan.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from kvwall.monitors.gguf import ModelInfo

LLM_FFN_EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
"""common/common.h: the expert tensors ``--cpu-moe`` / ``--n-cpu-moe`` keep on the CPU."""

INPUT = -1
"""The slot of the input layer's tensors (``token_embd``...): always on the host."""

_INPUT_TENSORS = ("token_embd.", "token_types.", "position_embd.", "tok_norm.", "token_embd_norm.")
_BLK = re.compile(r"^blk\.(\d+)\.")
_LAYER_PATTERN = re.compile(r"^\^?blk\\\.(\d+)\\\.")  # a pattern that names one layer
_CACHE_SIZE = 512

Override = tuple[str, str]
"""``(regex, buffer type)``: llama.cpp's tensor buffer-type override, first match wins."""


@dataclass(frozen=True)
class Group:
    """Tensors of one slot that go to the same place.

    Attributes:
        slot: the layer index; :data:`INPUT` for the input layer; ``n_layer_all`` for the
            output layer (and every tensor outside the layers).
        target: the buffer type an override sends them to; None: the slot's device.
        experts: MoE expert tensors (``ffn_*_exps``).
        n_bytes: their data.
        largest: the largest matrix among them (what a GPU copies to run it).
        spans: ``(shard, first offset, end)`` of their data in each file.
    """

    slot: int
    target: str | None
    experts: bool
    n_bytes: int
    largest: int
    spans: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class TensorGroups:
    """The groups of one model under one override list.

    Attributes:
        groups: every group.
        has_output: the model has its own ``output.weight`` (else llama.cpp duplicates
            ``token_embd`` onto the output layer's device).
        embd_bytes: ``token_embd``'s data.
    """

    groups: tuple[Group, ...]
    has_output: bool
    embd_bytes: int


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


class _Index:
    """Per model: each tensor's slot, and the tensors of each layer (for fast matching)."""

    def __init__(self, model: ModelInfo, load_mtp: bool) -> None:
        self.model = model
        n_all = model.n_layer_all
        self.slots: list[int | None] = []
        self.by_layer: dict[int, list[int]] = {}
        for i, t in enumerate(model.tensors):
            m = _BLK.match(t.name)
            slot: int | None
            if m:
                il = int(m.group(1))
                skipped = model.n_layer_nextn > 0 and il >= model.n_layer and not load_mtp
                slot = None if skipped else min(il, n_all)  # NextN/MTP layers load only for MTP
                self.by_layer.setdefault(il, []).append(i)
            elif t.name.startswith(_INPUT_TENSORS):
                slot = INPUT
            else:
                slot = n_all
            self.slots.append(slot)
        self.matches: dict[str, tuple[int, ...]] = {}
        self.in_slot: dict[int, list[int]] = {}
        for i, slot in enumerate(self.slots):
            if slot is not None:
                self.in_slot.setdefault(slot, []).append(i)
        self.plain: dict[int, tuple[Group, ...]] = {}  # each slot's groups without overrides
        self.has_output = any(t.name.startswith("output.weight") for t in model.tensors)
        self.embd_bytes = sum(t.n_bytes for t in model.tensors if t.name.startswith("token_embd."))

    def matching(self, pattern: str) -> tuple[int, ...]:
        """The tensors ``pattern`` matches (``std::regex_search``), cached."""
        hit = self.matches.get(pattern)
        if hit is not None:
            return hit
        names = self.model.tensors
        layer = _LAYER_PATTERN.match(pattern)
        if layer:
            # "blk\.N\.rest": only layer N's names can match, and "rest" must match right
            # after their "blk.N." (one compiled "rest" serves every layer)
            rest = _compiled(pattern[layer.end():])
            skip = len(f"blk.{layer.group(1)}.")
            candidates = self.by_layer.get(int(layer.group(1)), [])
            found = () if rest is None else tuple(i for i in candidates if rest.match(names[i].name, skip))
        else:
            compiled = _compiled(pattern)
            found = () if compiled is None else tuple(
                i for i in range(len(names)) if compiled.search(names[i].name))
        self.matches[pattern] = found
        return found


_indexes: dict[tuple[int, bool], _Index] = {}
_groups: dict[tuple[int, tuple[Override, ...], bool], tuple[ModelInfo, TensorGroups]] = {}


def _index(model: ModelInfo, load_mtp: bool) -> _Index:
    key = (id(model), load_mtp)
    index = _indexes.get(key)
    if index is None or index.model is not model:
        if len(_indexes) >= _CACHE_SIZE:
            _indexes.clear()
        index = _indexes[key] = _Index(model, load_mtp)
    return index


def tensor_groups(model: ModelInfo, overrides: Sequence[Override], load_mtp: bool = False) -> TensorGroups:
    """The model's tensors grouped by slot, override target and kind (cached)."""
    key = (id(model), tuple(overrides), load_mtp)
    hit = _groups.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    index = _index(model, load_mtp)
    targets: dict[int, str] = {}
    for pattern, buft in reversed(tuple(overrides)):  # the first match wins
        for i in index.matching(pattern):
            targets[i] = buft
    touched = {index.slots[i] for i in targets}
    groups: list[Group] = []
    for slot, members in index.in_slot.items():
        if slot in touched:
            groups.extend(_group(model, slot, members, targets))
        else:
            if slot not in index.plain:
                index.plain[slot] = _group(model, slot, members, {})
            groups.extend(index.plain[slot])
    result = TensorGroups(tuple(groups), index.has_output, index.embd_bytes)
    if len(_groups) >= _CACHE_SIZE:
        _groups.clear()
    _groups[key] = (model, result)
    return result


def _group(model: ModelInfo, slot: int, members: Sequence[int], targets: dict[int, str]) -> tuple[Group, ...]:
    """One slot's tensors grouped by override target and kind."""
    acc: dict[tuple[str | None, bool], list[int]] = {}
    spans: dict[tuple[str | None, bool], dict[int, tuple[int, int]]] = {}
    for i in members:
        t = model.tensors[i]
        key = (targets.get(i), "_exps" in t.name)
        entry = acc.setdefault(key, [0, 0])
        entry[0] += t.n_bytes
        if len(t.shape) > 1:
            entry[1] = max(entry[1], t.n_bytes)
        by_shard = spans.setdefault(key, {})
        first, end = by_shard.get(t.shard, (t.offset, t.offset + t.n_bytes))
        by_shard[t.shard] = (min(first, t.offset), max(end, t.offset + t.n_bytes))
    return tuple(
        Group(slot, target, experts, n, largest, tuple((sh, a, b) for sh, (a, b) in sorted(spans[k].items())))
        for k, (n, largest) in acc.items()
        for target, experts in (k,)
    )
