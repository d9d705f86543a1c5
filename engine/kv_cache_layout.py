"""Which attention layers share a block table: the KV cache's groups.

A full-attention layer reads every earlier token's K/V; a sliding-window layer
only the last `window` tokens'. Under one block table a sliding layer would keep
every block for as long as its sequence lives: with Gemma 3 (five local layers
in six) at long contexts, most of the cache would hold what no query reads. So
layers are grouped by their window, each group gets its own block table per
sequence, and a sliding group gives back the blocks that fall out of its window
(vLLM's hybrid KV-cache manager does the same).

Groups hold equally many layers, the last group of a kind padded, so one block of
the shared pool is the K/V of `block_size` tokens for `group_size` layers
whichever group takes it: the cache is one tensor [2, group_size, num_blocks, ...]
whose slot j holds layer j of every group. A model whose layers all attend alike
is one group of all its layers: the layout there is the plain one.
"""

from __future__ import annotations

from dataclasses import dataclass


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class KVCacheGroup:
    """Attention layers (indices in model order) that share a block table; window None: full attention."""

    layers: tuple[int, ...]
    window: int | None


@dataclass(frozen=True)
class KVCacheLayout:
    groups: tuple[KVCacheGroup, ...]
    group_size: int  # layers one block holds: the largest group

    @property
    def windows(self) -> list[int | None]:
        return [group.window for group in self.groups]

    @property
    def num_layers(self) -> int:
        return sum(len(group.layers) for group in self.groups)

    def place(self, layer: int) -> tuple[int, int]:
        """(group, slot within a block) of an attention layer."""
        for g, group in enumerate(self.groups):
            if layer in group.layers:
                return g, group.layers.index(layer)
        raise ValueError(f"layer {layer} is in no KV-cache group")

    def blocks_for(self, num_tokens: int, step_tokens: int, block_size: int) -> int:
        """Blocks one sequence of `num_tokens` holds at most, over every group, computing up to
        `step_tokens` tokens a step: all its blocks in a full group; in a sliding group the blocks
        its next queries read back (window - 1 earlier tokens) and those the step writes."""
        whole = _cdiv(num_tokens, block_size)
        return sum(whole if window is None else min(whole, _cdiv(window - 1, block_size) + 1
                                                     + _cdiv(step_tokens, block_size))
                   for window in self.windows)


def plan_kv_cache(windows: list[int | None], hybrid: bool = True) -> KVCacheLayout:
    """The groups of layers whose sliding windows (None: full attention) are `windows`: one group of
    every layer when they all attend alike or not `hybrid` (then as full attention, keeping every
    block); else a group per kind of layer, split into groups as large as the smallest kind."""
    if not windows:  # no attention layer (Mamba-2): one group of no layers, whose blocks hold nothing
        return KVCacheLayout((KVCacheGroup((), None),), 0)
    layers = tuple(range(len(windows)))
    kinds = sorted(set(windows), key=lambda w: -1 if w is None else w)
    if not hybrid:  # every layer keeps every block: the plain layout, for all kinds of layers
        return KVCacheLayout((KVCacheGroup(layers, None),), len(layers))
    if len(kinds) == 1:
        return KVCacheLayout((KVCacheGroup(layers, kinds[0]),), len(layers))
    by_kind = {w: [i for i, x in enumerate(windows) if x == w] for w in kinds}
    size = min(len(members) for members in by_kind.values())
    groups = tuple(KVCacheGroup(tuple(members[i : i + size]), w)
                   for w, members in by_kind.items() for i in range(0, len(members), size))
    return KVCacheLayout(groups, size)
