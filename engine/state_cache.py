"""The state slots of recurrent layers (Mamba-2, Gated DeltaNet), and their prefix cache.

A recurrent layer keeps one fixed-size state per running sequence (engine/layers/recurrent.py)
in a slot: slots 0..live-1 are handed to sequences with their blocks and taken back with them,
slot `live` is the spare one that padding rows of CUDA graphs write.

Such a state sums up every token before it, so the KV blocks of a cached prefix are not enough
to resume a sequence: the recurrent layers need their state at the prefix's end. So, where
prefix caching is on, the states at one block boundary of each prompt (its last full block
before the final token, where the scheduler ends a prefill chunk), and at every block its
decoding completes (a chat's next turn repeats the answer), are copied into snapshot slots
(`live + 1` on), keyed by that block's prefix-cache hash (which chains every token and image
before it), least recently used evicted first. A later prompt whose cached blocks reach such a
boundary starts there, its slot's states restored from the snapshot; the blocks past the deepest
snapshot are recomputed. Copies are planned here, with the schedule, and carried out by every
rank's runner around the step's forward pass: restores before it, saves after it.
"""

from __future__ import annotations

from collections import OrderedDict


class StateCache:
    def __init__(self, live: int, snapshots: int) -> None:
        self.free_slots = list(range(live - 1, -1, -1))  # popped from the end: lowest first
        self.live = live
        self.free_snapshots = list(range(live + snapshots, live, -1))
        self.snapshots: OrderedDict[int, int] = OrderedDict()  # block hash -> snapshot slot, oldest first
        self.pending: set[int] = set()  # hashes whose snapshot this step saves: not readable before it runs
        self.restores: list[tuple[int, int]] = []  # (snapshot slot, live slot), before the forward pass
        self.saves: list[tuple[int, int]] = []  # (live slot, snapshot slot), after it

    @property
    def caches_prefixes(self) -> bool:
        return bool(self.free_snapshots or self.snapshots)

    def take(self) -> int | None:
        return self.free_slots.pop() if self.free_slots else None

    def give_back(self, slot: int) -> None:
        self.free_slots.append(slot)

    def snapshot_of(self, block_hash: int) -> int | None:
        """The readable snapshot slot of the states at the end of the block with this hash, if any."""
        slot = self.snapshots.get(block_hash)
        if slot is None or block_hash in self.pending:
            return None
        self.snapshots.move_to_end(block_hash)
        return slot

    def restore(self, snapshot: int, slot: int) -> None:
        self.restores.append((snapshot, slot))

    def save(self, slot: int, block_hash: int) -> None:
        """Plans a copy of `slot`'s states, as this step leaves them, into a snapshot keyed by block_hash."""
        if block_hash in self.snapshots:
            self.snapshots.move_to_end(block_hash)
            return
        if self.free_snapshots:
            snapshot = self.free_snapshots.pop()
        else:  # the least recently used one (a restore from it this step runs before the save)
            _, snapshot = self.snapshots.popitem(last=False)
        self.snapshots[block_hash] = snapshot
        self.pending.add(block_hash)
        self.saves.append((slot, snapshot))

    def drain(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The step's (restores, saves), handed to the runner; their snapshots become readable."""
        planned = self.restores, self.saves
        self.restores, self.saves = [], []
        self.pending.clear()
        return planned

    def reset(self) -> None:
        """Forgets every snapshot (the prefix cache is being reset)."""
        self.free_snapshots.extend(self.snapshots.values())
        self.snapshots.clear()
